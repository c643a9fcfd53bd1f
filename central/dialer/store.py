"""Dialer tables and every query on them (SQLAlchemy Core; SQLite and PostgreSQL). Phones are stored
encrypted (central.iam.pii) with a keyed blind index for the do-not-call lookup and a masked copy for
display; this module never sees a clear phone.

Times are ISO-8601 UTC text with milliseconds (`service.iso`), so they compare as text on both backends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.media import delete_after_commit
from central.store import dialect, metadata
from central.store import feed as feeds
from central.store.dialect import BigId

if TYPE_CHECKING:
    from central.store import Db

log = logging.getLogger("citybrain.dialer.store")

templates = sa.Table(
    "dialer_templates", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("language", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("based_on", sa.Text),
    sa.Column("builtin", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_by", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.UniqueConstraint("key", "version"),
)

tasks = sa.Table(
    "dialer_tasks", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("template_key", sa.Text, nullable=False),
    sa.Column("template_version", sa.Integer, nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("schedule", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text),
    sa.Column("created_by", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("started_at", sa.Text),
    sa.Column("finished_at", sa.Text),
)

contacts = sa.Table(
    "dialer_contacts", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("task_id", BigId, sa.ForeignKey("dialer_tasks.id"), nullable=False),
    sa.Column("row_no", sa.Integer),
    sa.Column("phone_enc", sa.Text, nullable=False),
    sa.Column("phone_idx", sa.Text, nullable=False),
    sa.Column("phone_masked", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("vars", sa.Text, nullable=False, server_default="{}"),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_at", sa.Text),
    sa.Column("outcome", sa.Text),
    sa.Column("answers", sa.Text),
    sa.Column("updated_at", sa.Text, nullable=False),
    # Several engine processes share the store (the pjsua2 wheel allows 4 calls per process): each claim
    # records its engine so a restarting engine releases only its own unfinished attempts.
    sa.Column("claimed_by", sa.Text),
    # The claim's lease, in the database clock's UNIX seconds (dialect.now_epoch: the same clock for every
    # engine, whatever its own): the claiming engine renews it while the call is up; once it has passed,
    # the engine is dead and any live engine releases the contact (engine_lost, one re-dial).
    sa.Column("lease_until", sa.Float),
    sa.Column("reason", sa.Text),  # why the last attempt ended as it did (export column)
    sa.Index("dialer_contacts_lease", "status", "lease_until"),
    # the legacy index names, so an adopted database and a new one have the same indexes
    sa.Index("dialer_contacts_due", "task_id", "status", "next_at"),
    sa.Index("dialer_contacts_phone", "task_id", "phone_idx", unique=True),
)

cdrs_t = sa.Table(
    "dialer_cdrs", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("task_id", BigId, nullable=False),
    sa.Column("contact_id", BigId, nullable=False),
    sa.Column("attempt", sa.Integer),
    sa.Column("engine", sa.Text),
    sa.Column("started_at", sa.Text, nullable=False),
    sa.Column("answered_at", sa.Text),
    sa.Column("ended_at", sa.Text),
    sa.Column("sip_status", sa.Integer),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("answers", sa.Text),
    sa.Column("asr_text", sa.Text),
    sa.Column("transcript", sa.Text),
    # A central.media key (`recordings/<yyyy>/<mm>/<dd>/<sha256>.wav`: the key names the file's SHA-256,
    # which every read checks), or, in rows written before recordings moved to the media store, the
    # WAV's path under the engine's work_dir (service.move_legacy_recordings moves those).
    sa.Column("recording", sa.Text),
    sa.Column("duration_s", sa.Float),
    sa.Column("reason", sa.Text),  # the outcome's cause in words (e.g. "callee hung up during node notice")
    sa.Column("end_node", sa.Text),  # the dialog node the call ended at
    sa.Index("dialer_cdrs_task", "task_id", "contact_id"),
)

# Every engine process reports itself here every few seconds (heartbeat_at: database clock, UNIX s):
# its capacity (calls it can hold: the pjsua2 wheel's PJSUA_MAX_CALLS) and its trunk registration.
engines_t = sa.Table(
    "dialer_engines", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),  # running | stopped
    sa.Column("started_at", sa.Text, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("trunk", sa.Text),  # the registrar URI, None when dialling direct URIs
    sa.Column("reg_state", sa.Text),  # none | registering | registered | failed
    sa.Column("reg_status", sa.Integer),  # the registrar's last SIP status (403, 401, 200 ...)
    sa.Column("reg_error", sa.Text),
)

dnc_t = sa.Table(
    "dialer_dnc", metadata,
    sa.Column("phone_idx", sa.Text, primary_key=True),
    sa.Column("org", sa.Text, primary_key=True),
    sa.Column("phone_masked", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("added_at", sa.Text, nullable=False),
)

# The dialer change feed (docs/FEEDS.md): one row per finished call attempt (its CDR and the contact's
# result), and one when a task completes.
feed = feeds.feed_table("dialer_feed")

TABLES = [templates, tasks, contacts, cdrs_t, dnc_t, engines_t, feed]
CDR_COLUMNS = frozenset(cdrs_t.c.keys())

# The engine polls these ten times a second and runs them per claim and per call: built once here (with
# bind parameters) instead of per call, which is most of Core's cost per statement (~220 -> ~90 us).
_t, _c = tasks.c, contacts.c
_RUNNING_TASKS = (sa.select(_t.id, _t.org, _t.schedule, _t.template, _t.priority).where(_t.status == "running")
                  .order_by(_t.priority.desc(), _t.id))
_TASK_STATUS = sa.select(_t.status).where(_t.id == sa.bindparam("b_id"))
_TASK_STATUSES = sa.select(_t.id, _t.status).where(_t.id.in_(sa.bindparam("b_ids", expanding=True)))
_ANY_ACTIVE = sa.select(sa.literal(1)).where(_t.status.in_(("running", "paused"))).limit(1)
_WEBHOOK = sa.select(_t.webhook_url, _t.webhook_secret).where(_t.id == sa.bindparam("b_id"))
_LEFT_TO_CALL = (sa.select(sa.literal(1))
                 .where(_c.task_id == sa.bindparam("b_task"), _c.status.in_(("pending", "calling"))).limit(1))
_COMPLETE = (sa.update(tasks).where(_t.id == sa.bindparam("b_id"), _t.status == "running")
             .values(status="completed", finished_at=sa.bindparam("b_now")))
_ACTIVE_CALLS = (sa.select(sa.func.count()).select_from(contacts)
                 .where(_c.task_id == sa.bindparam("b_task"), _c.status == "calling"))
_DUE = dialect.claim(
    sa.select(_c.id, _c.phone_enc, _c.phone_idx, _c.name, _c.vars, _c.attempts)
    .where(_c.task_id == sa.bindparam("b_task"), _c.status == "pending",
           sa.or_(_c.next_at.is_(None), _c.next_at <= sa.bindparam("b_now")))
    .order_by(_c.priority.desc(), _c.row_no).limit(sa.bindparam("b_limit")))
_SKIP_DNC = (sa.update(contacts).where(_c.id.in_(sa.bindparam("b_ids", expanding=True)))
             .values(status="skipped", outcome="dnc", updated_at=sa.bindparam("b_now")))
_MARK_CALLING = (sa.update(contacts).where(_c.id.in_(sa.bindparam("b_ids", expanding=True)))
                 .values(status="calling", attempts=_c.attempts + 1, updated_at=sa.bindparam("b_now"),
                         claimed_by=sa.bindparam("b_engine"), lease_until=sa.bindparam("b_lease")))
_FOR_FINISH = (sa.select(_c.task_id, _c.attempts, _c.status, _c.claimed_by, _t.schedule, _t.org)
               .join(tasks, _t.id == _c.task_id).where(_c.id == sa.bindparam("b_id")))
_RESULT = (sa.update(contacts).where(_c.id == sa.bindparam("b_id"))
           .values(status=sa.bindparam("b_status"), next_at=sa.bindparam("b_next"),
                   outcome=sa.bindparam("b_outcome"), answers=sa.bindparam("b_answers"),
                   updated_at=sa.bindparam("b_now"), reason=sa.bindparam("b_reason"), lease_until=None))
_INSERT_CDR = sa.insert(cdrs_t)
_DNC = sa.select(dnc_t.c.phone_idx, dnc_t.c.org)


def adopt_legacy(db: Db) -> None:
    """The legacy tables (migrations 1 and 2) already have these columns, types and index names: nothing to
    reshape. A database stopped at legacy migration 1 lacks `claimed_by` (added by 2): add it."""
    cols = {c["name"] for c in sa.inspect(db.sa).get_columns("dialer_contacts")}
    if "claimed_by" not in cols:
        db.run(sa.text("ALTER TABLE dialer_contacts ADD COLUMN claimed_by TEXT"))


# --- templates ------------------------------------------------------------------------------------
def template_keys(db: Db) -> set[str]:
    return set(db.run(sa.select(templates.c.key).distinct()).scalars())


def insert_template(db: Db, row: dict[str, Any]) -> int:
    return int(db.run(sa.insert(templates).values(**row)).inserted_primary_key[0])


def insert_templates_ignore(db: Db, rows: Sequence[dict[str, Any]]) -> None:
    """Built-ins seeded by several processes at once (engine workers): the second copy is ignored."""
    db.run(dialect.insert_ignore(db, templates, "key", "version"), list(rows))


def latest_templates(db: Db) -> list[dict[str, Any]]:
    """One row per key: its newest version's name, org, language, builtin flag and origin."""
    newest = (sa.select(templates.c.key, sa.func.max(templates.c.version).label("version"))
              .group_by(templates.c.key).subquery())
    t = templates.c
    return db.all(sa.select(t.key, t.version.label("latest_version"), t.name, t.org, t.language, t.builtin,
                            t.based_on)
                  .join(newest, sa.and_(t.key == newest.c.key, t.version == newest.c.version))
                  .order_by(t.key))


def get_template(db: Db, key: str, version: int | None = None) -> dict[str, Any] | None:
    t = templates.c
    q = sa.select(t.body, t.org, t.version, t.based_on, t.builtin, t.created_at, t.created_by).where(t.key == key)
    if version is not None:
        q = q.where(t.version == version)
    return db.first(q.order_by(t.version.desc()).limit(1))


def template_versions(db: Db, key: str) -> list[dict[str, Any]]:
    t = templates.c
    return db.all(sa.select(t.version, t.created_at, t.created_by, t.based_on).where(t.key == key)
                  .order_by(t.version))


def template_owner(db: Db, key: str) -> dict[str, Any]:
    """{"version": newest or None, "org": owner, "builtin": 0/1} of a key. Inside the save's transaction:
    saves of one key are serialised, so two at once get versions n+1 and n+2, not a unique-key error."""
    dialect.serialize(db, f"dialer.template.{key}")
    t = templates.c
    row = db.first(sa.select(sa.func.max(t.version).label("version"), sa.func.min(t.org).label("org"),
                             sa.func.max(t.builtin).label("builtin")).where(t.key == key))
    assert row is not None  # an aggregate always has a row
    return row


# --- tasks ----------------------------------------------------------------------------------------
def insert_task(db: Db, row: dict[str, Any]) -> int:
    return int(db.run(sa.insert(tasks).values(**row)).inserted_primary_key[0])


def get_task(db: Db, task_id: int) -> dict[str, Any] | None:
    return db.first(sa.select(tasks).where(tasks.c.id == task_id))


def list_tasks(db: Db) -> list[dict[str, Any]]:
    t = tasks.c
    return db.all(sa.select(t.id, t.name, t.org, t.template_key, t.template_version, t.status, t.created_at)
                  .order_by(t.id.desc()))


def update_task(db: Db, task_id: int, values: dict[str, Any]) -> None:
    db.run(sa.update(tasks).where(tasks.c.id == task_id).values(**values))


def running_tasks(db: Db) -> list[dict[str, Any]]:
    return db.all(_RUNNING_TASKS)


def task_status(db: Db, task_id: int) -> str | None:
    return db.scalar(_TASK_STATUS, {"b_id": task_id})


def task_statuses(db: Db, task_ids: set[int]) -> dict[int, str]:
    return {r["id"]: r["status"] for r in db.all(_TASK_STATUSES, {"b_ids": sorted(task_ids)})}


def any_active_task(db: Db) -> bool:
    """Is a task running or paused (an engine with --exit-when-idle keeps going)?"""
    return db.first(_ANY_ACTIVE) is not None


def webhook_target(db: Db, task_id: int) -> tuple[str, str] | None:
    row = db.first(_WEBHOOK, {"b_id": task_id})
    return (row["webhook_url"], row["webhook_secret"]) if row and row["webhook_url"] and row["webhook_secret"] else None


def task_org(db: Db, task_id: int) -> str | None:
    return db.scalar(sa.select(_t.org).where(_t.id == task_id))  # type: ignore[no-any-return]


def complete_task(db: Db, task_id: int, now: str) -> bool:
    """running -> completed when no contact is left to call; True if this call completed it. Called in the
    transaction that closed a contact, so two engines closing the last two contacts at once each saw the
    other's still 'calling' (PostgreSQL, read committed) and neither completed the task. The check is
    serialised per task: the later one reads after the earlier committed (each statement sees what is
    committed when it starts) and completes it."""
    dialect.serialize(db, f"dialer.complete.{task_id}")
    if db.first(_LEFT_TO_CALL, {"b_task": task_id}) is not None:
        return False
    return db.run(_COMPLETE, {"b_id": task_id, "b_now": now}).rowcount == 1


# --- contacts ---------------------------------------------------------------------------------------
_CONTACT_COLS = ("task_id", "row_no", "phone_enc", "phone_idx", "phone_masked", "name", "vars", "priority",
                 "status", "outcome", "attempts", "updated_at")


def insert_contacts(db: Db, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk insert of an imported call list (100k rows in one go). Raw driver fast paths: SQLite
    executemany of one prepared INSERT (Core's executemany of the same rows took twice the CPU: 1.8 s
    against 0.9 s per 100k rows, ~13 % of the whole import in bench/dialer_store.py); PostgreSQL COPY (a
    stream instead of a batch of INSERT round trips)."""
    if not rows:
        return
    tuples = [tuple(r[c] for c in _CONTACT_COLS) for r in rows]
    cols = ", ".join(_CONTACT_COLS)
    dbapi = db.sa.dialect.loaded_dbapi
    try:
        if db.dialect == "sqlite":
            sql = f"INSERT INTO dialer_contacts ({cols}) VALUES ({', '.join('?' * len(_CONTACT_COLS))})"
            db.raw.executemany(sql, tuples)
        else:
            sql = f"COPY dialer_contacts ({cols}) FROM STDIN"
            with db.raw.cursor() as cur, cur.copy(sql) as cp:
                for t in tuples:
                    cp.write_row(t)
    except dbapi.IntegrityError as e:  # the same exception as a Core statement's, on both backends
        raise sa.exc.IntegrityError(sql, None, e) from e


def next_row_offset(db: Db, task_id: int) -> int:
    """Inside an import's transaction: what to add to a file's row numbers (2 = its first row) so they
    continue the task's rows (0 for the first import). Imports of one task are serialised."""
    dialect.serialize(db, f"dialer.import.{task_id}")
    top = db.scalar(sa.select(sa.func.max(contacts.c.row_no)).where(contacts.c.task_id == task_id))
    return 0 if top is None else int(top) - 1


def contact_phone_indexes(db: Db, task_id: int) -> set[str]:
    return set(db.run(sa.select(contacts.c.phone_idx).where(contacts.c.task_id == task_id)).scalars())


def has_contacts(db: Db, task_id: int) -> bool:
    return db.first(sa.select(sa.literal(1)).where(contacts.c.task_id == task_id).limit(1)) is not None


def cancel_pending(db: Db, task_id: int, now: str) -> None:
    db.run(sa.update(contacts).where(contacts.c.task_id == task_id, contacts.c.status == "pending")
           .values(status="skipped", outcome="cancelled", updated_at=now))


def active_calls(db: Db, task_id: int) -> int:
    """Calls in progress for a task across every engine process (max_concurrent is task-wide)."""
    return int(db.scalar(_ACTIVE_CALLS, {"b_task": task_id}) or 0)


def claim_contacts(db: Db, task_id: int, now: str, limit: int, max_concurrent: int, dnc: set[str],
                   engine_id: str, lease_s: float = 120.0) -> list[dict[str, Any]]:
    """Inside the caller's write transaction: take up to `limit` due contacts of a task (priority first),
    never more than the task's free slots (`max_concurrent` minus calls in progress), and mark numbers
    on the do-not-call list (`dnc`, blind indexes) skipped on the way. Several engines may claim at once:
    the task's claims are serialised (PostgreSQL advisory lock; SQLite's BEGIN IMMEDIATE already does it)
    so the free-slot count read here is still true when the claim commits, and the rows are selected FOR
    UPDATE SKIP LOCKED. Each claim carries a lease of `lease_s` (database clock) the engine renews while
    the call is up. Returns the claimed rows (id, phone_enc, name, vars, attempts before this one)."""
    dialect.serialize(db, f"dialer.claim.{task_id}")
    limit = min(limit, max_concurrent - active_calls(db, task_id))
    if limit <= 0:
        return []
    rows = db.all(_DUE, {"b_task": task_id, "b_now": now, "b_limit": limit + len(dnc)})
    skip: list[int] = []
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["phone_idx"] in dnc:
            skip.append(r["id"])
            continue
        if len(out) >= limit:
            break
        out.append(r)
    if skip:
        db.run(_SKIP_DNC, {"b_ids": skip, "b_now": now})
    if out:
        db.run(_MARK_CALLING, {"b_ids": [r["id"] for r in out], "b_now": now, "b_engine": engine_id,
                               "b_lease": db_epoch(db) + lease_s})
    return out


def contact_for_finish(db: Db, contact_id: int) -> dict[str, Any] | None:
    """The contact's task, attempts so far and the task's schedule (JSON)."""
    return db.first(_FOR_FINISH, {"b_id": contact_id})


def set_contact_result(db: Db, contact_id: int, status: str, next_at: str | None, outcome: str,
                       answers: str, now: str, reason: str | None = None) -> None:
    db.run(_RESULT, {"b_id": contact_id, "b_status": status, "b_next": next_at, "b_outcome": outcome,
                     "b_answers": answers, "b_now": now, "b_reason": reason})


# --- leases and engines ------------------------------------------------------------------------------
def db_epoch(db: Db) -> float:
    """The database's clock (UNIX seconds): leases and heartbeats of every engine are on it."""
    return float(db.scalar(sa.select(dialect.now_epoch(db))))


def renew_leases(db: Db, engine_id: str, ids: Sequence[int], lease_s: float) -> set[int]:
    """Extend this engine's leases on the contacts of its live calls; returns the ids among `ids` it no
    longer holds (another engine released them after the lease ran out: hang those calls up)."""
    if not ids:
        return set()
    c = contacts.c
    mine = (c.id.in_(list(ids)), c.status == "calling", c.claimed_by == engine_id)
    db.run(sa.update(contacts).where(*mine).values(lease_until=db_epoch(db) + lease_s))
    held = set(db.run(sa.select(c.id).where(*mine)).scalars())
    return set(ids) - held


def expired_leases(db: Db, limit: int = 100) -> list[dict[str, Any]]:
    """Inside a write transaction: contacts still 'calling' whose lease has run out (their engine died; a
    row without a lease was claimed before leases existed), locked for this releaser."""
    c = contacts.c
    return db.all(dialect.claim(
        sa.select(c.id, c.task_id, c.claimed_by, c.updated_at, c.attempts)
        .where(c.status == "calling", sa.or_(c.lease_until.is_(None), c.lease_until < dialect.now_epoch(db)))
        .order_by(c.id).limit(limit)))


def lost_attempts(db: Db, contact_id: int) -> int:
    """How many attempts of a contact were lost with their engine (one re-dial at most)."""
    d = cdrs_t.c
    return int(db.scalar(sa.select(sa.func.count()).select_from(cdrs_t)
                         .where(d.contact_id == contact_id, d.outcome == "engine_lost")) or 0)


def upsert_engine(db: Db, row: dict[str, Any]) -> None:
    """An engine's report (every few seconds): its row with heartbeat_at = the database clock now."""
    values = {**row, "heartbeat_at": dialect.now_epoch(db)}
    db.run(dialect.upsert(db, engines_t, ["id"], [k for k in values if k != "id"]).values(**values))


def get_engine(db: Db, engine_id: str) -> dict[str, Any] | None:
    e = engines_t.c
    return db.first(sa.select(engines_t, (dialect.now_epoch(db) - e.heartbeat_at).label("age_s"))
                    .where(e.id == engine_id))


def list_engines(db: Db) -> list[dict[str, Any]]:
    """Every engine that ever reported, newest heartbeat first, with its heartbeat's age in seconds."""
    e = engines_t.c
    return db.all(sa.select(engines_t, (dialect.now_epoch(db) - e.heartbeat_at).label("age_s"))
                  .order_by(e.heartbeat_at.desc()))


def engine_capacity(db: Db, stale_s: float) -> int:
    """Calls the live engines (running, heartbeat within `stale_s`) hold together."""
    return live_engines(db, stale_s)[1]


def live_engines(db: Db, stale_s: float) -> tuple[int, int]:
    """How many engines are live (running, heartbeat within `stale_s`) and the calls they hold together."""
    e = engines_t.c
    row = db.first(sa.select(sa.func.count().label("n"), sa.func.coalesce(sa.func.sum(e.capacity), 0).label("cap"))
                 .where(e.state == "running", e.heartbeat_at > dialect.now_epoch(db) - stale_s))
    return (int(row["n"]), int(row["cap"])) if row else (0, 0)


def calls_wanted(db: Db) -> list[dict[str, Any]]:
    """Per running task: its stored schedule and how many of its contacts are still to call or being called."""
    c = contacts.c
    left = (sa.select(sa.func.count()).where(c.task_id == _t.id, c.status.in_(("pending", "calling")))
            .scalar_subquery())
    return db.all(sa.select(_t.id, _t.schedule, left.label("left")).where(_t.status == "running"))


def status_counts(db: Db, task_id: int) -> dict[str, int]:
    c = contacts.c
    return {r["status"]: r["n"] for r in db.all(
        sa.select(c.status, sa.func.count().label("n")).where(c.task_id == task_id).group_by(c.status))}


def outcome_counts(db: Db, task_id: int) -> dict[str, int]:
    """Contacts by final outcome, or by status while they have none."""
    c = contacts.c
    k = sa.func.coalesce(c.outcome, c.status)
    return {r["k"]: r["n"] for r in db.all(
        sa.select(k.label("k"), sa.func.count().label("n")).where(c.task_id == task_id).group_by(k))}


def contact_answers(db: Db, task_id: int) -> list[str]:
    c = contacts.c
    return list(db.run(sa.select(c.answers).where(c.task_id == task_id, c.answers.is_not(None))
                       .order_by(c.id)).scalars())


def export_rows(db: Db, task_id: int) -> list[dict[str, Any]]:
    c = contacts.c
    return db.all(sa.select(c.row_no, c.phone_enc, c.phone_masked, c.name, c.status, c.outcome, c.attempts,
                            c.answers, c.reason).where(c.task_id == task_id).order_by(c.row_no, c.id))


# --- CDRs -------------------------------------------------------------------------------------------
def insert_cdr(db: Db, row: dict[str, Any]) -> None:
    db.run(_INSERT_CDR, row)


def cdr_counts(db: Db, task_id: int) -> dict[str, int]:
    """Attempts dialled, answered, and completed of a task."""
    d = cdrs_t.c
    row = db.first(sa.select(sa.func.count().label("dialled"), sa.func.count(d.answered_at).label("answered"),
                             sa.func.coalesce(sa.func.sum(sa.case((d.outcome == "completed", 1), else_=0)), 0)
                             .label("completed")).where(d.task_id == task_id))
    assert row is not None
    return {k: int(v or 0) for k, v in row.items()}


def attempt_outcomes(db: Db, task_id: int) -> dict[str, int]:
    d = cdrs_t.c
    return {r["outcome"]: r["n"] for r in db.all(
        sa.select(d.outcome, sa.func.count().label("n")).where(d.task_id == task_id).group_by(d.outcome))}


def task_cdrs(db: Db, task_id: int) -> list[dict[str, Any]]:
    """Every CDR of a task with its contact's masked phone and name, oldest first."""
    return db.all(sa.select(cdrs_t, contacts.c.phone_masked, contacts.c.name)
                  .join(contacts, contacts.c.id == cdrs_t.c.contact_id)
                  .where(cdrs_t.c.task_id == task_id).order_by(cdrs_t.c.id))


# --- do-not-call ------------------------------------------------------------------------------------
def dnc_entries(db: Db) -> list[tuple[str, str]]:
    """(phone blind index, org) of every do-not-call entry; the service keeps those covering a task's org."""
    return [(r[0], r[1]) for r in db.run(_DNC)]


def upsert_dnc(db: Db, row: dict[str, Any]) -> None:
    db.run(dialect.upsert(db, dnc_t, ["phone_idx", "org"], ["phone_masked", "reason", "added_at"]).values(**row))


def _dnc_visible(scopes: Sequence[str], ancestors: Sequence[str]) -> sa.ColumnElement[bool]:
    """Entries inside the caller's scopes, and those of the orgs above them (city-wide entries that
    also cover the caller's tasks)."""
    return sa.or_(feeds.org_in(dnc_t.c.org, scopes), dnc_t.c.org.in_(list(ancestors)))


def dnc_page(db: Db, scopes: Sequence[str], ancestors: Sequence[str], org: str | None, phone_idx: str | None,
             limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
    """(total, a page of) do-not-call entries visible to the scopes, newest first; `org` keeps those of
    that org's subtree, `phone_idx` those of one number."""
    d = dnc_t.c
    where = [_dnc_visible(scopes, ancestors)]
    if org is not None:
        where.append(feeds.org_in(d.org, [org]))
    if phone_idx is not None:
        where.append(d.phone_idx == phone_idx)
    total = int(db.scalar(sa.select(sa.func.count()).select_from(dnc_t).where(*where)) or 0)
    rows = db.all(sa.select(d.phone_masked, d.org, d.reason, d.added_at).where(*where)
                  .order_by(d.added_at.desc(), d.org, d.phone_idx).limit(limit).offset(offset))
    return total, rows


def delete_dnc(db: Db, phone_idx: str, org: str) -> dict[str, Any] | None:
    """Remove one entry; returns it (None when there was none)."""
    d = dnc_t.c
    row = db.first(sa.select(d.phone_masked, d.org, d.reason, d.added_at)
                   .where(d.phone_idx == phone_idx, d.org == org))
    if row is not None:
        db.run(sa.delete(dnc_t).where(d.phone_idx == phone_idx, d.org == org))
    return row


def dialling_counts(db: Db, task_id: int, now: str, dnc_orgs: Sequence[str]) -> dict[str, Any]:
    """What a task's status reason needs: contacts pending and calling, pending ones not on a do-not-call
    list of `dnc_orgs` (the task's org and those above it), those of them due now, and the earliest retry
    time of the rest."""
    c, d = contacts.c, dnc_t.c
    on_dnc = sa.exists().where(d.phone_idx == c.phone_idx, d.org.in_(list(dnc_orgs)))
    due = sa.or_(c.next_at.is_(None), c.next_at <= now)
    row = db.first(sa.select(
        sa.func.count().label("pending"),
        sa.func.coalesce(sa.func.sum(sa.case((~on_dnc, 1), else_=0)), 0).label("callable"),
        sa.func.coalesce(sa.func.sum(sa.case((sa.and_(~on_dnc, due), 1), else_=0)), 0).label("due"),
        sa.func.min(sa.case((sa.and_(~on_dnc, ~due), c.next_at), else_=None)).label("next_retry"),
    ).where(c.task_id == task_id, c.status == "pending"))
    assert row is not None  # an aggregate always has a row
    return {"pending": int(row["pending"]), "callable": int(row["callable"]), "due": int(row["due"]),
            "next_retry": row["next_retry"], "calling": active_calls(db, task_id)}



# --- recordings and retention ---------------------------------------------------------------------
RECORDING_KIND = "recordings"
_MEDIA_KEY = re.compile(r"^recordings/\d{4}/\d{2}/\d{2}/([0-9a-f]{64})\.wav$")
_LEGACY_NAME = re.compile(r"^task\d+-c\d+-a\d+\.wav$")  # what the engine named a recording in its work_dir
FINAL_TASKS = ("completed", "cancelled")  # never running/paused/draft: their CDRs may still be read back
FINAL_CONTACTS = ("done", "failed", "skipped")  # a pending or calling contact's CDRs decide its retries


def recording_sha256(value: str | None) -> str | None:
    """The SHA-256 a media key names (None for no recording or a legacy path)."""
    m = _MEDIA_KEY.match(value or "")
    return m.group(1) if m else None


def set_recording(db: Db, cdr_id: int, old: str, key: str) -> bool:
    return db.run(sa.update(cdrs_t).where(cdrs_t.c.id == cdr_id, cdrs_t.c.recording == old)
                  .values(recording=key)).rowcount == 1


def legacy_recordings(db: Db, after_id: int, limit: int) -> list[dict[str, Any]]:
    """CDRs past `after_id` whose recording is still a work_dir path (a media key has the dated layout)."""
    d = cdrs_t.c
    return [r for r in db.all(sa.select(d.id, d.recording, d.started_at)
                              .where(d.id > after_id, d.recording.is_not(None),
                                     d.recording.not_like("recordings/____/__/__/%.wav"))
                              .order_by(d.id).limit(limit))]


def purge_cdrs(db: Db, cutoff: datetime, limit: int) -> int:
    """Retention (`retention.cdrs_days`): delete up to `limit` CDRs started before `cutoff`, never one of a
    task still running, paused or not started, nor of a contact without a final outcome (its CDRs are what
    its retries and the task's progress still count). A purged CDR's recording goes too, unless another
    CDR refers to the same file (content addressing: identical bytes are one file)."""
    d, t, c = cdrs_t.c, tasks.c, contacts.c
    rows = db.all(sa.select(d.id, d.recording)
                  .select_from(cdrs_t.join(tasks, t.id == d.task_id).join(contacts, c.id == d.contact_id))
                  .where(d.started_at < cutoff.astimezone(UTC).isoformat(timespec="milliseconds"),
                         t.status.in_(FINAL_TASKS), c.status.in_(FINAL_CONTACTS))
                  .order_by(d.id).limit(limit))
    if not rows:
        return 0
    ids = [r["id"] for r in rows]
    n = int(db.run(sa.delete(cdrs_t).where(d.id.in_(ids))).rowcount)
    files = sorted({r["recording"] for r in rows if r["recording"]})
    if files:
        kept = set(db.run(sa.select(d.recording).distinct().where(d.recording.in_(files))).scalars())
        _delete_recordings(db, [f for f in files if f not in kept])
    return n


def _delete_recordings(db: Db, files: list[str]) -> None:
    """Files no row refers to any more: media files go once the purge's transaction has committed (a
    rolled-back purge keeps them); a legacy work_dir path is unlinked at once (only a name the engine made)."""
    delete_after_commit(db, [f for f in files if recording_sha256(f) is not None])
    for f in files:
        if recording_sha256(f) is None and _LEGACY_NAME.match(Path(f).name):
            try:
                Path(f).unlink(missing_ok=True)
            except OSError as e:
                log.warning("retention: could not delete %s: %s", f, e)


RETENTION = {"cdrs": purge_cdrs}


# --- change feed -------------------------------------------------------------------------------------------
def append_feed(db: Db, rows: list[dict[str, Any]]) -> None:
    feeds.append(db, feed, rows)


def feed_page(db: Db, after: int, scopes: list[str], limit: int) -> list[dict[str, Any]]:
    return feeds.page(db, feed, after, scopes, limit)


def feed_last(db: Db) -> int:
    return feeds.last_seq(db, feed)


def work_figures(db: Db) -> dict[str, Any]:
    """For /metrics: contacts of running tasks per status, calls up (calling), the calling ones whose lease
    ran out (their engine died; the next heartbeat of a live one releases them), the live engines'
    capacity, and the oldest expired lease's age in seconds by the database clock."""
    c, t = contacts.c, tasks.c
    counts = {r["status"]: int(r["n"]) for r in db.all(
        sa.select(c.status, sa.func.count().label("n")).select_from(contacts.join(tasks, t.id == c.task_id))
        .where(t.status == "running").group_by(c.status))}
    now = dialect.now_epoch(db)
    lost = db.first(sa.select(sa.func.count().label("n"), sa.func.max(now - c.lease_until).label("age"))
                    .where(c.status == "calling", c.lease_until < now)) or {}
    return {"counts": counts, "expired": int(lost.get("n") or 0), "expired_age": float(lost.get("age") or 0.0)}
