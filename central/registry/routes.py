"""HTTP surface of the registry (thin: parse, authorize, call the service)."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from central.deps import get_hub
from central.feeds import routes as feed_http
from central.hub import Hub
from central.iam.deps import Principal, require
from central.registry import feed as registry_feed
from central.registry import service as svc
from central.registry import store
from central.registry.ids import IdError, normalize_id
from central.registry.importer import HeaderError, reader_for
from central.registry.models import (
    AliasIn,
    AliasOut,
    Decision,
    EntityAliasesOut,
    EntityIn,
    EntityLinksOut,
    EntityOut,
    EntityPatch,
    EntitySearchOut,
    FeedPageOut,
    ImportReportOut,
    LinkCreate,
    LinkedOut,
    LinkOut,
    PushIn,
    UsageApplicationIn,
    UsageApplicationListOut,
    UsageApplicationOut,
    WalkOut,
)

router = APIRouter()


def entity_org(entity_id: str, hub: Hub = Depends(get_hub)) -> str | None:
    """org_of for routes on one entity: a mistyped id is a 400 naming the check character, unknown 404."""
    try:
        eid = normalize_id(entity_id)
    except IdError as e:
        raise HTTPException(400, {"field": "entity_id", "error": str(e)}) from None
    with hub.store.read() as db:
        return store.org_of(db, eid)


def application_org(application_id: int, hub: Hub = Depends(get_hub)) -> str | None:
    with hub.store.read() as db:
        app = store.application(db, application_id)
    return app["owner_org"] if app else None


@router.post("/entities", status_code=201, response_model=EntityOut, response_model_exclude_unset=True)
def register(body: EntityIn, hub: Hub = Depends(get_hub),
             p: Principal = Depends(require("registry.write"))) -> dict[str, Any]:
    return svc.register(hub, p, body)


@router.get("/entities/{entity_id}", response_model=EntityOut, response_model_exclude_unset=True)
def get_entity(entity_id: str, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    # no org_of here: an approved usage application may grant a read outside the caller's scope
    return svc.get_entity(hub, p, entity_id)


@router.patch("/entities/{entity_id}", response_model=EntityOut, response_model_exclude_unset=True)
def update_entity(entity_id: str, body: EntityPatch, hub: Hub = Depends(get_hub),
                  p: Principal = Depends(require("registry.write", org_of=entity_org))) -> dict[str, Any]:
    return svc.update(hub, p, entity_id, body)


class ExternalLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["person", "enterprise", "object", "place"]
    external_key: str = Field(min_length=1, max_length=128)


@router.post("/lookup", response_model=EntityOut, response_model_exclude_unset=True)
def lookup_external(body: ExternalLookup, hub: Hub = Depends(get_hub),
                    p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    """By external key (POST so an ID-card number never lands in a URL or access log)."""
    return svc.lookup_external(hub, p, body.type, body.external_key)


@router.get("/search", response_model=EntitySearchOut, response_model_exclude_unset=True)
def search(q: str | None = Query(None, max_length=200), type: str | None = None, region: str | None = None,
           grid: str | None = None, at: datetime | None = None, org: str | None = None,
           limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
           hub: Hub = Depends(get_hub), p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    items = svc.search(hub, p, q, type=type, region=region, grid=grid, at=at, org=org, limit=limit, offset=offset)
    return {"items": items, "count": len(items)}


@router.get("/entities/{entity_id}/ancestors", response_model=WalkOut, response_model_exclude_unset=True)
def ancestors(entity_id: str, depth: int = 16, limit: int = 1000, hub: Hub = Depends(get_hub),
              p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return svc.ancestors(hub, p, entity_id, depth, limit)


@router.get("/entities/{entity_id}/descendants", response_model=WalkOut, response_model_exclude_unset=True)
def descendants(entity_id: str, depth: int = 16, limit: int = 10000, type: str | None = None,
                hub: Hub = Depends(get_hub), p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return svc.descendants(hub, p, entity_id, depth, limit, type)


@router.get("/entities/{entity_id}/linked", response_model=LinkedOut, response_model_exclude_unset=True)
def linked(entity_id: str, depth: int = 2, limit: int = 10000, hub: Hub = Depends(get_hub),
           p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return svc.linked(hub, p, entity_id, depth, limit)


@router.get("/entities/{entity_id}/links", response_model=EntityLinksOut)
def links_of(entity_id: str, hub: Hub = Depends(get_hub),
             p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return svc.links_of(hub, p, entity_id)


@router.get("/entities/{entity_id}/aliases", response_model=EntityAliasesOut)
def aliases_of(entity_id: str, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return svc.aliases_of(hub, p, entity_id)


@router.post("/links", status_code=201, response_model=LinkOut)
def add_link(body: LinkCreate, hub: Hub = Depends(get_hub),
             p: Principal = Depends(require("registry.write"))) -> dict[str, Any]:
    return svc.add_link(hub, p, body.src, body.rel, body.dst)


@router.delete("/links/{link_id}", response_model=LinkOut)
def remove_link(link_id: int, hub: Hub = Depends(get_hub),
                p: Principal = Depends(require("registry.write"))) -> dict[str, Any]:
    return svc.remove_link(hub, p, link_id)


@router.post("/aliases", status_code=201, response_model=AliasOut)
def set_alias(body: AliasIn, hub: Hub = Depends(get_hub),
              p: Principal = Depends(require("registry.write"))) -> dict[str, Any]:
    return svc.set_alias(hub, p, body)


@router.get("/aliases/{local_id}", response_model=AliasOut)
def resolve_alias(local_id: str, org: str, hub: Hub = Depends(get_hub),
                  p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return svc.resolve_alias(hub, p, org, local_id)


@router.post("/import", response_model=ImportReportOut, response_model_exclude_unset=True)
async def bulk_import(request: Request, format: Literal["csv", "jsonl"] = "csv", org: str | None = None,
                      hub: Hub = Depends(get_hub),
                      p: Principal = Depends(require("registry.write"))) -> dict[str, Any]:
    """Body: the CSV or JSONL file itself. Valid rows land; the others come back as per-row errors."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(400, {"field": "body", "error": "file must be UTF-8"}) from None
    if org is not None and not p.allowed("registry.write", org):
        raise svc._deny(hub, p, "registry.write", org, None, "org")
    try:
        rows = list(reader_for("", format)(io.StringIO(text, newline="")))
    except HeaderError as e:
        raise HTTPException(400, {"field": "header", "error": str(e)}) from None
    # sync service work off the event loop
    from starlette.concurrency import run_in_threadpool

    report = await run_in_threadpool(svc.import_rows, hub, p, rows, org=org)
    return report.to_dict(with_ids=len(rows) <= 10000)


@router.post("/push", response_model=ImportReportOut)
def push(body: PushIn, hub: Hub = Depends(get_hub),
         p: Principal = Depends(require("registry.write"))) -> dict[str, Any]:
    """Real-time automatic registration by business systems (API key); idempotent on external_key."""
    return svc.push(hub, p, body).to_dict()


@router.get("/feed/page", response_model=FeedPageOut)  # the JSON page from before the shared feed shape (GET /feed)
def feed(after: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000), hub: Hub = Depends(get_hub),
         p: Principal = Depends(require("registry.feed.read"))) -> dict[str, Any]:
    items, nxt = svc.read_feed(hub, p, after, limit)
    return {"items": items, "next": nxt}


@router.get("/feed.jsonl", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}})
def feed_jsonl(after: int = Query(0, ge=0), hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("registry.feed.read"))) -> StreamingResponse:
    return StreamingResponse(svc.export_feed(hub, p, after), media_type="application/x-ndjson")


@router.post("/applications", status_code=201, response_model=UsageApplicationOut)
def apply(body: UsageApplicationIn, hub: Hub = Depends(get_hub),
          p: Principal = Depends(require("registry.apply"))) -> dict[str, Any]:
    return svc.apply(hub, p, body)


@router.get("/applications", response_model=UsageApplicationListOut)
def applications(status: Literal["pending", "approved", "rejected"] | None = None, hub: Hub = Depends(get_hub),
                 p: Principal = Depends(require("registry.read"))) -> dict[str, Any]:
    return {"items": svc.list_applications(hub, p, status)}


@router.post("/applications/{application_id}/approve", response_model=UsageApplicationOut)
def approve(application_id: int, body: Decision = Body(default_factory=Decision), hub: Hub = Depends(get_hub),
            p: Principal = Depends(require("registry.approve", org_of=application_org))) -> dict[str, Any]:
    return svc.decide(hub, p, application_id, True, body.reason)


@router.post("/applications/{application_id}/reject", response_model=UsageApplicationOut)
def reject(application_id: int, body: Decision = Body(default_factory=Decision), hub: Hub = Depends(get_hub),
           p: Principal = Depends(require("registry.approve", org_of=application_org))) -> dict[str, Any]:
    return svc.decide(hub, p, application_id, False, body.reason)


# ---- the change feed in the shared shape (docs/FEEDS.md) ----------------------------------------------
@router.get("/feed", response_class=Response, responses={200: {"content": {"application/x-ndjson": {}}}})
def feed_lines(after: str | None = feed_http.AFTER, limit: int = feed_http.LIMIT, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("registry.feed.read"))) -> Response:
    """Registry changes (entity, link, alias; codes issuance) as JSON Lines after the cursor `after`."""
    return feed_http.feed_response(hub, p, registry_feed.SOURCE, after, limit)
