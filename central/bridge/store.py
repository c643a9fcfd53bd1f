"""Tables the bridge writes: events (once per event_id), scan batches/records, rejected payloads.

`events.seq` is the change-feed key the video correlator's cursor follows. It must grow in commit order,
or a reader could move its cursor past a row still being committed with a lower seq: SQLite's one write
lock gives that for free; on PostgreSQL every event insert first takes a transaction-scoped advisory
lock (`dialect.serialize`), so a later transaction draws later seqs and commits after the earlier one."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.media import delete_after_commit
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
    # The JPEG is a file in the hub's media store (central/media.py): its key and SHA-256 are kept here.
    sa.Column("snapshot_key", sa.Text),
    sa.Column("snapshot_sha256", sa.Text),
    # Legacy: the JPEG as a BLOB (before revision 0002). Never written now; the media-move worker moves
    # what an upgraded database still holds into files, readers fall back to it until then.
    sa.Column("snapshot", sa.LargeBinary),
    sa.Index("idx_events_site_device_ts", "site", "device", "ts"),
    sa.Index("idx_events_kind_ts", "kind", "ts"),
    sa.Index("idx_events_snapshot_key", "snapshot_key", sqlite_where=sa.text("snapshot_key IS NOT NULL"),
             postgresql_where=sa.text("snapshot_key IS NOT NULL")),
    sa.Index("idx_events_legacy_snapshot", "seq", sqlite_where=sa.text("snapshot IS NOT NULL"),
             postgresql_where=sa.text("snapshot IS NOT NULL")),
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
               "score", "count", "payload", "snapshot_key", "snapshot_sha256")
_SCAN_COLS = ("scan_id", "batch_id", "site", "device", "serial", "code_system", "dept", "verdict", "reason", "ts",
              "location")
_REJECT_COLS = ("at", "topic", "reason", "detail")


def _baseline_events() -> sa.Table:
    """`events` as revision 0001 made it (adoption stamps the baseline, then the later revisions run)."""
    new = ("snapshot_key", "snapshot_sha256")
    return sa.Table("events", sa.MetaData(naming_convention=metadata.naming_convention),
                    *(c._copy() for c in events.columns if c.name not in new),
                    sa.Index("idx_events_site_device_ts", "site", "device", "ts"),
                    sa.Index("idx_events_kind_ts", "kind", "ts"))


def adopt_legacy(db: Db) -> None:
    """Legacy `events` was keyed by event_id, its feed order the hidden rowid (the correlator's cursor
    held a rowid). Rebuild it with `seq` = that rowid, so the cursor (moved to `seq` by video's
    adopt_legacy) still points at the same row. The other tables kept their shape and index names."""
    cols = [c.name for c in events.columns if c.name not in ("seq", "snapshot_key", "snapshot_sha256")]
    for ix in sa.inspect(db.sa).get_indexes("events"):
        db.run(f'DROP INDEX "{ix["name"]}"')
    db.run("ALTER TABLE events RENAME TO _legacy_events")
    _baseline_events().create(db.sa)  # with its indexes (the baseline's shape: revision 0002 adds the rest)
    names = ", ".join(cols)
    # The one read of a rowid: it becomes the explicit key here and is never used again.
    db.run(f"INSERT INTO events (seq, {names}) SELECT rowid, {names} FROM _legacy_events ORDER BY rowid")
    db.run("DROP TABLE _legacy_events")


_DISK_TROUBLE = {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.ENOMEM, errno.EAGAIN}


def is_transient(e: BaseException) -> bool:
    """Store trouble that goes away (a lock, a lost connection, a full or failing disk), as opposed to a
    bug in our SQL: the caller keeps the work and retries it."""
    if isinstance(e, StoreClosed | StoreUnavailable | sa.exc.TimeoutError):
        return True
    if isinstance(e, OSError) and e.errno in _DISK_TROUBLE:  # the media directory (snapshot files)
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
    e = events.c
    return db.all(sa.select(e.seq, e.site, e.device, e.payload, e.snapshot_key, e.snapshot_sha256, e.snapshot)
                  .where(e.seq > seq).order_by(e.seq).limit(limit))



# --- retention -------------------------------------------------------------------------------------------
# What retention must keep of `events`, said by the consumers of the feed (their stores register a condition
# on `events` at import; video: events its correlator has not consumed, events of a case still open).
KEEP_EVENTS: list[Callable[[], sa.ColumnElement[bool]]] = []
# Every column holding a media key, whatever its table: a file goes only when none of them names it any
# more (content addressing: one file may serve an event and its case, or two events with the same bytes).
MEDIA_REFS: list[sa.Column[Any]] = [events.c.snapshot_key]
SCAN_WINDOW = 2000


def unreferenced(db: Db, keys: Iterable[str]) -> set[str]:
    """Those of `keys` no row refers to (each lookup on a partial index over the key column)."""
    left = set(keys)
    for col in MEDIA_REFS:
        todo = sorted(left)
        for i in range(0, len(todo), 500):
            left -= set(db.run(sa.select(col).where(col.in_(todo[i : i + 500]))).scalars())
    return left


def purge_events(db: Db, cutoff: datetime, limit: int) -> int:
    """Delete at most `limit` events received before `cutoff` that nothing keeps (KEEP_EVENTS), oldest
    first, and (after commit) the snapshot files no remaining row refers to.

    The walk goes up the primary key in windows and stops at the first event received at or after the
    cutoff: `received_at` is the hub's clock at ingest, so it grows with `seq`, and a pass never scans the
    table's recent part (an event whose clock ran backwards waits for a later pass). The delete is one
    `seq` range with the same conditions, so it removes exactly the rows the walk picked."""
    cut = cutoff.astimezone(UTC).isoformat()
    e = events.c
    keep = sa.or_(*(f() for f in KEEP_EVENTS)) if KEEP_EVENTS else sa.false()
    kept = sa.case((keep, 1), else_=0)
    first = last = None
    n, after = 0, None
    keys: set[str] = set()
    while n < limit:
        q = sa.select(e.seq, e.received_at, e.snapshot_key, kept).order_by(e.seq).limit(SCAN_WINDOW)
        rows = db.run(q if after is None else q.where(e.seq > after)).all()
        done = len(rows) < SCAN_WINDOW
        for seq, received_at, key, is_kept in rows:
            if received_at >= cut:
                done = True
                break
            if is_kept:
                continue
            first = seq if first is None else first
            last = seq
            n += 1
            if key is not None:
                keys.add(key)
            if n == limit:
                break
        if done or not rows:
            break
        after = rows[-1][0]
    if first is None:
        return 0
    deleted = db.run(sa.delete(events).where(e.seq >= first, e.seq <= last, e.received_at < cut,
                                             sa.not_(keep))).rowcount
    if keys:
        delete_after_commit(db, unreferenced(db, keys))
    return int(deleted)


RETENTION = {"events": purge_events}


# --- snapshots still held as BLOBs (databases from before revision 0002) ----------------------------------
def legacy_snapshots(db: Db, limit: int) -> list[tuple[int, bytes | None, str | None]]:
    """(seq, JPEG bytes, received_at) of events that still hold their snapshot as a BLOB (partial index);
    the bytes are None when a file already took its place."""
    e = events.c
    return [(int(r[0]), None if r[3] else bytes(r[1]), r[2]) for r in db.run(
        sa.select(e.seq, e.snapshot, e.received_at, e.snapshot_key).where(e.snapshot.is_not(None)).order_by(e.seq)
        .limit(limit))]


def store_snapshot_ref(db: Db, seq: int, key: str | None, sha256: str | None) -> None:
    """The BLOB of event `seq` is now the file `key`: keep the reference, drop the BLOB."""
    e = events.c
    db.run(sa.update(events).where(e.seq == seq, e.snapshot.is_not(None)).values(
        snapshot_key=sa.func.coalesce(e.snapshot_key, key), snapshot_sha256=sa.func.coalesce(e.snapshot_sha256, sha256),
        snapshot=None))


LEGACY_MEDIA = {"events": (legacy_snapshots, store_snapshot_ref)}
