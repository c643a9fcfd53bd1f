"""Ingest counters and the latest rejected payloads (why each was refused)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from central.bridge import store
from central.hub import Hub, get_hub
from central.iam.deps import Principal, require

router = APIRouter()


@router.get("/stats")
def stats(p: Principal = Depends(require("bridge.read")), hub: Hub = Depends(get_hub)) -> dict:
    counters = dict(getattr(hub.publisher, "counters", {}))
    return {
        "connected": getattr(hub.publisher, "connected", False),
        "events_stored": store.count_events(hub.store.db),
        "rejected_by_reason": store.reject_counts(hub.store.db),
        "since_start": counters,
    }


@router.get("/rejects")
def rejects(
    limit: int = Query(100, ge=1, le=1000), p: Principal = Depends(require("bridge.read")),
    hub: Hub = Depends(get_hub),
) -> list[dict]:
    return list(hub.store.db.query("SELECT * FROM ingest_rejects ORDER BY id DESC LIMIT ?", [limit]))
