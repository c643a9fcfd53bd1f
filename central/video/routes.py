"""/api/v1/video: cases (list, detail, snapshot), workflow steps, statistics, heat map, feedback, and the
admin settings (site->org, camera position/adjacency, routing rules). Thin: parse, authorize, call."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from central.deps import get_hub
from central.feeds import routes as feed_http
from central.hub import Hub
from central.iam.deps import Principal, require
from central.video import feed as video_feed
from central.video.models import (
    CameraOut,
    CaseDetailOut,
    CaseOut,
    CasePageOut,
    FeedbackOut,
    HeatmapOut,
    RouteOut,
    SiteOut,
    StatsOut,
)
from central.video.service import VideoError, VideoService, service_of

router = APIRouter()

ORG = r"^/[A-Za-z0-9_/-]*$"
ID = r"^[A-Za-z0-9_-]{1,64}$"


def svc(hub: Hub = Depends(get_hub)) -> VideoService:
    return service_of(hub)


def org_of_case(case_id: int, s: VideoService = Depends(svc)) -> str | None:
    return s.case_org(case_id)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReviewIn(_Body):
    verdict: Literal["confirmed", "false_positive"]
    reason: str = Field(default="", max_length=500)


class DispatchIn(_Body):
    department: str | None = Field(default=None, pattern=ID)


class ResolveIn(_Body):
    note: str = Field(default="", max_length=2000)


class SiteIn(_Body):
    org_path: str = Field(pattern=ORG, max_length=256)


class CameraIn(_Body):
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    neighbours: list[str] = Field(default_factory=list, max_length=64)


class RouteIn(_Body):
    org_prefix: str = Field(pattern=ORG, max_length=256)
    kind: str = Field(default="*", pattern=r"^(\*|[a-z][a-z0-9_]{0,31})$")
    department: str = Field(pattern=ID)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://", max_length=1000)
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=256)
    mqtt: bool = True
    ack_sla_min: float = Field(default=15.0, gt=0, le=60 * 24 * 30)
    resolve_sla_min: float = Field(default=240.0, gt=0, le=60 * 24 * 90)


# --- cases -------------------------------------------------------------------------------------------
@router.get("/cases", response_model=CasePageOut)
def list_cases(
    status: str | None = None, kind: str | None = Query(default=None, pattern=r"^[a-z][a-z0-9_]{0,31}$"),
    site: str | None = Query(default=None, pattern=ID), overdue: bool | None = None, since: datetime | None = None,
    limit: int = Query(default=50, ge=1, le=500), offset: int = Query(default=0, ge=0),
    p: Principal = Depends(require("video.read")), s: VideoService = Depends(svc),
) -> dict[str, Any]:
    return s.list_cases(p.scopes("video.read"), status, kind, site, overdue, since, limit, offset)


@router.get("/cases/{case_id}", response_model=CaseDetailOut)
def get_case(case_id: int, p: Principal = Depends(require("video.read", org_of=org_of_case)),
             s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.case_detail(case_id)


@router.get("/cases/{case_id}/snapshot", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def get_snapshot(case_id: int, p: Principal = Depends(require("video.read", org_of=org_of_case)),
                 s: VideoService = Depends(svc)) -> Response:
    return Response(s.snapshot(case_id), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=60"})


@router.post("/cases/{case_id}/review", response_model=CaseOut)
def review(case_id: int, body: ReviewIn, p: Principal = Depends(require("video.dispose", org_of=org_of_case)),
           s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.review(case_id, body.verdict, body.reason, p.name)


@router.post("/cases/{case_id}/dispatch", response_model=CaseOut)
def dispatch(case_id: int, body: DispatchIn, p: Principal = Depends(require("video.dispose", org_of=org_of_case)),
             s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.dispatch(case_id, p.name, body.department)


@router.post("/cases/{case_id}/acknowledge", response_model=CaseOut)
def acknowledge(case_id: int, p: Principal = Depends(require("video.dispose", org_of=org_of_case)),
                s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.acknowledge(case_id, p.name)


@router.post("/cases/{case_id}/resolve", response_model=CaseOut)
def resolve(case_id: int, body: ResolveIn, p: Principal = Depends(require("video.dispose", org_of=org_of_case)),
            s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.resolve(case_id, p.name, body.note)


# --- analysis ----------------------------------------------------------------------------------------
@router.get("/stats", response_model=StatsOut)
def stats(since: datetime | None = None, until: datetime | None = None,
          p: Principal = Depends(require("video.read")), s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.stats(p.scopes("video.read"), since, until)


@router.get("/heatmap", response_model=HeatmapOut)
def heatmap(cell_deg: float = Query(default=0.01, ge=0.0001, le=10),
            kind: str | None = Query(default=None, pattern=r"^[a-z][a-z0-9_]{0,31}$"), since: datetime | None = None,
            p: Principal = Depends(require("video.read")), s: VideoService = Depends(svc)) -> dict[str, Any]:
    return s.heatmap(p.scopes("video.read"), cell_deg, kind, since)


@router.get("/feedback", response_model=list[FeedbackOut])
def feedback(p: Principal = Depends(require("video.read")), s: VideoService = Depends(svc)) -> list[dict[str, Any]]:
    return s.feedback(p.scopes("video.read"))


# --- admin -------------------------------------------------------------------------------------------
def _need_admin(p: Principal, org: str) -> None:
    # Out of the caller's video scope the object does not exist; inside it, say only what is missing.
    if not p.allowed("video.admin", org):
        if not p.allowed("video.read", org):
            raise HTTPException(404, "not found")
        raise HTTPException(403, f"forbidden: {p.name} lacks 'video.admin' here")


@router.put("/sites/{site}", response_model=SiteOut)
def set_site(site: str, body: SiteIn, p: Principal = Depends(require("video.admin")),
             s: VideoService = Depends(svc)) -> dict[str, str]:
    # Both the site's current org and the new one must be inside the caller's scope.
    _need_admin(p, s.site_org(site))
    _need_admin(p, body.org_path)
    return s.set_site(site, body.org_path, p.name)


@router.get("/sites/{site}", response_model=SiteOut)
def get_site(site: str, p: Principal = Depends(require("video.read")), s: VideoService = Depends(svc)
             ) -> dict[str, str]:
    org = s.site_org(site)
    if not p.allowed("video.read", org):  # another scope's site: not found, its org unsaid
        raise HTTPException(404, "not found")
    return {"site": site, "org_path": org}


@router.put("/cameras/{site}/{device}/{camera}", response_model=CameraOut)
def set_camera(site: str, device: str, camera: str, body: CameraIn, p: Principal = Depends(require("video.admin")),
               s: VideoService = Depends(svc)) -> dict[str, Any]:
    _need_admin(p, s.site_org(site))
    return s.set_camera(site, device, camera, body.lat, body.lon, body.neighbours, p.name)


@router.get("/routes", response_model=list[RouteOut])
def list_routes(p: Principal = Depends(require("video.read")), s: VideoService = Depends(svc)) -> list[dict[str, Any]]:
    return s.routes(p.scopes("video.read"))


@router.post("/routes", status_code=201, response_model=RouteOut)
def add_route(body: RouteIn, p: Principal = Depends(require("video.admin")),
              s: VideoService = Depends(svc)) -> dict[str, Any]:
    _need_admin(p, body.org_prefix)
    return s.add_route(body.org_prefix, body.kind, body.department, body.webhook_url, body.webhook_secret,
                       body.mqtt, body.ack_sla_min, body.resolve_sla_min, p.name)


@router.delete("/routes/{route_id}", status_code=204)
def delete_route(route_id: int, p: Principal = Depends(require("video.admin")),
                 s: VideoService = Depends(svc)) -> None:
    try:
        r = s.route(route_id)
    except VideoError:
        raise HTTPException(404, "not found") from None  # the same answer as for another scope's route
    _need_admin(p, r["org_prefix"])
    s.delete_route(route_id, p.name)


# ---- the change feed in the shared shape (docs/FEEDS.md) ----------------------------------------------
@router.get("/feed", response_class=Response, responses={200: {"content": {"application/x-ndjson": {}}}})
def feed_lines(after: str | None = feed_http.AFTER, limit: int = feed_http.LIMIT, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("video.feed.read"))) -> Response:
    """Video case changes (created, reviewed, dispatched, ...) as JSON Lines after the cursor `after`."""
    return feed_http.feed_response(hub, p, video_feed.SOURCE, after, limit)
