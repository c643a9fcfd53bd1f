"""The hub's data-access layer: one SQLAlchemy 2 Core engine over SQLite (embedded default) or PostgreSQL.

- `Store(database_url)` (a path means SQLite): `tx()` is one write transaction, `read()` a connection for
  reads; both yield a `Db`, and a `tx()`/`read()` inside a `tx()` of the same thread joins it, so a
  service may call another service (and the audit log) inside its own transaction.
- Tables are Core `Table`s on the one `metadata` below, declared in each capability's `store.py` (or
  `store/` package) beside the queries that use them; services call store functions, never SQL.
- The schema is one Alembic history (`central/store/alembic/`); `Store.migrate()` runs it. A database made by
  the pre-Alembic migrations (a `schema_migrations` table) is adopted in place first (`migrations.py`).
- What differs between the two backends is named in `central/store/dialect.py` (insert-ignore, upsert,
  claim with SKIP LOCKED, serialised appends, full-text search); nothing else may test the dialect.

SQLite: WAL, `synchronous=NORMAL`, foreign keys on, and `BEGIN IMMEDIATE` for write transactions (the write
lock up front: no upgrade deadlocks). PostgreSQL: psycopg 3, READ COMMITTED, a psycopg-pool ConnectionPool per process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import OperationalError as SAOperationalError

log = logging.getLogger("citybrain.store")

# Constraint names the same on both backends (Alembic can then drop and alter them by name).
metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

class StoreClosed(RuntimeError):
    """The store was closed: new work is refused here instead of touching freed connections."""


class StoreUnavailable(RuntimeError):
    """The database cannot be reached; the message names the host and port (or the file)."""


def database_url(value: str | Path) -> URL:
    """A `database_url` setting or a bare SQLite path, as the URL the engine is made from.
    `postgresql://` means psycopg 3 (the one PostgreSQL driver the hub ships)."""
    text = str(value)
    if "://" not in text:
        return URL.create("sqlite", database=text)
    url = make_url(text)
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        return url.set(drivername="sqlite")
    raise ValueError(f"database_url: unsupported backend {url.drivername!r} (use sqlite:/// or postgresql://)")


def describe(url: URL) -> str:
    """Where a URL points, for error messages: host:port/db, or the SQLite file. Never the password."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database or ':memory:'}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


class Db:
    """One connection; inside `Store.tx()` it is inside the write transaction.

    New code passes Core statements: `run` (a result), `all` (rows as dicts), `first`, `scalar`. `raw` is
    the driver's own connection, for the few fast paths a benchmark keeps (executemany, COPY), in stores only."""

    __slots__ = ("sa", "store", "dialect")

    def __init__(self, store: Store, conn: Connection) -> None:
        self.sa = conn
        self.store = store
        self.dialect: str = store.dialect

    # --- the layer's API ---------------------------------------------------------------------------------
    def run(self, stmt: Any, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> CursorResult:
        if isinstance(stmt, str):
            stmt = sa.text(stmt)
        return self.sa.execute(stmt, params) if params is not None else self.sa.execute(stmt)

    def all(self, stmt: Any, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in self.run(stmt, params).mappings()]

    def first(self, stmt: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        row = self.run(stmt, params).mappings().first()
        return dict(row) if row is not None else None

    def scalar(self, stmt: Any, params: Mapping[str, Any] | None = None) -> Any:
        return self.run(stmt, params).scalar()

    @property
    def raw(self) -> Any:
        """The DBAPI connection under this one (sqlite3 or psycopg), same transaction."""
        return self.sa.connection.driver_connection


class Store:
    def __init__(self, url: str | Path | URL, *, pool_size: int = 10, max_overflow: int = 30) -> None:
        self.url = url if isinstance(url, URL) else database_url(url)
        self.dialect: str = self.url.get_backend_name()
        self.path: Path | None = None
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            db = self.url.database or ":memory:"
            self.path = Path(db)
            if db != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: a pooled connection serves one thread at a time, never two at once.
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False, "isolation_level": None}
            if db == ":memory:":
                kwargs["poolclass"] = sa.pool.StaticPool
            else:  # connections are cheap; enough for the request thread pool plus the workers
                kwargs.update(pool_size=pool_size, max_overflow=64, pool_timeout=60)
        else:
            # psycopg-pool is the pool (its documented SQLAlchemy integration: NullPool with the pool's getconn
            # as creator, close_returns so SQLAlchemy's close() hands the connection back). Opened on first use,
            # so a Store that never connects starts no pool threads; `check` drops a connection a restarted
            # server closed, as pool_pre_ping did.
            from psycopg_pool import ConnectionPool

            self._pg_pool = ConnectionPool(
                self.conninfo(), min_size=1, max_size=pool_size + max_overflow, timeout=30, open=False,
                close_returns=True, check=ConnectionPool.check_connection, name="citybrain-hub",
                kwargs={"connect_timeout": 10, "application_name": "citybrain-hub"})
            kwargs.update(poolclass=sa.pool.NullPool, creator=self._pg_connection)
        # rowcount of every statement (INSERT .. ON CONFLICT DO NOTHING included) on both backends
        options = {"preserve_rowcount": True}
        self.engine: Engine = sa.create_engine(self.url, execution_options=options, **kwargs)
        self._reader_engine: Engine | None = None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_on_connect)
            # Per-thread read handles live outside the bounded pool (a thread keeps its handle).
            self._reader_engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool, execution_options=options,
                                                   connect_args=kwargs["connect_args"])
            event.listen(self._reader_engine, "connect", _sqlite_on_connect)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        self._active = 0  # write transactions under way
        self._idle = threading.Condition(self._lock)
        # SQLite: every thread's own read handle, with its thread (closed once that thread has ended).
        self._readers: list[tuple[Connection, threading.Thread]] = []
        self.background_checkpoint_passes = 0

    _pg_pool: Any = None  # psycopg_pool.ConnectionPool on PostgreSQL (closed until first used)

    def conninfo(self) -> str:
        """The URL as libpq takes it (postgresql://user:pass@host:port/db?...), password included."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def _pg_connection(self) -> Any:
        if self._pg_pool.closed:
            with self._lock:
                self._check_open()  # a closed Store never opens its pool again
                if self._pg_pool.closed:
                    self._pg_pool.open(wait=False)
        return self._pg_pool.getconn()

    def __repr__(self) -> str:
        return f"Store({describe(self.url)})"

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store ({describe(self.url)}) is closed")

    def _current(self) -> Db | None:
        return getattr(self._local, "tx", None)

    def ping(self) -> None:
        """Connect once; `StoreUnavailable` names where the database was expected."""
        try:
            # Before the pool is open (a hub starting): straight to the server, whose refusal names the reason
            # (the pool would only say it timed out). After that (/healthz), through the pool: no new
            # connection per call.
            if self._pg_pool is not None and self._pg_pool.closed:
                with psycopg.connect(self.conninfo(), connect_timeout=10) as c:
                    c.execute("SELECT 1")
                return
            with self.engine.connect() as c:
                c.exec_driver_sql("SELECT 1")
        except (SAOperationalError, sqlite3.Error, psycopg.Error) as e:
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e) else type(e).__name__
            raise StoreUnavailable(f"database_url: cannot connect to {describe(self.url)}: {reason}") from None

    # --- transactions ------------------------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[Db]:
        """One write transaction; nested calls join the outer one. SQLite: BEGIN IMMEDIATE."""
        cur = self._current()
        if cur is not None:
            yield cur
            return
        with self._lock:
            self._check_open()
            self._active += 1
        try:
            with self.engine.connect() as conn:
                # Begun up front, so a fast path's driver-level write (Db.raw) before any Core statement is
                # inside the transaction SQLAlchemy commits (PostgreSQL would otherwise drop it).
                conn.begin()
                if self.dialect == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                db = Db(self, conn)
                self._local.tx = db
                try:
                    yield db
                except BaseException:
                    conn.rollback()
                    raise
                else:
                    conn.commit()
                finally:
                    self._local.tx = None
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    @contextmanager
    def read(self) -> Iterator[Db]:
        """A connection for reads (inside a `tx()` of this thread: that transaction). SQLite reads run in
        autocommit; PostgreSQL's implicit transaction is rolled back on return."""
        cur = self._current()
        if cur is not None:
            yield cur
            return
        self._check_open()
        if self._reader_engine is not None:
            # SQLite: this thread's own autocommit handle. A pool checkout costs 30-55 us, which the hot
            # read paths (online verify: one primary-key probe) measurably paid; a handle per thread is what
            # SQLite wants anyway (its connections are cheap and never shared by two threads at once).
            yield self._reader()
            return
        with self.engine.connect() as conn:
            yield Db(self, conn)

    def _reader(self) -> Db:
        db: Db | None = getattr(self._local, "reader", None)
        if db is None:
            assert self._reader_engine is not None
            conn = self._reader_engine.connect()
            with self._lock:
                # handles of threads that have ended: nobody can be inside them any more
                dead = [c for c, t in self._readers if not t.is_alive()]
                self._readers = [(c, t) for c, t in self._readers if t.is_alive()]
                self._readers.append((conn, threading.current_thread()))
            for c in dead:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - a dead thread's handle: nothing left to save
                    pass
            db = Db(self, conn)
            self._local.reader = db
        return db

    @contextmanager
    def background_checkpoints(self, conn: sqlite3.Connection, interval: float = 0.2) -> Iterator[None]:
        """SQLite only, for a long run of write transactions on `conn` (a bulk import): its commits stop
        checkpointing the WAL themselves and a thread with its own connection does it (PASSIVE: never
        blocks the writer). SQLite runs the checkpoint with the GIL released, so the copy-back overlaps the
        writer on a second core instead of stalling every commit. A last checkpoint runs before returning."""
        if self.dialect != "sqlite" or self.path is None or str(self.path) == ":memory:" or conn.in_transaction:
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

    # --- schema ------------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Bring the schema to the newest Alembic revision (adopting a pre-Alembic database first); returns
        the revisions applied. One transaction: a failing revision leaves nothing half-applied."""
        self._check_open()
        self.ping()
        from central.store import migrations

        return migrations.upgrade(self)

    def versions(self) -> dict[str, str]:
        from central.store import migrations

        return migrations.versions(self)

    def backup(self, target: Path) -> None:
        """Online backup of a SQLite store (the SQLite backup API: consistent while the hub writes). A
        PostgreSQL hub is backed up with the server's own tools (pg_dump, base backups): see docs/DEPLOY.md."""
        if self.dialect != "sqlite":
            raise NotImplementedError("backup: use pg_dump / pg_basebackup for a PostgreSQL hub (docs/DEPLOY.md)")
        target.parent.mkdir(parents=True, exist_ok=True)
        dst = sqlite3.connect(str(target))
        try:
            with self.engine.connect() as c:
                c.connection.driver_connection.backup(dst)
        finally:
            dst.close()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, let write transactions under way finish (up to `timeout`), then dispose of the
        pool. A connection still checked out by a live thread is not closed under it: the pool lets it go
        and it is closed when that thread returns it. Stop the threads first (`Hub.close()` does)."""
        me = threading.current_thread()
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout)
            readers, self._readers = self._readers, []
        for c, owner in readers:
            if owner is me or not owner.is_alive():
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing a dead thread's handle: nothing left to save
                    pass
        self._local = threading.local()
        self.engine.dispose(close=True)
        if self._reader_engine is not None:
            self._reader_engine.dispose(close=True)
        if self._pg_pool is not None and not self._pg_pool.closed:
            self._pg_pool.close(timeout=timeout)


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.isolation_level = None  # the store issues BEGIN IMMEDIATE/COMMIT itself
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    dbapi_conn.execute("PRAGMA foreign_keys=ON")
    dbapi_conn.execute("PRAGMA busy_timeout=30000")


def utcnow() -> str:
    return datetime.now(UTC).isoformat()
