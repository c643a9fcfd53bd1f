"""Everything that differs between SQLite and PostgreSQL, named once. Stores call these; no other module
looks at `db.dialect`."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite

if TYPE_CHECKING:
    from central.store import Db

# An integer key: BIGINT on PostgreSQL, INTEGER on SQLite (only `INTEGER PRIMARY KEY` is SQLite's rowid
# alias, so the key is explicit there too and never a hidden rowid).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def insert(db: Db, table: sa.Table) -> Any:
    """The dialect's INSERT, which has `.on_conflict_do_nothing(index_elements=...)` and
    `.on_conflict_do_update(index_elements=..., set_=...)` (with `.excluded`) on both backends."""
    return pg.insert(table) if db.dialect == "postgresql" else sqlite.insert(table)


def insert_ignore(db: Db, table: sa.Table, *keys: str) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING (no keys: any unique conflict)."""
    return insert(db, table).on_conflict_do_nothing(index_elements=list(keys) or None)


def upsert(db: Db, table: sa.Table, keys: list[str], update: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET each of `update` = the new row's value."""
    stmt = insert(db, table)
    return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})


def claim(stmt: sa.Select) -> sa.Select:
    """A SELECT of rows to claim: FOR UPDATE SKIP LOCKED on PostgreSQL (two workers never take the same row
    and neither waits for the other). SQLite has no row locks: its write transaction (BEGIN IMMEDIATE)
    already makes claims one at a time, and SQLAlchemy leaves the clause out there."""
    return stmt.with_for_update(skip_locked=True)


def take_leases(db: Db, table: sa.Table, due: Any, order_by: Sequence[Any], now: float, lease_s: float, owner: str,
                limit: int, **values: Any) -> list[Any]:
    """Claim up to `limit` rows of `table` (one with `id`, `lease_owner` and `lease_until` columns) matching
    `due` for `owner` until now + lease_s, setting `values` too; returns their ids. `due` should take rows
    whose lease ran out (their worker died), so work is taken over, never stranded. Concurrent claimers never
    take the same row (see `claim`)."""
    ids = list(db.run(claim(sa.select(table.c.id).where(due).order_by(*order_by).limit(limit))).scalars())
    if ids:
        db.run(sa.update(table).where(table.c.id.in_(ids))
               .values(lease_owner=owner, lease_until=now + lease_s, **values))
    return ids


def lease_due(table: sa.Table, now: float, waiting: str, leased: str) -> Any:
    """Rows of a leased queue (`status`, `next_at`, `lease_until`) that a worker may take now: `waiting` ones
    whose time came, and `leased` ones whose lease ran out (their worker died mid-work)."""
    c = table.c
    return sa.or_(sa.and_(c.status == waiting, c.next_at <= now), sa.and_(c.status == leased, c.lease_until <= now))


def lease_held(table: sa.Table, row_id: Any, owner: str) -> Any:
    """The row `row_id` while `owner` still holds its lease: finish work only under this condition (an
    update that matches nothing means another worker took the row over)."""
    return sa.and_(table.c.id == row_id, table.c.lease_owner == owner)


def expire_if_idle(db: Db, seconds: float) -> None:
    """End this transaction (rolling it back, releasing its row locks) should its process stall longer than
    `seconds` between statements: a row lock held for a whole transaction becomes a lease that runs out.
    PostgreSQL only; a SQLite file has one process, whose death ends its transaction."""
    if db.dialect == "postgresql":
        db.run(sa.text(f"SET LOCAL idle_in_transaction_session_timeout = {max(1, int(seconds * 1000))}"))


def serialize(db: Db, name: str) -> None:
    """Make this transaction the only one past this point for `name` until it ends (an append-only chain
    read-then-append). PostgreSQL: a transaction-scoped advisory lock; SQLite: BEGIN IMMEDIATE already
    holds the database's one write lock."""
    if db.dialect == "postgresql":
        db.run(sa.select(sa.func.pg_advisory_xact_lock(lock_key(name))))


def try_lead(db: Db, name: str) -> bool:
    """Whether this transaction may act as the one leader for `name` (PostgreSQL: a transaction-scoped
    advisory try-lock; SQLite: one process owns the file, so always)."""
    if db.dialect == "postgresql":
        return bool(db.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(lock_key(name)))))
    return True


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (same in every process and release)."""
    return zlib.crc32(b"citybrain:" + name.encode()) | (0x5C17 << 32)


def like_escape(text: str) -> str:
    """`text` for a LIKE/ILIKE pattern, with `\\` as the escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains(column: Any, text: str) -> Any:
    """A case-insensitive substring test of `column` (uses a pg_trgm GIN index on PostgreSQL when there
    is one; SQLite stores use FTS5 trigram tables for the indexed search)."""
    return column.ilike(f"%{like_escape(text)}%", escape="\\")


def now_epoch(db: Db) -> Any:
    """The database's clock as UNIX seconds (REAL/double)."""
    if db.dialect == "postgresql":
        return sa.func.extract("epoch", sa.func.now())
    return (sa.func.julianday("now") - 2440587.5) * 86400.0


def fetch_in(db: Db, table: sa.Table, key: str, cols: list[str], keys: Sequence[Any],
             where: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows (`cols`) of `table` whose `key` is one of `keys` (and whose `where` columns equal the values
    given), through the driver: Core renders an expanding IN list at every execution (about 5 us per value),
    which bulk paths that look up thousands of keys per chunk measurably paid. Identifiers come from the
    Table, never from input; values are bound."""
    if not keys:
        return []
    names = [table.c[c].name for c in cols]  # KeyError for a column the table does not have
    extra = [table.c[c].name for c in (where or {})]
    vals = list((where or {}).values())
    cur = db.raw.cursor()
    out: list[tuple[Any, ...]] = []
    try:
        if db.dialect == "postgresql":
            cond = "".join(f"{c} = %s AND " for c in extra)
            cur.execute(f"SELECT {', '.join(names)} FROM {table.name} WHERE {cond}{table.c[key].name} = ANY(%s)",
                        [*vals, list(keys)])
            out = [tuple(r) for r in cur.fetchall()]
        else:
            cond = "".join(f"{c} = ? AND " for c in extra)
            for i in range(0, len(keys), 500):
                part = list(keys[i:i + 500])
                cur.execute(f"SELECT {', '.join(names)} FROM {table.name} WHERE {cond}{table.c[key].name} IN"
                            f" ({','.join('?' * len(part))})", [*vals, *part])
                out += [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()
    return out
