"""The purge worker. Each capability's store offers what it can purge as `RETENTION = {kind: fn}` with
`fn(db, cutoff: datetime, limit: int) -> int` (rows deleted, at most `limit`, never a row something still
needs: an event of an open case, audit rows at or after the latest checkpoint, ...). The worker runs
every `retention.interval_s`, one short transaction per batch so ingest is never held up for long."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from central import capabilities
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
                with self.hub.store.tx() as db:
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


def setup(hub: Hub) -> None:
    r = Retention(hub)
    hub.services["retention"] = r
    r.worker = LoopWorker(WORKER, r.step, interval_s=hub.settings.retention.interval_s)
    hub.add_worker(r.worker)
