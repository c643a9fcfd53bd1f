"""Tables the bridge writes: events (once per event_id), scan batches/records, rejected payloads.

`events.seq` is the change-feed key the video correlator's cursor follows. It must grow in commit order,
or a reader could move its cursor past a row still being committed with a lower seq: SQLite's one write
lock gives that for free; on PostgreSQL every event insert first takes a transaction-scoped advisory
lock (`dialect.serialize`), so a later transaction draws later seqs and commits after the earlier one."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.store import StoreClosed, StoreUnavailable, dialect, metadata

if TYPE_CHECKING:
    from central.store import Db

events = sa.Table(
    "events", metadata,
    sa.Column("seq", dialect.BigId, sa.Identity(), primary_key=True),  # SQLite: INTEGER PRIMARY KEY (= rowid)
    sa.Column("event_id", sa.Text, nullable=False, unique=True),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("received_at", sa.Text, nullable=False),
    sa.Column("phase", sa.Text),
    sa.Column("incident_id", sa.Text),
    sa.Column("camera", sa.Text),
    sa.Column("zone", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("count", sa.Integer),
    sa.Column("payload", sa.Text),
    sa.Column("snapshot", sa.LargeBinary),  # JPEG; bytea on PostgreSQL
    sa.Index("idx_events_site_device_ts", "site", "device", "ts"),
    sa.Index("idx_events_kind_ts", "kind", "ts"),
)

scan_batches = sa.Table(
    "scan_batches", metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("site", sa.Text),
    sa.Column("device", sa.Text),
    sa.Column("received_at", sa.Text),
    sa.Column("n", sa.Integer),
)

scans = sa.Table(
    "scans", metadata,
    sa.Column("scan_id", sa.Text, primary_key=True),
    sa.Column("batch_id", sa.Text),
    sa.Column("site", sa.Text),
    sa.Column("device", sa.Text),
    sa.Column("serial", sa.Text),
    sa.Column("code_system", sa.Text),
    sa.Column("dept", sa.Text),
    sa.Column("verdict", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("ts", sa.Text),
    sa.Column("location", sa.Text),
    sa.Index("idx_scans_serial", "serial"),
    sa.Index("idx_scans_dept_ts", "dept", "ts"),
)

ingest_rejects = sa.Table(
    "ingest_rejects", metadata,
    sa.Column("id", dialect.BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Text),
    sa.Column("topic", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Index("idx_ingest_rejects_reason", "reason"),
)

TABLES = [events, scan_batches, scans, ingest_rejects]

_EVENT_COLS = ("event_id", "site", "device", "kind", "ts", "received_at", "phase", "incident_id", "camera", "zone",
               "score", "count", "payload", "snapshot")
_SCAN_COLS = ("scan_id", "batch_id", "site", "device", "serial", "code_system", "dept", "verdict", "reason", "ts",
              "location")
_REJECT_COLS = ("at", "topic", "reason", "detail")


def adopt_legacy(db: Db) -> None:
    """Legacy `events` was keyed by event_id, its feed order the hidden rowid (the correlator's cursor
    held a rowid). Rebuild it with `seq` = that rowid, so the cursor (moved to `seq` by video's
    adopt_legacy) still points at the same row. The other tables kept their shape and index names."""
    cols = [c.name for c in events.columns if c.name != "seq"]
    for ix in sa.inspect(db.sa).get_indexes("events"):
        db.run(f'DROP INDEX "{ix["name"]}"')
    db.run("ALTER TABLE events RENAME TO _legacy_events")
    events.create(db.sa)  # with its indexes
    names = ", ".join(cols)
    # The one read of a rowid: it becomes the explicit key here and is never used again.
    db.run(f"INSERT INTO events (seq, {names}) SELECT rowid, {names} FROM _legacy_events ORDER BY rowid")
    db.run("DROP TABLE _legacy_events")


def is_transient(e: BaseException) -> bool:
    """Store trouble that goes away (a lock, a lost connection, a full or failing disk), as opposed to a
    bug in our SQL: the caller keeps the work and retries it."""
    if isinstance(e, StoreClosed | StoreUnavailable | sa.exc.TimeoutError):
        return True
    if isinstance(e, sa.exc.DBAPIError):
        if e.connection_invalidated:
            return True
        return e.orig is not None and is_transient(e.orig)
    if isinstance(e, sqlite3.OperationalError):
        msg = str(e).lower()
        return any(w in msg for w in ("locked", "busy", "disk", "full", "i/o", "unable to open"))
    try:
        import psycopg
    except ImportError:  # the SQLite-only install
        return False
    # Connection lost, server shutting down, lock timeout, deadlock/serialization, disk full: all of
    # PostgreSQL's operational errors are about the server's state, not the statement.
    return isinstance(e, psycopg.OperationalError)


def _ids(db: Db, column: sa.Column, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        found.update(db.run(sa.select(column).where(column.in_(ids[i : i + 500]))).scalars())
    return found


_MARK = {"sqlite": "?", "postgresql": "%s"}


def existing_event_ids(db: Db, ids: list[str]) -> set[str]:
    """The ingest hot path's duplicate check, on the driver: Core's expanding IN of 500 parameters cost
    about a fifth of a batch's store time (bench/ingest.py)."""
    found: set[str] = set()
    if not ids:
        return found
    if not db.sa.in_transaction():
        db.sa.begin()
    cur = db.raw.cursor()
    try:
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            cur.execute(f"SELECT event_id FROM events WHERE event_id IN ({','.join([_MARK[db.dialect]] * len(part))})",
                        part)
            found.update(r[0] for r in cur.fetchall())
    finally:
        cur.close()
    return found


# The ingest hot path: Core's per-row parameter processing costs more than 10 % of bench/ingest.py's rate
# here, so the rows go to the driver's executemany directly (one SQL text per paramstyle).
_INSERT_EVENTS = ("INSERT INTO events (" + ", ".join(_EVENT_COLS) + ") VALUES ({marks})"
                  " ON CONFLICT (event_id) DO NOTHING")
_INSERT_EVENTS_SQL = {
    "sqlite": _INSERT_EVENTS.format(marks=",".join("?" * len(_EVENT_COLS))),
    "postgresql": _INSERT_EVENTS.format(marks=",".join(["%s"] * len(_EVENT_COLS))),
}


def insert_events(db: Db, rows: list[tuple[Any, ...]]) -> None:
    """Rows in `_EVENT_COLS` order; an event_id already stored is left as it is. Their seqs follow the
    list order and, on PostgreSQL, the advisory lock makes them follow commit order across transactions."""
    if not rows:
        return
    if not db.sa.in_transaction():  # the commit at the end of tx() must cover the driver-level writes
        db.sa.begin()
    dialect.serialize(db, "events")
    cur = db.raw.cursor()
    try:
        cur.executemany(_INSERT_EVENTS_SQL[db.dialect], rows)
    finally:
        cur.close()


def existing_batches(db: Db, ids: list[str]) -> set[str]:
    return _ids(db, scan_batches.c.batch_id, ids)


def existing_scan_ids(db: Db, ids: list[str]) -> set[str]:
    return _ids(db, scans.c.scan_id, ids)


def insert_scan_batch(db: Db, batch: tuple[Any, ...], records: list[tuple[Any, ...]]) -> None:
    """`batch` as (batch_id, site, device, received_at, n), each record in `scans` column order."""
    db.run(dialect.insert_ignore(db, scan_batches, "batch_id").values(
        dict(zip(("batch_id", "site", "device", "received_at", "n"), batch, strict=True))))
    if records:
        db.run(dialect.insert_ignore(db, scans, "scan_id"),
               [dict(zip(_SCAN_COLS, r, strict=True)) for r in records])


def insert_rejects(db: Db, rows: list[tuple[str, str, str, str]]) -> None:
    """Rows of (at, topic, reason, detail)."""
    if rows:
        db.run(sa.insert(ingest_rejects), [dict(zip(_REJECT_COLS, r, strict=True)) for r in rows])


def rejects(db: Db, limit: int | None = None) -> list[dict[str, Any]]:
    """Rejected payloads, newest first."""
    q = sa.select(ingest_rejects).order_by(ingest_rejects.c.id.desc())
    return db.all(q.limit(limit) if limit else q)


def reject_counts(db: Db) -> dict[str, int]:
    return {r["reason"]: int(r["n"]) for r in db.all(
        sa.select(ingest_rejects.c.reason, sa.func.count().label("n")).group_by(ingest_rejects.c.reason))}


def count_events(db: Db, site: str | None = None, device: str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(events)
    if site is not None:
        q = q.where(events.c.site == site)
    if device is not None:
        q = q.where(events.c.device == device)
    return int(db.scalar(q))


def event_ids(db: Db) -> list[str]:
    """Every stored event_id in feed (seq) order."""
    return list(db.run(sa.select(events.c.event_id).order_by(events.c.seq)).scalars())


def max_seq(db: Db) -> int:
    """The newest committed event's seq (0: none)."""
    return int(db.scalar(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0))))


def events_after(db: Db, seq: int, limit: int) -> list[dict[str, Any]]:
    """Events past `seq` in feed order, for a consumer's cursor."""
    return db.all(sa.select(events.c.seq, events.c.site, events.c.device, events.c.payload, events.c.snapshot)
                  .where(events.c.seq > seq).order_by(events.c.seq).limit(limit))
