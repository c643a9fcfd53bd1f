"""Writing prepared registry rows, and the bulk import's writer process.

A bulk import is a two-stage pipeline: the importing process parses and prepares chunk k+1 (validation,
ids, PII, links; all Python) while a writer process stores chunk k. A process, not a thread: the writer
feeds SQLite with executemany, which takes the GIL back after every row, and with a busy Python thread
beside it each of those waits out a switch interval (measured: 100-700 us a row, against ~14 us alone).
Feeding SQLite one JSON array per statement instead keeps the GIL free but costs 1.6x the SQLite time
(json_each on SQLite 3.40, measured). The writer process imports only this module, the store and the
audit trail: `python -m central.registry.bulkwrite ACTOR ORG` (the database in $CITYBRAIN_REGISTRY_WRITER_DB),
framed batches on stdin, one framed
answer per batch on stdout. Frames are an 8-byte length and a `marshal` payload: both ends are the same
interpreter, and marshal writes these plain tuples of str 3.5x faster than pickle (measured).
"""

from __future__ import annotations

import logging
import marshal
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from central.registry import store as registry_store
from central.registry.store import bulk
from central.store import Db, Store

DB_ENV = "CITYBRAIN_REGISTRY_WRITER_DB"  # the writer's database (a path or URL), by environment
CONFLICT = "IntegrityError"  # the answer's error name for a unique key or link end taken meanwhile
LEASE_LOST = "LeaseLost"  # the answer's error name when the import's lease ran out (another took it over)


class LeaseLost(Exception):
    """A leased import's lease ran out before a batch committed: the batch was rolled back."""


class BatchConflict(Exception):
    """A batch was refused whole on a key a concurrent writer took meanwhile (the importer redoes it row by
    row)."""


@dataclass
class Rows:
    """One batch of prepared rows, in the column order of `store.bulk.write_rows` (what crosses the pipe)."""

    entities: list[tuple[Any, ...]]
    links: list[tuple[Any, ...]]
    aliases: list[tuple[Any, ...]]
    feeds: list[tuple[Any, ...]]
    serials: list[tuple[str, str, int]]  # counters to persist (none when the importer reserved blocks)
    # A leased import's progress after this batch: (key, owner, rows done, report JSON, lease seconds);
    # committed with the rows, and the rows only while the owner's lease holds (registry_imports).
    job: tuple[str, str, int, str, float] | None = None

    def wire(self) -> tuple[Any, ...]:
        """The arguments of `store.bulk.write_rows` after `db`."""
        return (self.entities, self.links, self.aliases, self.feeds, self.serials)

    def frame(self) -> tuple[Any, ...]:
        """What crosses the pipe: `Rows(*frame)` at the other end."""
        return (*self.wire(), self.job)


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
                bulk.write_rows(db, *r.wire())
                if r.entities:
                    _audit_import(db, self.actor, self.org, [e[0] for e in r.entities])
                if r.job is not None and not advance(db, *r.job):
                    raise LeaseLost(f"import {r.job[0]}: its lease ran out before this batch committed")
        except LeaseLost as e:
            self.failed = True
            return (LEASE_LOST, str(e))
        except registry_store.DbError as e:
            self.failed = True
            name = CONFLICT if isinstance(e, registry_store.IntegrityError) else type(e).__name__
            return (name, str(e))
        return None


def advance(db: Db, key: str, owner: str, rows_done: int, report: str, lease_s: float) -> bool:
    """A leased import's progress, in the batch's transaction (False: the lease ran out)."""
    return registry_store.advance_import(db, key, owner, rows_done, report, time.time(), lease_s,
                                         datetime.now(UTC).isoformat())


def _audit_import(db: Db, actor: str, org: str | None, ids: list[str]) -> None:
    from central.iam.audit import record

    record(db, actor=actor, action="registry.import", target=None, org=org,
           detail={"rows": len(ids), "first": ids[0], "last": ids[-1]})


def serve(db_url: str, actor: str, org: str | None, inp: BinaryIO, out: BinaryIO) -> None:
    """The writer process's loop: a `BatchWriter` answering each batch in order, reading the next batch on a
    thread while it stores the one before; ends at the end of its input."""
    store = Store(db_url, pool_size=1)  # one thread: every tx() reuses the one connection bulk_session set up
    frames: queue.Queue[Any] = queue.Queue(maxsize=2)
    threading.Thread(target=_read_ahead, args=(inp, frames), name="bulkwrite-reader", daemon=True).start()
    writer = BatchWriter(store, actor, org)
    try:
        with bulk.bulk_session(store):
            while (frame := frames.get()) is not EOFError:  # end of input, or the importer died
                if frame == RESUME:
                    writer.resume()
                else:
                    send(out, writer.write(Rows(*frame)))
    finally:
        store.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    actor, org = sys.argv[1], sys.argv[2] or None
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the answers: nothing else may write there
    serve(os.environ[DB_ENV], actor, org, sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
