"""Registry service: importing."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.registry import store
from central.registry.bulkwrite import (
    CONFLICT,
    DB_ENV,
    LEASE_LOST,
    RESUME,
    SKIPPED,
    Answer,
    BatchConflict,
    BatchWriter,
    advance,
    receive,
    send,
)
from central.registry.models import (
    EntityIn,
)
from central.registry.service.common import (
    Actor,
    Conflict,
    RegistryError,
    _audit,
    _cipher,
    _now,
    _parse,
    ext_index,
)
from central.registry.service.register import (
    ImportReport,
    Parsed,
    Progress,
    Registrar,
    Row,
    _Batch,
    _check_entity,
    _ImportRegistrar,
)

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.registry")

# An upload's claim on its import: renewed by every chunk it commits; another request sending the same
# upload takes it over (and goes on after the last committed chunk) once it ran out.
IMPORT_LEASE_S = 60.0
IDS_KEPT = 10000  # an upload this size or smaller keeps its report's ids across a takeover (what the route shows)


class _Lease:
    """An upload's import in `registry_imports`, claimed for this call (see tables.imports). Each chunk's
    transaction records the progress and renews the lease, and commits only while the lease holds: an
    importer that died (its writer process may still commit what it was handed) and the one that took its
    upload over never both store a chunk."""

    def __init__(self, hub: Hub, org: str | None, rows: list[Row]) -> None:
        self.hub = hub
        h = hashlib.sha256(repr(org).encode())
        for row in rows:  # the same file sent again is the same import (repr: equal rows, equal text; marshal's
            h.update(repr(row).encode())  # bytes depend on which strings are shared objects)
        self.key = "imp_" + h.hexdigest()[:32]
        self.keep_ids = len(rows) <= IDS_KEPT
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def claim(self, org: str | None, actor: Actor) -> ImportReport:
        """The report so far (its `total` is how many input rows are stored already)."""
        with self.hub.store.tx() as db:
            got = store.claim_import(db, self.key, org, actor.name, self.owner, time.time(), IMPORT_LEASE_S, _now())
        if got is None:
            raise Conflict("body", "this file is being imported by another request; send it again once that one "
                                   "has answered")
        return ImportReport(**json.loads(got[1])) if got[1] else ImportReport()

    def state(self, report: ImportReport) -> tuple[str, str, int, str, float]:
        """What a chunk's transaction records (bulkwrite.advance): the report once that chunk is stored."""
        d = report.to_dict(with_ids=self.keep_ids)
        d.pop("rejected")
        return (self.key, self.owner, report.total, json.dumps(d, ensure_ascii=False), IMPORT_LEASE_S)

    def advance(self, db: Db, report: ImportReport) -> None:
        if not advance(db, *self.state(report)):
            raise Conflict("body", "this import's lease ran out (another request took the file over)")

    def end(self, finished: bool) -> None:
        with self.hub.store.tx() as db:
            if finished:
                store.finish_import(db, self.key, self.owner, _now())
            else:  # failed here: the same file sent again goes on at once
                store.release_import(db, self.key, self.owner)


def _plus(report: ImportReport, read: int, accepted: list[tuple[int, str]], errors: list[dict[str, Any]],
          ids: bool) -> ImportReport:
    """`report` with one more chunk stored: `read` input rows, `accepted` of them created (and their ids
    listed when `ids`: copying a large upload's ids for every chunk cost more than its hashing)."""
    return ImportReport(total=report.total + read, created=report.created + len(accepted), updated=report.updated,
                        unchanged=report.unchanged, errors=[*report.errors, *errors],
                        ids=[*report.ids, *({"row": line, "id": eid, "created": True} for line, eid in accepted)]
                        if ids else [])


def _parse_row(cipher: Any, line: int, raw: dict[str, Any] | Exception, parsed: list[Parsed],
               errors: list[dict[str, Any]]) -> None:
    """The database-free part of a row: shape, type rules, and the blind index (HMAC before the write lock,
    so it does not hold other writers up)."""
    try:
        if isinstance(raw, Exception):
            raise raw
        item = _parse(raw)
        _check_entity(item)
        parsed.append((line, item, ext_index(cipher, item.type, item.external_key)))
    except RegistryError as e:
        errors.append({"row": line, **e.to_dict()})
    except ValueError as e:  # the importer's FieldError names the column
        errors.append({"row": line, "field": getattr(e, "field", "row"), "error": str(e)})


class _Skipped(Exception):
    """The writer left a batch alone: it came after a failed one (see bulkwrite.serve)."""


def _as_error(answer: Answer) -> BaseException | None:
    """A writer's answer for a batch: None if it landed, else why not."""
    if answer is None:
        return None
    if tuple(answer) == SKIPPED:
        return _Skipped()
    if answer[0] == LEASE_LOST:
        return Conflict("body", "this import's lease ran out (another request took the file over)")
    return BatchConflict(answer[1]) if answer[0] == CONFLICT else RuntimeError(f"{answer[0]}: {answer[1]}")


class _LocalWriter:
    """Stores a batch right away in this thread: an import of one chunk has nothing to overlap with."""

    def __init__(self, hub: Hub, actor: Actor, org: str | None) -> None:
        self.writer = BatchWriter(hub.store, actor.name, org)
        self.answers: list[Answer] = []

    def resume(self) -> None:
        self.writer.resume()

    def write(self, b: _Batch) -> None:
        self.answers.append(self.writer.write(b.rows))

    def result(self) -> BaseException | None:
        return _as_error(self.answers.pop(0))

    def stop(self) -> None:
        pass


class _WriterProcess:
    """The writer stage of a multi-chunk import, as a child process (see `central.registry.bulkwrite`)."""

    def __init__(self, hub: Hub, actor: Actor, org: str | None) -> None:
        root = str(Path(__file__).resolve().parents[3])
        # the database by environment, not argv: a PostgreSQL URL may carry a password
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               DB_ENV: hub.store.url.render_as_string(hide_password=False) if hub.store.path is None
               else str(Path(hub.store.path).resolve())}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "central.registry.bulkwrite", actor.name, org or ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.broken: BaseException | None = None

    def write(self, b: _Batch) -> None:
        self._send(b.rows.frame())

    def resume(self) -> None:
        self._send(RESUME)

    def _send(self, frame: Any) -> None:
        assert self.proc.stdin is not None
        try:
            send(self.proc.stdin, frame)
        except OSError as e:  # it died: result() says so
            self.broken = e

    def result(self) -> BaseException | None:
        assert self.proc.stdout is not None
        try:
            answer = receive(self.proc.stdout)
        except EOFError:
            return RuntimeError(f"the registry import writer exited with {self.proc.wait()} ({self.broken})")
        return _as_error(answer)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # end of input: it finishes its checkpoint and exits
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _chunks(rows: Iterable[Row], chunk: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while part := list(islice(it, chunk)):
        yield part


def import_rows(hub: Hub, actor: Actor, rows: Iterable[Row], *, org: str | None = None, chunk: int = 5000,
                progress: Progress | None = None) -> ImportReport:
    """Bulk registration, as a two-stage pipeline: this process parses and prepares chunk k+1 (per-row
    errors, ids, PII, links) while a writer process stores chunk k in one transaction (an import of one
    chunk is written in place). See `central.registry.bulkwrite` for why a process.

    Chunk k+1 is prepared on top of chunk k before k is committed: the registrar remembers k's ids, keys
    and local ids until the writer confirms the commit, then lets the database answer for them. Should a
    write still fail (a concurrent writer took an external key or a local id meanwhile), the writer rolls
    that chunk back, this process redoes it row by row under SAVEPOINTs (valid rows land, a bad row leaves
    nothing), and prepares the next chunk afresh. A failing row source raises after the chunks before it
    have landed.

    An upload (`rows` a list, the whole input at hand) is leased (`_Lease`): sent again while its import
    runs elsewhere it is refused (409), and sent again after that import died it goes on after the last
    chunk stored, its report covering the whole file. A stream (the CLI's file) is imported as it comes."""
    if hub.store._current() is not None:
        raise RuntimeError("import_rows commits chunk by chunk: call it outside a transaction")
    lease = _Lease(hub, org, rows) if isinstance(rows, list) else None
    report = lease.claim(org, actor) if lease else ImportReport()
    if lease and report.total:
        log.info("registry import %s: going on after row %d (its importer stopped)", lease.key, report.total)
        rows = rows[report.total:]  # type: ignore[index]
    finished = False
    try:
        with hub.store.read() as db:  # the registrar's reads between the writer's commits
            out = _import(hub, db, actor, rows, org, chunk, progress, report, lease)
        finished = True
        return out
    finally:
        if lease:
            lease.end(finished)


def _import(hub: Hub, db: Db, actor: Actor, rows: Iterable[Row], org: str | None, chunk: int,
            progress: Progress | None, report: ImportReport, lease: _Lease | None) -> ImportReport:
    cipher = _cipher(hub)
    reg = _ImportRegistrar(hub, db, actor, org, cipher, block=max(chunk, 1000))
    writer: _LocalWriter | _WriterProcess | None = None
    inflight: _Batch | None = None

    def prepare(parsed: list[Parsed], parse_errors: list[dict[str, Any]], n: int) -> _Batch:
        reg.ts = _now()
        reg.type_cache = {k: v for k, v in reg.type_cache.items() if v is not None}  # misses may be stale
        reg.prefetch([(item, bi) for _, item, bi in parsed])
        accepted: list[tuple[int, str]] = []
        errors = list(parse_errors)
        for line, item, bi in parsed:
            try:
                accepted.append((line, reg.prepare(item, bi, checked=True)))
            except RegistryError as e:
                errors.append({"row": line, **e.to_dict()})
        b = reg.take()
        b.accepted, b.errors, b.read, b.parsed, b.parse_errors = accepted, errors, n, parsed, parse_errors
        return b

    def settle() -> bool:
        """Wait for the in-flight batch; True if it landed as prepared."""
        nonlocal inflight
        b, inflight = inflight, None
        assert b is not None and writer is not None
        err = writer.result()
        reg.forget(b.ids, b.exts, b.alias_keys)  # stored (the database answers now) or rolled back
        if isinstance(err, BatchConflict):
            log.warning("bulk chunk failed (%s); redoing it row by row", err)
            report.errors.extend(b.parse_errors)  # the redo finds the other rows' errors again

            def progressed(db: Db, accepted: list[tuple[int, str]]) -> None:
                if lease:  # the redo's transaction records the chunk as stored
                    lease.advance(db, _plus(report, b.read, accepted, [], lease.keep_ids))

            accepted = _rowwise(hub, actor, org, cipher, b.parsed, report, progressed)
        elif err is not None:
            raise err
        else:
            report.errors.extend(b.errors)
            accepted = b.accepted
        report.total += b.read
        report.created += len(accepted)
        report.ids.extend({"row": line, "id": eid, "created": True} for line, eid in accepted)
        if progress:
            progress(b.read)
        return err is None

    # No cyclic GC while importing: a chunk allocates ~10 container objects per row, and each gen-2 pass
    # rescans every live row, which made collection a quarter of the import's CPU. Rows form no cycles;
    # anything cyclic (tracebacks of per-row errors) is collected once the import ends.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for part in _chunks(rows, chunk):
            if writer is None:  # more chunks may follow: start the writer process now, it takes ~0.3 s
                # (an in-memory store exists in this process only: it is written in place)
                on_disk = str(hub.store.path) != ":memory:"  # (PostgreSQL: path None, a server)
                writer = (_WriterProcess(hub, actor, org) if len(part) == chunk and on_disk
                          else _LocalWriter(hub, actor, org))
            parsed: list[Parsed] = []
            errors: list[dict[str, Any]] = []
            for line, raw in part:
                _parse_row(cipher, line, raw, parsed, errors)
            b = prepare(parsed, errors, len(part))
            del part
            if lease:  # the progress once b is stored, on top of the batch still in flight
                keep = lease.keep_ids
                ahead = _plus(report, inflight.read, inflight.accepted, inflight.errors, keep) if inflight else report
                b.rows.job = lease.state(_plus(ahead, b.read, b.accepted, b.errors, keep))
            writer.write(b)  # queued behind the batch in flight: the writer goes on to it without a gap
            if inflight is not None and not settle():
                # b was prepared on top of the chunk that failed, so the writer skipped it: prepare it again
                skipped = writer.result()
                assert isinstance(skipped, _Skipped), skipped
                reg.forget(b.ids, b.exts, b.alias_keys)
                b = prepare(b.parsed, b.parse_errors, b.read)
                if lease:
                    b.rows.job = lease.state(_plus(report, b.read, b.accepted, b.errors, lease.keep_ids))
                writer.resume()
                writer.write(b)
            inflight = b
        if inflight is not None:
            settle()
    finally:
        try:
            if writer is not None:
                if inflight is not None:  # the row source failed: let the chunk already handed over land
                    with contextlib.suppress(BaseException):
                        settle()
                writer.stop()
        finally:
            reg.release()
            if gc_was_on:
                gc.enable()
    report.errors.sort(key=lambda x: x["row"])
    return report


def _rowwise(hub: Hub, actor: Actor, org: str | None, cipher: Any,
             parsed: list[tuple[int, EntityIn, str | None]], report: ImportReport,
             progressed: Callable[[Db, list[tuple[int, str]]], None]) -> list[tuple[int, str]]:
    accepted: list[tuple[int, str]] = []
    with hub.store.tx() as db:
        reg = Registrar(hub, db, actor, org, cipher)
        for line, item, bi in parsed:
            try:
                with store.savepoint(db):  # a bad row leaves nothing behind
                    eid = reg.prepare(item, bi, checked=True)
                    reg.flush()
            except (RegistryError, *store.IntegrityError) as e:
                reg.discard()
                err = e.to_dict() if isinstance(e, RegistryError) else {"field": "row", "error": str(e)}
                report.errors.append({"row": line, **err})
            else:
                accepted.append((line, eid))
        if accepted:
            _audit(db, actor, "registry.import", None, org, {"rows": len(accepted)})
        progressed(db, accepted)
    return accepted


