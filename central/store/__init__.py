"""The hub's embedded store: one SQLite file in WAL mode, reached through sqlite-utils.

Each capability keeps its SQL in its own `store.py` and declares `MIGRATIONS = [(version, fn), ...]`;
`Store.migrate()` applies the missing ones in order and records them in `schema_migrations`.
Connections are per thread (FastAPI runs sync routes in a thread pool; SQLite handles are not shareable).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

log = logging.getLogger("citybrain.store")

Migration = tuple[int, Callable[[sqlite_utils.Database], None]]


class StoreClosed(RuntimeError):
    """The store was closed: new work is refused here instead of touching freed SQLite handles."""

# Capabilities are migrated in this order (later ones may reference earlier tables); others follow A-Z.
ORDER = ["devices", "bridge", "iam", "registry", "codes", "video", "dialer"]


def capability_migrations() -> dict[str, list[Migration]]:
    from central import capabilities

    found: dict[str, list[Migration]] = {}
    for cap, store_mod in capabilities.modules("store"):
        migs = getattr(store_mod, "MIGRATIONS", None)
        if migs:
            found[cap] = sorted(migs, key=lambda m: m[0])
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Every connection with the thread that made it: close() closes a connection only from its own
        # thread or once that thread is gone, never while another thread may be inside sqlite3_step().
        self._all: list[tuple[sqlite3.Connection, threading.Thread]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._active = 0  # write transactions under way
        self._idle = threading.Condition(self._lock)
        self.background_checkpoint_passes = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            if self._closed:
                conn.close()
                raise StoreClosed(f"store {self.path} is closed")
            self._all.append((conn, threading.current_thread()))
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.connect())
            self._local.db = db
        return db

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    @contextmanager
    def tx(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front, no upgrade deadlocks)."""
        db = self.db
        if db.conn.in_transaction:  # nested: join the outer transaction
            yield db
            return
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            self._active += 1
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise
            else:
                # Some DDL helpers (executescript, sqlite-utils' enable_fts) commit on their own.
                if db.conn.in_transaction:
                    db.conn.execute("COMMIT")
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    @contextmanager
    def background_checkpoints(self, conn: sqlite3.Connection, interval: float = 0.2) -> Iterator[None]:
        """For a long run of write transactions on `conn` (a bulk import): its commits stop checkpointing
        the WAL themselves and a thread with its own connection does it (PASSIVE: never blocks the writer).
        SQLite runs the checkpoint with the GIL released, so the copy-back to the database file overlaps the
        writer on a second core instead of stalling every commit; a page rewritten by several commits is
        copied back once. A last checkpoint runs before returning, so the caller leaves no backlog for the
        next (small) commit of somebody else to pay."""
        if str(self.path) == ":memory:" or conn.in_transaction:
            yield
            return
        prev = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        stop = threading.Event()

        def run() -> None:
            c = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            try:
                while True:
                    last = stop.wait(interval)
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.background_checkpoint_passes += 1
                    if last:
                        break
            except sqlite3.Error as e:  # the writer's own checkpoints resume afterwards: nothing is lost
                log.warning("background checkpoint stopped: %s", e)
            finally:
                c.close()

        t = threading.Thread(target=run, name="wal-checkpoint", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(prev)}")

    def migrate(self) -> list[str]:
        """Apply missing migrations of every capability; returns what was applied ("cap:version")."""
        db = self.db
        db.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (capability TEXT NOT NULL, version INTEGER NOT NULL,"
            " applied_at TEXT NOT NULL, PRIMARY KEY (capability, version))"
        )
        done = {(r[0], r[1]) for r in db.conn.execute("SELECT capability, version FROM schema_migrations")}
        applied: list[str] = []
        for cap, migs in capability_migrations().items():
            for version, fn in migs:
                if (cap, version) in done:
                    continue
                with self.tx():
                    fn(db)
                    db.conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (cap, version, datetime.now(UTC).isoformat()),
                    )
                applied.append(f"{cap}:{version}")
        return applied

    def versions(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT capability, MAX(version) FROM schema_migrations GROUP BY capability")
        return {r[0]: r[1] for r in rows}

    def backup(self, target: Path) -> None:
        """Online backup (SQLite backup API): consistent even while the hub writes."""
        target.parent.mkdir(parents=True, exist_ok=True)
        dst = sqlite3.connect(str(target))
        try:
            self.conn.backup(dst)
        finally:
            dst.close()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, let write transactions under way finish (up to `timeout`), then close every
        connection whose thread is this one or has ended. A connection of a thread still alive is only
        dropped: it is closed when that thread lets go of it, so no handle is freed under a running query.
        Stop the threads first (`Hub.close()` stops the hub's workers before it closes the store)."""
        me = threading.current_thread()
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout)
            conns, self._all = self._all, []
        for c, owner in conns:
            if owner is me or not owner.is_alive():
                try:
                    c.close()
                except sqlite3.Error:
                    pass
        self._local = threading.local()


def utcnow() -> str:
    return datetime.now(UTC).isoformat()
