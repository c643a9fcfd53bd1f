"""City code authority rules: departments, applications with three checks, URL filing, keys, issuing,
online verification, revocation, supervision, webhooks. No HTTP types and no SQL here (queries are in
central/codes/store.py); errors are `CodesError` carrying the HTTP-ish status and the field at fault.

`CodesService` is one object made of the parts in this package, one module per section: keys,
applications (departments, duties, rules, applications, app keys, URL filing), issuing (identity checks,
issue, revocation), verify, lists (trust and revocation lists), supervision (scans, statistics, webhooks).
"""

from __future__ import annotations

import time
from datetime import datetime

from central.codes.service.applications import ApplicationsPart
from central.codes.service.common import (
    DEPT_ID,
    ENTITY_TYPES,
    KEY_LIFETIME_S,
    NO_SYSTEM,
    SCENE_TYPE,
    CodesError,
)
from central.codes.service.issuing import IssuingPart
from central.codes.service.keys import KeysPart
from central.codes.service.lists import ListsPart
from central.codes.service.resolver import ResolverPart
from central.codes.service.supervision import SupervisionPart
from central.codes.service.verify import VerifyPart
from central.hub import Hub, LoopWorker

__all__ = ["DEPT_ID", "ENTITY_TYPES", "KEY_LIFETIME_S", "NO_SYSTEM", "REVOCATIONS_REFRESH_S", "SCENE_TYPE",
           "CodesError", "CodesService", "service_of", "setup"]

# Terminals treat a revocation list older than 24 h (its signed issued_at) as stale: re-sign it hourly.
REVOCATIONS_REFRESH_S = 3600


class CodesService(KeysPart, ApplicationsPart, IssuingPart, VerifyPart, ListsPart, SupervisionPart, ResolverPart):
    def refresh_revocations(self) -> bool:
        """Worker step: re-sign an unchanged revocation list once it is REVOCATIONS_REFRESH_S old."""
        cur = self.current("revocations")  # none yet: republish_lists publishes the first
        age = time.time() - datetime.fromisoformat(cur["issued_at"]).timestamp() if cur else 0.0
        if age >= REVOCATIONS_REFRESH_S:
            self.publish_revocations()
        return False


def service_of(hub: Hub) -> CodesService:
    svc = hub.services.get("codes")
    if svc is None:
        svc = CodesService(hub)
        hub.services["codes"] = svc
    return svc


def setup(hub: Hub) -> None:
    svc = service_of(hub)
    if hub.settings.mqtt.enabled:
        hub.add_worker(LoopWorker("codes-revocations-refresh", svc.refresh_revocations, interval_s=60))
    hub.hooks.on("scans.ingested", svc.ingest_scans)
    hub.hooks.on("devices.config", svc.fill_device_config)
    hub.hooks.on("bridge.connected", svc.republish_lists)
    # Verify counters live in memory between flushes: a stopping process writes its share (every process
    # adds to the same rows, so N processes count like one).
    hub.hooks.on("hub.stopping", svc.flush_stats)
