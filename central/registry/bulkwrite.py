"""Writing prepared registry rows, and the bulk import's writer process.

A bulk import is a two-stage pipeline: the importing process parses and prepares chunk k+1 (validation,
ids, PII, links; all Python) while a writer process stores chunk k. A process, not a thread: the writer
feeds SQLite with executemany, which takes the GIL back after every row, and with a busy Python thread
beside it each of those waits out a switch interval (measured: 100-700 us a row, against ~14 us alone).
Feeding SQLite one JSON array per statement instead keeps the GIL free but costs 1.6x the SQLite time
(json_each on SQLite 3.40, measured). The writer process imports only this module, the store and the
audit trail: `python -m central.registry.bulkwrite DB ACTOR ORG`, framed batches on stdin, one framed
answer per batch on stdout. Frames are an 8-byte length and a `marshal` payload: both ends are the same
interpreter, and marshal writes these plain tuples of str 3.5x faster than pickle (measured).
"""

from __future__ import annotations

import logging
import marshal
import queue
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import sqlite_utils

from central.store import Store

ENTITY_COLS = (
    "id", "type", "region", "name", "address", "org", "ext_kind", "ext_bi", "ext_enc", "ext_masked",
    "phone_enc", "grid", "valid_from", "valid_to", "attrs", "status", "created_by", "created_at", "updated_at",
)
# Rowids are SQLite's own: FTS takes the rows above the old max, and links get theirs from a map of the
# batch's rowids (consecutive: one writer, each new rowid is max + 1) plus one IN-query for older targets,
# where looking each end up through the id index cost two probes per link (~6 % of a bulk write).
INSERT_ENTITY = f"INSERT INTO registry_entities ({', '.join(ENTITY_COLS)}) VALUES ({', '.join('?' * 19)})"
INSERT_LINK = (
    "INSERT INTO registry_links (src, rel, dst, category, org, created_by, created_at, src_rid, dst_rid)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_ALIAS = "INSERT INTO registry_aliases VALUES (?, ?, ?, ?, ?)"
INSERT_FEED = "INSERT INTO registry_feed (ts, kind, entity_id, org, data) VALUES (?, 'entity.create', ?, ?, ?)"
UPSERT_SERIAL = (
    "INSERT INTO registry_serials (type_code, region, next) VALUES (?, ?, ?)"
    " ON CONFLICT (type_code, region) DO UPDATE SET next = excluded.next"
)
BULK_CACHE_KIB = 131072


@dataclass
class Rows:
    """One batch of prepared rows, in the column order of the statements above (what crosses the pipe)."""

    entities: list[tuple[Any, ...]]
    links: list[tuple[Any, ...]]
    aliases: list[tuple[Any, ...]]
    feeds: list[tuple[Any, ...]]
    serials: list[tuple[str, str, int]]  # counters to persist (none when the importer reserved blocks)

    def wire(self) -> tuple[Any, ...]:
        return (self.entities, self.links, self.aliases, self.feeds, self.serials)


def send(out: BinaryIO, obj: Any) -> None:
    data = marshal.dumps(obj)
    out.write(len(data).to_bytes(8, "little"))
    out.write(data)
    out.flush()


def receive(inp: BinaryIO) -> Any:
    """The next frame's value; EOFError at the end of input (also mid-frame: the sender died)."""
    head = inp.read(8)
    if len(head) < 8:
        raise EOFError
    size = int.from_bytes(head, "little")
    data = inp.read(size)
    if len(data) < size:
        raise EOFError
    return marshal.loads(data)


def write_rows(conn: sqlite3.Connection, r: Rows) -> None:
    """Store one batch (entities, FTS, links, aliases, feed, serials) inside the caller's transaction."""
    if not r.entities:
        return
    high = conn.execute("SELECT coalesce(max(rowid), 0) FROM registry_entities").fetchone()[0]
    conn.executemany(INSERT_ENTITY, r.entities)
    # FTS kept in step here, not by triggers: a trigger opens a statement savepoint per row and FTS5
    # flushes its pending terms at every savepoint, which made bulk inserts ~7x slower.
    conn.execute(
        "INSERT INTO registry_entities_fts (rowid, name, address)"
        " SELECT rowid, name, address FROM registry_entities WHERE rowid > ?",
        (high,),
    )
    if r.links:
        n = len(r.entities)
        if conn.execute("SELECT max(rowid) FROM registry_entities").fetchone()[0] != high + n:
            raise sqlite3.IntegrityError("the batch's rowids are not consecutive")  # the caller redoes it by row
        rid = {e[0]: high + 1 + i for i, e in enumerate(r.entities)}
        older = sorted({x for lk in r.links for x in (lk[0], lk[2]) if x not in rid})
        for i in range(0, len(older), 500):
            part = older[i:i + 500]
            rid.update(conn.execute(
                f"SELECT id, rowid FROM registry_entities WHERE id IN ({','.join('?' * len(part))})", part))
        get = rid.get  # an unknown id gives NULL, which NOT NULL refuses: the batch fails whole
        conn.executemany(INSERT_LINK, [(*lk, get(lk[0]), get(lk[2])) for lk in r.links])
    if r.aliases:
        conn.executemany(INSERT_ALIAS, r.aliases)
    conn.executemany(INSERT_FEED, r.feeds)
    if r.serials:
        conn.executemany(UPSERT_SERIAL, r.serials)


@contextmanager
def bulk_pragmas(conn: sqlite3.Connection) -> Iterator[None]:
    """For the length of a bulk import on this connection:
    - a bigger page cache: the unique external-key index takes random inserts, which at 1M rows miss
      SQLite's default 2 MB cache on nearly every row;
    - no foreign-key checks: the importer has already found every link target (and alias base) in the
      store or the batch, and entities are never deleted, so the index probes SQLite would add per link
      row re-check what is known (a missing one still fails: src_rid/dst_rid are NOT NULL).
    Only settable outside a transaction; inside one, left as is."""
    if conn.in_transaction:
        yield
        return
    fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")  # pages are allocated as used, freed on restore
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")
        conn.execute(f"PRAGMA foreign_keys = {int(fk)}")


RESUME = "resume"  # after a failed batch the writer skips batches until this frame (see serve)
SKIPPED = ("Skipped", "")


def _read_ahead(inp: BinaryIO, frames: queue.Queue[Any]) -> None:
    """Reads and decodes the next batch while the writer stores the one before (the pipe read is GIL-free)."""
    try:
        while True:
            frames.put(receive(inp))
    except EOFError:
        frames.put(EOFError)


Answer = tuple[str, str] | None


class BatchWriter:
    """Stores batches, one transaction each with its audit record, and answers None (committed) or (error
    class name, message) (rolled back). After a failure it answers SKIPPED, writing nothing, until `resume`:
    the importer sends batch k+1 before it has k's answer, so a batch after a failed one was prepared on top
    of rows that are not there (the importer redoes the failed one row by row, then resumes)."""

    def __init__(self, store: Store, actor: str, org: str | None) -> None:
        self.store, self.actor, self.org = store, actor, org
        self.failed = False

    def resume(self) -> None:
        self.failed = False

    def write(self, r: Rows) -> Answer:
        if self.failed:
            return SKIPPED
        try:
            with self.store.tx() as db:
                write_rows(db.conn, r)
                if r.entities:
                    _audit_import(db, self.actor, self.org, [e[0] for e in r.entities])
        except sqlite3.Error as e:
            self.failed = True
            return (type(e).__name__, str(e))
        return None


def _audit_import(db: sqlite_utils.Database, actor: str, org: str | None, ids: list[str]) -> None:
    from central.iam.audit import record

    record(db, actor=actor, action="registry.import", target=None, org=org,
           detail={"rows": len(ids), "first": ids[0], "last": ids[-1]})


def serve(db_path: str, actor: str, org: str | None, inp: BinaryIO, out: BinaryIO) -> None:
    """The writer process's loop: a `BatchWriter` answering each batch in order, reading the next batch on a
    thread while it stores the one before; ends at the end of its input."""
    store = Store(db_path)
    frames: queue.Queue[Any] = queue.Queue(maxsize=2)
    threading.Thread(target=_read_ahead, args=(inp, frames), name="bulkwrite-reader", daemon=True).start()
    writer = BatchWriter(store, actor, org)
    try:
        with bulk_pragmas(store.conn), store.background_checkpoints(store.conn):
            while (frame := frames.get()) is not EOFError:  # end of input, or the importer died
                if frame == RESUME:
                    writer.resume()
                else:
                    send(out, writer.write(Rows(*frame)))
    finally:
        store.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    db_path, actor, org = sys.argv[1], sys.argv[2], sys.argv[3] or None
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the answers: nothing else may write there
    serve(db_path, actor, org, sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
