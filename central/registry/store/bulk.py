"""The bulk write fast path: one prepared batch (entities, FTS, links, aliases, feed, serials) per call, on
the driver connection. Core costs more than 10 % here (measured: SQLAlchemy's executemany builds a
parameter dict per row), so SQLite gets sqlite3 executemany and PostgreSQL psycopg 3 COPY."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from central.registry.store.queries import save_serials
from central.registry.store.tables import ENTITY_COLS
from central.store import dialect

if TYPE_CHECKING:
    from central.store import Db, Store

_ENT = ", ".join(ENTITY_COLS)
_LINK = "src, rel, dst, category, org, created_by, created_at, src_rid, dst_rid"
_ALIAS = "org, local_id, base_id, created_by, created_at"
_FEED = "ts, kind, entity_id, org, data"
BULK_CACHE_KIB = 131072


class MissingEnd(sqlite3.IntegrityError):
    """A link end that is neither in the batch nor stored (the caller redoes the batch row by row)."""


def write_rows(db: Db, entities: Sequence[tuple[Any, ...]], links: Sequence[tuple[Any, ...]],
               aliases: Sequence[tuple[Any, ...]], feeds: Sequence[tuple[Any, ...]],
               serials: Sequence[tuple[str, str, int]]) -> None:
    """Store one batch inside the caller's transaction. Rows are in ENTITY_COLS order, links
    (src, rel, dst, category, org, who, ts), aliases (org, local_id, base, who, ts), feeds (ts, id, org, data).
    Entity keys (rid) are given explicitly: links then map their ends from the batch without a lookup per
    link (looking each end up through the id index cost two probes per link, ~6 % of a bulk write)."""
    if not entities:
        return
    raw = db.raw
    n = len(entities)
    if db.dialect == "sqlite":
        # one writer (BEGIN IMMEDIATE holds the lock): the batch takes the keys above the current max
        high = raw.execute("SELECT coalesce(max(rid), 0) FROM registry_entities").fetchone()[0]
        rids = range(high + 1, high + 1 + n)
        raw.executemany(f"INSERT INTO registry_entities (rid, {_ENT}) VALUES (?, {', '.join('?' * 19)})",
                        [(r, *e) for r, e in zip(rids, entities, strict=True)])
        # FTS kept in step here, not by triggers (see schema.create_extras)
        raw.execute("INSERT INTO registry_entities_fts (rowid, name, address)"
                    " SELECT rid, name, address FROM registry_entities WHERE rid > ?", (high,))
    else:
        with raw.cursor() as cur:
            cur.execute("SELECT nextval(pg_get_serial_sequence('registry_entities', 'rid'))"
                        " FROM generate_series(1, %s)", (n,))
            rids = [r[0] for r in cur.fetchall()]
            with cur.copy(f"COPY registry_entities (rid, {_ENT}) FROM STDIN") as cp:
                for r, e in zip(rids, entities, strict=True):
                    cp.write_row((r, *e))
    if links:
        rid = {e[0]: r for r, e in zip(rids, entities, strict=True)}
        older = sorted({x for lk in links for x in (lk[0], lk[2]) if x not in rid})
        for i in range(0, len(older), 500):
            part = older[i:i + 500]
            if db.dialect == "sqlite":
                rid.update(raw.execute(f"SELECT id, rid FROM registry_entities WHERE id IN"
                                       f" ({','.join('?' * len(part))})", part))
            else:
                with raw.cursor() as cur:
                    cur.execute("SELECT id, rid FROM registry_entities WHERE id = ANY(%s)", (part,))
                    rid.update(cur.fetchall())
        get = rid.get
        rows = [(*lk, get(lk[0]), get(lk[2])) for lk in links]
        if any(r[7] is None or r[8] is None for r in rows):
            raise MissingEnd("registry_links.src_rid/dst_rid: a link end is not registered")
        _insert(db, "registry_links", _LINK, rows)
    if aliases:
        _insert(db, "registry_aliases", _ALIAS, aliases)
    dialect.serialize(db, "registry_feed")  # seqs visible in seq order (see queries.append_feed)
    _insert(db, "registry_feed", _FEED, [(ts, "entity.create", eid, org, data) for ts, eid, org, data in feeds])
    save_serials(db, serials)


def _insert(db: Db, table: str, cols: str, rows: Sequence[tuple[Any, ...]]) -> None:
    if db.dialect == "sqlite":
        db.raw.executemany(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * (cols.count(',') + 1))})", rows)
        return
    with db.raw.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


@contextmanager
def bulk_session(store: Store) -> Iterator[None]:
    """For a writer process's whole import (SQLite; nothing to do on PostgreSQL). Its store must have one
    pooled connection that every `tx()` of its one thread reuses (the settings below are per connection):
    - a bigger page cache: the unique external-key index takes random inserts, which at 1M rows miss
      SQLite's default 2 MB cache on nearly every row;
    - no foreign-key checks: the importer has already found every link target (and alias base) in the
      store or the batch, and entities are never deleted (a missing end still fails: see MissingEnd);
    - WAL checkpoints by a background thread (Store.background_checkpoints)."""
    if store.dialect != "sqlite":
        yield
        return
    with store.engine.connect() as c:
        conn: sqlite3.Connection = c.connection.driver_connection  # type: ignore[assignment]
    fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")  # pages are allocated as used, freed on restore
    try:
        with store.background_checkpoints(conn):
            yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")
        conn.execute(f"PRAGMA foreign_keys = {int(fk)}")
