"""Ingest counters and the latest rejected payloads (why each was refused)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from central.bridge import store
from central.bridge.models import BridgeStatsOut, RejectOut
from central.deps import get_hub
from central.hub import Hub
from central.iam.deps import Principal, require

router = APIRouter()


def _city_wide(p: Principal) -> bool:
    return p.visible("bridge.read", None)  # a binding at an org-tree root


def _scoped_rejects(hub: Hub, p: Principal, limit: int | None) -> list[dict[str, Any]]:
    """Rejected payloads, newest first, whose device (or site) lies in the caller's bridge.read scope;
    those from unknown devices or topics only for city-wide readers."""
    with hub.store.read() as db:
        rows = store.rejects(db, limit if _city_wide(p) else None)
    if _city_wide(p):
        return rows
    devices = hub.services.get("devices")
    orgs: dict[str, str | None] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        t = r["topic"] or ""
        if t not in orgs:
            orgs[t] = devices.topic_org(t) if devices is not None else None
        org = orgs[t]
        if org is not None and p.allowed("bridge.read", org):
            out.append(r)
            if limit and len(out) >= limit:
                break
    return out


# exclude_unset: a scoped caller's answer has no since_start (absent, not null)
@router.get("/stats", response_model=BridgeStatsOut, response_model_exclude_unset=True)
def stats(p: Principal = Depends(require("bridge.read")), hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    if not _city_wide(p):  # counts of the caller's own devices only
        by_reason: dict[str, int] = {}
        for r in _scoped_rejects(hub, p, None):
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        devices = hub.services.get("devices")
        mine = devices.list(p.scopes("bridge.read")) if devices is not None else []
        with hub.store.read() as db:
            n = sum(store.count_events(db, d["site"], d["device"]) for d in mine)
        return {"connected": getattr(hub.publisher, "connected", False), "events_stored": n,
                "rejected_by_reason": by_reason}
    counters = dict(getattr(hub.publisher, "counters", {}))
    with hub.store.read() as db:
        stored, by_reason = store.count_events(db), store.reject_counts(db)
    return {
        "connected": getattr(hub.publisher, "connected", False),
        "events_stored": stored,
        "rejected_by_reason": by_reason,
        "since_start": counters,
    }


@router.get("/rejects", response_model=list[RejectOut])
def rejects(
    limit: int = Query(100, ge=1, le=1000), p: Principal = Depends(require("bridge.read")),
    hub: Hub = Depends(get_hub),
) -> list[dict[str, Any]]:
    """Latest rejected payloads in the caller's scope (by the device's or site's org)."""
    return _scoped_rejects(hub, p, limit)
