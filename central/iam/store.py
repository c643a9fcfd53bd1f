"""IAM tables and every query iam makes (SQLAlchemy Core; SQLite and PostgreSQL). Times are UNIX seconds
(REAL / double precision) so the service clock is injectable and comparisons are cheap.

The statements of the request path (session and API-key lookups, active bindings) and of audit appends
go through the driver: see "the raw-driver fast path" below.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.store import dialect, metadata
from central.store.dialect import BigId

if TYPE_CHECKING:
    from central.store import Db

# Index names are the legacy ones (the pre-Core migrations made them), so a database the old code built
# already has every index and adopt_legacy has nothing to reshape.
meta = sa.Table(
    "iam_meta", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
orgs = sa.Table(
    "iam_orgs", metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("parent", sa.Text),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("iam_orgs_parent", "parent"),
)
users = sa.Table(
    "iam_users", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("username", sa.Text, nullable=False, unique=True),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("pw_hash", sa.Text, nullable=False),
    sa.Column("must_change", sa.Integer, nullable=False, server_default="1"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_failed_at", sa.Float),
    sa.Column("locked_until", sa.Float),
    sa.Column("disabled", sa.Integer, nullable=False, server_default="0"),
    sa.Column("phone_enc", sa.Text),
    sa.Column("phone_bi", sa.Text),
    sa.Column("id_card_enc", sa.Text),
    sa.Column("id_card_bi", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("iam_users_phone_bi", "phone_bi"),
    sa.Index("iam_users_id_card_bi", "id_card_bi"),
)
roles = sa.Table(
    "iam_roles", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("patterns", sa.Text, nullable=False),  # JSON list of permission patterns
    sa.Column("builtin", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_by", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    # A custom role applies only inside the org subtree it was created in (NULL: built-in, anywhere).
    sa.Column("scope", sa.Text),
)
# A binding (user or API key, role, org). parent_id = the granter's binding it was delegated from:
# revoking a binding revokes its whole delegation subtree.
bindings = sa.Table(
    "iam_bindings", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", BigId),
    sa.Column("apikey_id", BigId),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("parent_id", BigId),
    sa.Column("granted_by", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("iam_bindings_user", "user_id"),
    sa.Index("iam_bindings_key", "apikey_id"),
    sa.Index("iam_bindings_parent", "parent_id"),
)
sessions = sa.Table(
    "iam_sessions", metadata,
    sa.Column("token_hash", sa.Text, primary_key=True),
    sa.Column("user_id", BigId, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("must_change", sa.Integer, nullable=False, server_default="0"),
    sa.Column("client", sa.Text),
    sa.Index("iam_sessions_user", "user_id"),
)
apikeys = sa.Table(
    "iam_apikeys", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
)
# Append-only (triggers, see create_extras); seq is assigned by the appender under dialect.serialize.
audit = sa.Table(
    "iam_audit", metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text),
    sa.Column("org", sa.Text),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("alg", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
    sa.Index("iam_audit_org", "org"),
)
# Separation of duties: everyone who filed or edited an object (an application, a URL filing): none of
# them may decide it.
makers = sa.Table(
    "iam_makers", metadata,
    sa.Column("object", sa.Text, primary_key=True),
    sa.Column("actor", sa.Text, primary_key=True),
    sa.Column("act", sa.Text, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
)
# Failed logins of names that are no account: counted and locked like real ones, so the answers (401,
# then 423 after the fifth failure) never tell which names exist.
login_failures = sa.Table(
    "iam_login_failures", metadata,
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("first_failed_at", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float),
)

# The login rate limit's moving window, shared by every hub process: one row per counted attempt per key
# (`ip:<address>`, `user:<name>`), forgotten once older than the window.
login_attempts = sa.Table(
    "iam_login_attempts", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("iam_login_attempts_key", "key", "at"),
    sa.Index("iam_login_attempts_at", "at"),
)

TABLES = [meta, orgs, users, roles, bindings, sessions, apikeys, audit, makers, login_failures, login_attempts]

_APPEND_ONLY = "iam_audit is append-only"


def adopt_legacy(db: Db) -> None:
    """A database of the pre-Core migrations (v2) already has these tables, columns, indexes and the
    append-only triggers in exactly this shape: nothing to reshape."""


def create_extras(db: Db, created: set[str]) -> None:
    """Append-only audit inside the product: SQL cannot change or delete audit rows without dropping
    these triggers first (and whoever does cannot forge keyed hashes: see central.iam.audit)."""
    if "iam_audit" not in created:
        return
    if db.dialect == "postgresql":
        db.run(sa.text(
            "CREATE OR REPLACE FUNCTION iam_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN RAISE EXCEPTION '{_APPEND_ONLY}' USING ERRCODE = 'integrity_constraint_violation'; END $$"))
        for op in ("UPDATE", "DELETE"):
            db.run(sa.text(f"CREATE TRIGGER iam_audit_no_{op.lower()} BEFORE {op} ON iam_audit"
                           " FOR EACH ROW EXECUTE FUNCTION iam_audit_append_only()"))
        # TRUNCATE skips row triggers: refuse it too.
        db.run(sa.text("CREATE TRIGGER iam_audit_no_truncate BEFORE TRUNCATE ON iam_audit"
                       " FOR EACH STATEMENT EXECUTE FUNCTION iam_audit_append_only()"))
    else:
        for op in ("UPDATE", "DELETE"):
            db.run(sa.text(_sqlite_trigger(op)))


def _sqlite_trigger(op: str) -> str:
    return (f"CREATE TRIGGER iam_audit_no_{op.lower()} BEFORE {op} ON iam_audit"
            f" BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END")


# --- iam_meta -----------------------------------------------------------------------------------------
def set_meta(db: Db, key: str, value: str) -> None:
    db.run(dialect.upsert(db, meta, ["key"], ["value"]).values(key=key, value=value))


def get_meta(db: Db, *keys: str) -> dict[str, str]:
    return {r[0]: r[1] for r in db.run(sa.select(meta.c.key, meta.c.value).where(meta.c.key.in_(keys)))}


# --- the raw-driver fast path -------------------------------------------------------------------------
# Every authenticated request resolves a session or API key, and every write appends an audit row. On
# SQLite a Core statement costs ~50 us here against ~8 us through the driver (an API-key lookup ran at
# 5.2k/s on Core against 30k/s before the layer; an audit append is four statements), so these few
# statements go to the driver connection of the same transaction (`Db.raw`). Their SQL is the same on both backends but
# for the parameter marks; the Core tables above stay the schema.
_FAST_SQL = {
    "apikey": "SELECT id, name, expires_at, revoked_at, last_used_at FROM iam_apikeys WHERE key_hash = {p}",
    "session": "SELECT s.user_id, s.last_seen, s.ended_at, s.must_change, u.disabled, u.username"
               " FROM iam_sessions s JOIN iam_users u ON u.id = s.user_id WHERE s.token_hash = {p}",
    # each binding row carries the roles' generation: a stale role cache is noticed at no extra round trip
    "user_id": "SELECT id, role, org, (SELECT value FROM iam_meta WHERE key = 'roles_generation')"
               " FROM iam_bindings WHERE user_id = {p} AND revoked_at IS NULL"
               " AND (expires_at IS NULL OR expires_at > {p})",
    "apikey_id": "SELECT id, role, org, (SELECT value FROM iam_meta WHERE key = 'roles_generation')"
                 " FROM iam_bindings WHERE apikey_id = {p} AND revoked_at IS NULL"
                 " AND (expires_at IS NULL OR expires_at > {p})",
    "writer_meta": "SELECT key, value FROM iam_meta WHERE key IN ('crypto_profile', 'audit_key')",
    "head": "SELECT seq, hash, alg FROM iam_audit ORDER BY seq DESC LIMIT 1",
    "append": "INSERT INTO iam_audit (seq, ts, actor, action, target, org, detail, alg, prev_hash, hash)"
              " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
    "set_meta": "INSERT INTO iam_meta (key, value) VALUES ({p}, {p})"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
}
_MARK = {"sqlite": "?", "postgresql": "%s"}  # sqlite3 qmark, psycopg format
_FAST = {d: {k: v.format(p=m) for k, v in _FAST_SQL.items()} for d, m in _MARK.items()}


def _fast(db: Db, name: str, params: tuple[Any, ...] = ()) -> Any:
    return db.raw.execute(_FAST[db.dialect][name], params)


def session_row(db: Db, token_hash: str) -> tuple[Any, ...] | None:
    """(user_id, last_seen, ended_at, must_change, disabled, username) of a session."""
    row = _fast(db, "session", (token_hash,)).fetchone()
    return None if row is None else tuple(row)


def apikey_row(db: Db, key_hash: str) -> tuple[Any, ...] | None:
    """(id, name, expires_at, revoked_at, last_used_at) of an API key."""
    row = _fast(db, "apikey", (key_hash,)).fetchone()
    return None if row is None else tuple(row)


def active_bindings(db: Db, column: str, value: int, now: float) -> tuple[list[tuple[int, str, str]], str | None]:
    """(id, role, org) of the unrevoked, unexpired bindings of a user (`user_id`) or key (`apikey_id`),
    and the roles' generation when there is any binding (None: none, or roles never changed)."""
    if column not in ("user_id", "apikey_id"):
        raise ValueError(f"bindings of {column!r}?")
    rows = _fast(db, column, (value, now)).fetchall()
    return [(r[0], r[1], r[2]) for r in rows], (rows[0][3] if rows else None)


# --- audit --------------------------------------------------------------------------------------------
_AUDIT_COLS = [audit.c.seq, audit.c.ts, audit.c.actor, audit.c.action, audit.c.target, audit.c.org,
               audit.c.detail, audit.c.alg, audit.c.prev_hash, audit.c.hash]
AUDIT_KEYS = [c.name for c in _AUDIT_COLS]


def audit_head(db: Db) -> tuple[int, str, str] | None:
    """(seq, hash, alg) of the newest audit row."""
    row = _fast(db, "head").fetchone()
    return None if row is None else (int(row[0]), row[1], row[2])


def audit_max_seq(db: Db) -> int:
    return int(db.scalar(sa.select(sa.func.max(audit.c.seq))) or 0)


def writer_meta(db: Db) -> dict[str, str]:
    """crypto_profile and audit_key: what a writer needs to hash its rows."""
    return {r[0]: r[1] for r in _fast(db, "writer_meta").fetchall()}


def append_chained(db: Db, make_row: Callable[[dict[str, str], tuple[int, str, str] | None], tuple[Any, ...]]
                   ) -> tuple[Any, ...]:
    """One audit append on one driver handle (the hot path of every write): reads the writer's meta and
    the head, has `make_row(meta, head)` build the row (in AUDIT_KEYS order), inserts it and moves the
    head marker. The caller holds dialect.serialize."""
    raw, sql = db.raw, _FAST[db.dialect]
    meta_ = dict(raw.execute(sql["writer_meta"]).fetchall())
    head = raw.execute(sql["head"]).fetchone()
    row = make_row(meta_, None if head is None else (int(head[0]), head[1], head[2]))
    raw.execute(sql["append"], row)
    raw.execute(sql["set_meta"], ("audit_head", f"{row[0]}:{row[9]}"))
    return row


def audit_rows(db: Db, after: int = 0, upto: int | None = None) -> list[tuple[Any, ...]]:
    """Rows (seq, ts, actor, action, target, org, detail, alg, prev_hash, hash) in seq order."""
    q = sa.select(*_AUDIT_COLS).where(audit.c.seq > after)
    if upto is not None:
        q = q.where(audit.c.seq <= upto)
    return [tuple(r) for r in db.run(q.order_by(audit.c.seq))]


def audit_row(db: Db, seq: int) -> tuple[Any, ...] | None:
    row = db.run(sa.select(*_AUDIT_COLS).where(audit.c.seq == seq)).first()
    return None if row is None else tuple(row)


def audit_first(db: Db) -> tuple[int, str] | None:
    """(seq, prev_hash) of the oldest audit row still stored (after a purge: where the chain starts now)."""
    row = db.run(sa.select(audit.c.seq, audit.c.prev_hash).order_by(audit.c.seq).limit(1)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def audit_older_prefix_end(db: Db, first: int, before_ts: str) -> int:
    """The last seq of the run of rows from `first` on whose ts are all before `before_ts` (a purge cuts
    a prefix of the chain, never a row from its middle); first - 1 when row `first` is not that old."""
    c = audit.c
    young = db.scalar(sa.select(sa.func.min(c.seq)).where(c.seq >= first, c.ts >= before_ts))
    if young is not None:
        return int(young) - 1
    return audit_max_seq(db)


def delete_audit_prefix(db: Db, upto: int) -> int:
    """Delete the audit rows up to `upto` (the retention purge, central.iam.audit.purge). The append-only
    trigger is lifted for this one statement and put back in the same transaction, so no other connection
    ever sees the table without it (both backends' DDL is transactional)."""
    stmt = sa.delete(audit).where(audit.c.seq <= upto)
    if db.dialect == "postgresql":
        has = db.scalar(sa.text("SELECT 1 FROM pg_trigger WHERE tgname = 'iam_audit_no_delete'"
                                " AND tgrelid = 'iam_audit'::regclass"))
        if has:
            db.run(sa.text("ALTER TABLE iam_audit DISABLE TRIGGER iam_audit_no_delete"))
        n = db.run(stmt).rowcount
        if has:
            db.run(sa.text("ALTER TABLE iam_audit ENABLE TRIGGER iam_audit_no_delete"))
        return int(n)
    db.run(sa.text("DROP TRIGGER IF EXISTS iam_audit_no_delete"))
    n = db.run(stmt).rowcount
    db.run(sa.text(_sqlite_trigger("DELETE")))
    return int(n)


def _purge_audit(db: Db, cutoff: Any, limit: int) -> int:
    from central.iam import audit as audit_chain  # the rules (keys, checkpoints) live there; it imports us

    return audit_chain.purge(db, cutoff, limit)


RETENTION = {"audit": _purge_audit}


def audit_page(db: Db, after: int, batch: int = 1000) -> list[dict[str, Any]]:
    """Up to `batch` rows after `after` as dicts (the API filters them per caller)."""
    return db.all(sa.select(*_AUDIT_COLS).where(audit.c.seq > after).order_by(audit.c.seq).limit(batch))


# --- makers (separation of duties) --------------------------------------------------------------------
def note_maker(db: Db, obj: str, actor: str, act: str, at: float) -> None:
    db.run(dialect.insert_ignore(db, makers, "object", "actor", "act").values(object=obj, actor=actor, act=act,
                                                                                at=at))


def maker_acts(db: Db, obj: str, actor: str) -> list[str]:
    return list(db.run(sa.select(makers.c.act).where(makers.c.object == obj, makers.c.actor == actor)).scalars())


# --- roles --------------------------------------------------------------------------------------------
ROLES_GENERATION = "roles_generation"  # the fast path's bindings query names this key too


def roles_generation(db: Db) -> str | None:
    """The token every role change replaces (see `bump_roles_generation`); None before the first."""
    return get_meta(db, ROLES_GENERATION).get(ROLES_GENERATION)


def bump_roles_generation(db: Db) -> None:
    """Mark the role definitions changed, in the change's transaction: every hub process holding the
    roles in memory sees another token at its next principal lookup and reloads them. A random token,
    not a counter: no read-modify-write to race."""
    set_meta(db, ROLES_GENERATION, secrets.token_hex(8))


def role_rows(db: Db) -> list[dict[str, Any]]:
    return db.all(sa.select(roles.c.name, roles.c.description, roles.c.patterns, roles.c.builtin, roles.c.scope)
                  .order_by(roles.c.name))


def upsert_builtin_role(db: Db, name: str, description: str, patterns: str, at: float) -> None:
    stmt = dialect.insert(db, roles).values(name=name, description=description, patterns=patterns, builtin=1,
                                            created_by="system", created_at=at)
    db.run(stmt.on_conflict_do_update(index_elements=["name"], set_={
        "description": stmt.excluded.description, "patterns": stmt.excluded.patterns, "builtin": 1}))


def role_exists(db: Db, name: str) -> bool:
    return db.scalar(sa.select(sa.literal(1)).where(roles.c.name == name)) is not None


def insert_role(db: Db, **row: Any) -> None:
    db.run(sa.insert(roles).values(**row))


# --- principals (the request path: see the fast path above) -------------------------------------------
def username_of(db: Db, user_id: int) -> str | None:
    return db.scalar(sa.select(users.c.username).where(users.c.id == user_id))


def touch_session(db: Db, token_hash: str, now: float) -> None:
    db.run(sa.update(sessions).where(sessions.c.token_hash == token_hash).values(last_seen=now))


def end_session(db: Db, token_hash: str, now: float) -> None:
    db.run(sa.update(sessions).where(sessions.c.token_hash == token_hash).values(ended_at=now))


def touch_apikey(db: Db, kid: int, now: float) -> None:
    db.run(sa.update(apikeys).where(apikeys.c.id == kid).values(last_used_at=now))


# --- orgs ---------------------------------------------------------------------------------------------
_ORG_COLS = [orgs.c.path, orgs.c.parent, orgs.c.name, orgs.c.created_at]


def org(db: Db, path: str) -> dict[str, Any] | None:
    return db.first(sa.select(*_ORG_COLS).where(orgs.c.path == path))


def list_orgs(db: Db) -> list[dict[str, Any]]:
    return db.all(sa.select(*_ORG_COLS).order_by(orgs.c.path))


def insert_org_if_missing(db: Db, path: str, parent: str | None, name: str, at: float) -> bool:
    """Whether the org was created (False: it existed)."""
    # RETURNING yields a row only for an insert that happened (no reliance on the driver's rowcount).
    stmt = dialect.insert_ignore(db, orgs, "path").values(path=path, parent=parent, name=name, created_at=at)
    return db.run(stmt.returning(orgs.c.path)).first() is not None


def insert_org(db: Db, path: str, parent: str | None, name: str, at: float) -> None:
    db.run(sa.insert(orgs).values(path=path, parent=parent, name=name, created_at=at))


def rename_org(db: Db, path: str, name: str) -> None:
    db.run(sa.update(orgs).where(orgs.c.path == path).values(name=name))


def delete_org(db: Db, path: str) -> None:
    db.run(sa.delete(orgs).where(orgs.c.path == path))


def _exists(db: Db, q: sa.Select[Any]) -> bool:
    return db.scalar(sa.select(sa.literal(1)).where(q.exists())) is not None


def org_has_children(db: Db, path: str) -> bool:
    return _exists(db, sa.select(orgs.c.path).where(orgs.c.parent == path))


def org_in_use(db: Db, path: str) -> bool:
    """Users homed there or active bindings over it."""
    return (_exists(db, sa.select(users.c.id).where(users.c.org == path))
            or _exists(db, sa.select(bindings.c.id).where(bindings.c.org == path, bindings.c.revoked_at.is_(None))))


# --- users --------------------------------------------------------------------------------------------
_USER_COLS = [users.c.id, users.c.username, users.c.org, users.c.must_change, users.c.disabled,
              users.c.locked_until, users.c.phone_enc, users.c.id_card_enc, users.c.created_at]
_LOGIN_COLS = [users.c.id, users.c.org, users.c.pw_hash, users.c.must_change, users.c.failed,
               users.c.first_failed_at, users.c.locked_until, users.c.disabled]


def user(db: Db, username: str) -> dict[str, Any] | None:
    return db.first(sa.select(*_USER_COLS).where(users.c.username == username))


def any_user(db: Db) -> bool:
    return _exists(db, sa.select(users.c.id))


def insert_user(db: Db, **row: Any) -> int:
    return int(db.run(sa.insert(users).values(**row)).inserted_primary_key[0])


def update_user(db: Db, user_id: int, **values: Any) -> None:
    db.run(sa.update(users).where(users.c.id == user_id).values(**values))


def usernames(db: Db, phone_bi: str | None = None) -> list[str]:
    q = sa.select(users.c.username).order_by(users.c.username)
    if phone_bi is not None:  # exact lookup through the keyed blind index: the column stays ciphertext
        q = q.where(users.c.phone_bi == phone_bi)
    return list(db.run(q).scalars())


def login_row(db: Db, username: str) -> tuple[Any, ...] | None:
    """(id, org, pw_hash, must_change, failed, first_failed_at, locked_until, disabled)."""
    row = db.run(sa.select(*_LOGIN_COLS).where(users.c.username == username)).first()
    return None if row is None else tuple(row)


def failure_state(db: Db, user_id: int) -> tuple[int, float | None, float | None]:
    """(failed, first_failed_at, locked_until) of an account."""
    row = db.run(sa.select(users.c.failed, users.c.first_failed_at, users.c.locked_until)
                 .where(users.c.id == user_id)).first()
    return (0, None, None) if row is None else (int(row[0]), row[1], row[2])


def password_row(db: Db, user_id: int) -> tuple[str, str] | None:
    row = db.run(sa.select(users.c.pw_hash, users.c.org).where(users.c.id == user_id)).first()
    return None if row is None else (row[0], row[1])


def ghost_failures(db: Db, username: str) -> tuple[int, float, float | None] | None:
    """(failed, first_failed_at, locked_until) of a name that is no account."""
    row = db.run(sa.select(login_failures.c.failed, login_failures.c.first_failed_at, login_failures.c.locked_until)
                 .where(login_failures.c.username == username)).first()
    return None if row is None else (row[0], row[1], row[2])


def note_ghost_failure(db: Db, username: str, failed: int, first_failed_at: float, locked_until: float | None,
                       window: float, now: float) -> None:
    """Record a failed login of an unknown name, first forgetting names whose window has passed (spraying
    random names cannot grow the table)."""
    f = login_failures.c
    db.run(sa.delete(login_failures).where(f.first_failed_at + window < now,
                                           sa.func.coalesce(f.locked_until, 0) < now))
    db.run(dialect.upsert(db, login_failures, ["username"], ["failed", "first_failed_at", "locked_until"])
           .values(username=username, failed=failed, first_failed_at=first_failed_at, locked_until=locked_until))


def lock_login(db: Db, username: str) -> None:
    """Serialize this transaction with every other one counting a failure of `username` (on any hub
    process), so a read-then-write of the failure count never loses a failure."""
    dialect.serialize(db, f"iam.login:{username}")


# --- login rate limit (moving window) -----------------------------------------------------------------
def rate_hit(db: Db, keys: list[str], now: float, window: float, limit: int) -> bool:
    """Count one attempt against every key unless one of them already has `limit` attempts within the
    last `window` seconds (then count nothing and answer False). The keys' locks are taken in sorted
    order (two logins sharing a key never deadlock). Rows older than the window are dropped by one
    transaction at a time (the leader of `iam.rate.gc`): the only deletes, so no two deleters can wait on
    each other's row locks."""
    a = login_attempts.c
    for k in sorted(set(keys)):
        dialect.serialize(db, f"iam.rate:{k}")
    if dialect.try_lead(db, "iam.rate.gc"):
        db.run(sa.delete(login_attempts).where(a.at <= now - window))
    for k in keys:
        n = db.scalar(sa.select(sa.func.count()).select_from(login_attempts).where(a.key == k, a.at > now - window))
        if int(n or 0) >= limit:
            return False
    db.run(sa.insert(login_attempts), [{"key": k, "at": now} for k in keys])
    return True


# --- sessions -----------------------------------------------------------------------------------------
def insert_session(db: Db, **row: Any) -> None:
    db.run(sa.insert(sessions).values(**row))


def end_user_sessions(db: Db, user_id: int, now: float, keep: str | None = None) -> None:
    """End every open session of a user (but `keep`, the one changing the password)."""
    q = sa.update(sessions).where(sessions.c.user_id == user_id, sessions.c.ended_at.is_(None))
    if keep is not None:
        q = q.where(sessions.c.token_hash != keep)
    db.run(q.values(ended_at=now))


def clear_session_must_change(db: Db, token_hash: str) -> None:
    db.run(sa.update(sessions).where(sessions.c.token_hash == token_hash).values(must_change=0))


# --- bindings -----------------------------------------------------------------------------------------
def insert_binding(db: Db, **row: Any) -> int:
    return int(db.run(sa.insert(bindings).values(**row)).inserted_primary_key[0])


def binding(db: Db, bid: int) -> dict[str, Any] | None:
    b = bindings.c
    return db.first(sa.select(b.id, users.c.username, b.apikey_id, b.role, b.org, b.parent_id, b.granted_by,
                              b.expires_at, b.revoked_at, b.created_at)
                    .select_from(bindings.outerjoin(users, users.c.id == b.user_id)).where(b.id == bid))


def binding_holder(db: Db, bid: int) -> tuple[int | None, int | None] | None:
    """(user_id, apikey_id) of a binding."""
    row = db.run(sa.select(bindings.c.user_id, bindings.c.apikey_id).where(bindings.c.id == bid)).first()
    return None if row is None else (row[0], row[1])


def binding_expiry(db: Db, bid: int) -> tuple[bool, float | None]:
    """(exists, expires_at) of a binding."""
    row = db.run(sa.select(bindings.c.expires_at).where(bindings.c.id == bid)).first()
    return (False, None) if row is None else (True, row[0])


def binding_orgs(db: Db) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in db.run(sa.select(bindings.c.id, bindings.c.org).order_by(bindings.c.id))]


def has_active_binding(db: Db, user_id: int, role: str, org: str) -> bool:
    b = bindings.c
    return _exists(db, sa.select(b.id).where(b.user_id == user_id, b.role == role, b.org == org,
                                             b.revoked_at.is_(None)))


def revoke_tree(db: Db, bid: int, now: float) -> tuple[list[int], str]:
    """Revoke a binding and everything delegated from it (transitively); returns the ids revoked now (in
    id order) and the org of `bid`."""
    b = bindings.c
    tree = sa.select(b.id).where(b.id == bid).cte("tree", recursive=True)
    tree = tree.union(sa.select(b.id).join(tree, b.parent_id == tree.c.id))
    ids = list(db.run(sa.select(b.id).join(tree, b.id == tree.c.id).where(b.revoked_at.is_(None))
                      .order_by(b.id)).scalars())
    if ids:
        db.run(sa.update(bindings).where(b.id.in_(ids)).values(revoked_at=now))
    org_ = db.scalar(sa.select(b.org).where(b.id == bid))
    return ids, org_


def apikey_binding_org(db: Db, kid: int) -> str | None:
    return db.scalar(sa.select(bindings.c.org).where(bindings.c.apikey_id == kid).limit(1))


# --- API keys -----------------------------------------------------------------------------------------
def insert_apikey(db: Db, **row: Any) -> int:
    return int(db.run(sa.insert(apikeys).values(**row)).inserted_primary_key[0])


def list_apikeys(db: Db) -> list[dict[str, Any]]:
    k, b = apikeys.c, bindings.c
    return db.all(sa.select(k.id, k.name, b.role, b.org, k.created_by, k.created_at, k.expires_at, k.revoked_at,
                            k.last_used_at).select_from(apikeys.join(bindings, b.apikey_id == k.id)).order_by(k.id))


def apikey_scope(db: Db, kid: int) -> tuple[str, float | None, str] | None:
    """(org, revoked_at, role) of an API key through its binding."""
    k, b = apikeys.c, bindings.c
    row = db.run(sa.select(b.org, k.revoked_at, b.role).select_from(apikeys.join(bindings, b.apikey_id == k.id))
                 .where(k.id == kid)).first()
    return None if row is None else (row[0], row[1], row[2])


def revoke_apikey(db: Db, kid: int, now: float) -> None:
    db.run(sa.update(apikeys).where(apikeys.c.id == kid, apikeys.c.revoked_at.is_(None)).values(revoked_at=now))
    db.run(sa.update(bindings).where(bindings.c.apikey_id == kid, bindings.c.revoked_at.is_(None))
           .values(revoked_at=now))


def counts(db: Db, table_names: Iterable[str]) -> dict[str, int]:
    """Rows per iam table (tests and the legacy upgrade check)."""
    by_name = {t.name: t for t in TABLES}
    return {n: int(db.scalar(sa.select(sa.func.count()).select_from(by_name[n]))) for n in table_names}
