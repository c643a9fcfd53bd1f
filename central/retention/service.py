"""The purge worker. Each capability's store offers what it can purge as `RETENTION = {kind: fn}` with
`fn(db, cutoff: datetime, limit: int) -> int` (rows deleted, at most `limit`, never a row something still
needs: an event of an open case, audit rows at or after the latest checkpoint, ...). The worker runs
every `retention.interval_s`, one short transaction per batch so ingest is never held up for long.

Also here: the hub's media store is made (and checked writable) while the hub is built, and `media-move`
moves snapshot BLOBs of an upgraded database into it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from central import capabilities, media
from central.hub import LoopWorker

if TYPE_CHECKING:
    from central.hub import Hub

log = logging.getLogger("citybrain.retention")

WORKER = "retention-purge"
BATCH = 2000
Purge = Callable[[Any, datetime, int], int]


def purgers() -> dict[str, Purge]:
    """kind -> purge function, from every capability store that offers some."""
    found: dict[str, Purge] = {}
    for cap, mod in capabilities.modules("store"):
        for kind, fn in getattr(mod, "RETENTION", {}).items():
            if kind in found:
                raise RuntimeError(f"retention kind {kind!r} offered twice (again by {cap})")
            found[kind] = fn
    return found


class Retention:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.purged: dict[str, int] = {}  # kind -> rows purged since start (for /metrics and tests)
        self.worker: LoopWorker | None = None

    def days(self) -> dict[str, int]:
        cfg = self.hub.settings.retention
        return {k: v for k, v in cfg.model_dump().items() if k.endswith("_days") and v is not None}

    def run_once(self, now: datetime | None = None, stopping: Callable[[], bool] = lambda: False) -> dict[str, int]:
        """One pass over every kind with a retention period; returns rows purged per kind. A first purge of a
        large backlog is many batches: `stopping` is asked between them so Hub.stop() never waits for it."""
        now = now or datetime.now(UTC)
        fns = purgers()
        out: dict[str, int] = {}
        for setting, days in self.days().items():
            kind = setting.removesuffix("_days")
            fn = fns.get(kind)
            if fn is None:
                continue
            cutoff = now - timedelta(days=days)
            total = 0
            while not self.hub.store.closed and not stopping():
                # A purged row's media file goes once its transaction has committed, never before.
                with media.deletes_after_commit(), self.hub.store.tx() as db:
                    n = fn(db, cutoff, BATCH)
                total += n
                if n < BATCH:
                    break
            if total:
                log.info("retention: purged %d %s older than %s", total, kind, cutoff.isoformat())
            out[kind] = total
            self.purged[kind] = self.purged.get(kind, 0) + total
        return out

    def step(self) -> bool:
        self.run_once(stopping=lambda: self.worker is not None and self.worker.stopping)
        return False


MOVE_WORKER = "media-move"
MOVE_BATCH = 200
Pending = Callable[[Any, int], list[tuple[int, bytes | None, str | None]]]
StoreRef = Callable[[Any, int, str | None, str | None], None]


def legacy_media() -> dict[str, tuple[Pending, StoreRef]]:
    """name -> (pending, store_ref) from every store that may still hold media as BLOBs (`LEGACY_MEDIA`)."""
    found: dict[str, tuple[Pending, StoreRef]] = {}
    for _cap, mod in capabilities.modules("store"):
        found.update(getattr(mod, "LEGACY_MEDIA", {}))
    return found


class MediaMove:
    """Moves the snapshot BLOBs of a database from before revision 0002 into the media store: each batch's
    files are written (durably) first, then one short transaction points the rows at them and drops the
    BLOBs. Until a row is moved its readers serve the BLOB, so an upgraded hub shows every snapshot at once."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.moved: dict[str, int] = {}

    def run_once(self) -> int:
        m = media.media_of(self.hub)
        total = 0
        for name, (pending, store_ref) in legacy_media().items():
            with self.hub.store.read() as db:
                rows = pending(db, MOVE_BATCH)
            if not rows:
                continue
            refs = m.put_many([("snapshots", data, "jpg", _day(at)) for _id, data, at in rows if data is not None])
            it = iter(refs)
            with self.hub.store.tx() as db:
                for row_id, data, _at in rows:
                    ref = next(it) if data is not None else None
                    store_ref(db, row_id, ref.key if ref else None, ref.sha256 if ref else None)
            self.moved[name] = self.moved.get(name, 0) + len(rows)
            total += len(rows)
        if total:
            log.info("media: moved %d snapshot BLOB(s) into %s", total, m.root)
        return total

    def step(self) -> bool:
        return self.run_once() > 0


def _day(at: str | None) -> datetime | None:
    """The key's date: when the row was stored (so a moved file sits where a new one of that day would)."""
    try:
        return datetime.fromisoformat(at) if at else None
    except ValueError:
        return None


def setup(hub: Hub) -> None:
    media.media_of(hub)  # made and checked here, while the hub is built: a bad media_dir stops it at start
    r = Retention(hub)
    hub.services["retention"] = r
    r.worker = LoopWorker(WORKER, r.step, interval_s=hub.settings.retention.interval_s)
    hub.add_worker(r.worker)
    mv = MediaMove(hub)
    hub.services["media-move"] = mv
    hub.add_worker(LoopWorker(MOVE_WORKER, mv.step, interval_s=600))
