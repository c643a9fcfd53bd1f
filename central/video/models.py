"""Answer models of /api/v1/video (issue 16: the OpenAPI document says what each route returns). The input
models stay beside their routes in routes.py. Keys and types follow central/video/service.py (the dicts it
builds) and store.py (the columns it selects); times are ISO-8601 UTC strings as stored."""

from __future__ import annotations

from typing import Any, Literal

from central.schema import Out

# central.video.service.STATUSES
CaseStatus = Literal["new", "reviewed", "dispatched", "acknowledged", "resolved", "dismissed"]
Verdict = Literal["confirmed", "false_positive"]


# ---- answers ---------------------------------------------------------------------------------------------
class CaseOut(Out):
    """One case (an incident across events and adjacent cameras) with its workflow state and SLA."""

    id: int
    site: str
    device: str
    camera: str | None
    zone: str | None
    kind: str
    org: str
    status: CaseStatus
    verdict: Verdict | None
    reason: str | None
    score: float
    peak_count: int | None
    first_ts: str
    last_ts: str
    live: bool
    event_count: int
    cameras: list[str]  # "device/camera" keys that saw the incident
    lat: float | None
    lon: float | None
    department: str | None
    route_id: int | None
    due_at: str | None  # the SLA deadline of the current step
    created_at: str
    updated_at: str
    reviewed_at: str | None
    dispatched_at: str | None
    acknowledged_at: str | None
    resolved_at: str | None
    overdue: bool
    has_snapshot: bool
    snapshot_url: str | None


class CaseEventOut(Out):
    """One edge event correlated into a case."""

    event_id: str
    device: str
    camera: str | None
    incident_id: str | None
    phase: Literal["start", "update", "end", "instant"]
    ts: str
    score: float | None
    count: int | None


class CaseLogOut(Out):
    """One entry of a case's history (created, reviewed, dispatched, ...)."""

    ts: str
    actor: str
    action: str
    detail: dict[str, Any]  # what the step recorded (verdict, department, channels, ...)


class CaseAlertOut(Out):
    """One alert sent for a case: an MQTT publish, or a webhook delivery in the hub's outbox (only those
    carry `msg_id` and `delivery_id`, the handle for a replay)."""

    id: int
    channel: Literal["mqtt", "webhook"]
    target: str
    status: Literal["pending", "sent", "failed"]
    attempts: int
    error: str | None
    sent_at: str | None
    msg_id: str | None = None
    delivery_id: int | None = None


class CaseDetailOut(CaseOut):
    """A case with its events, history and alerts."""

    events: list[CaseEventOut]
    history: list[CaseLogOut]
    alerts: list[CaseAlertOut]


class CasePageOut(Out):
    """A page of cases, newest last event first, and how many match in all."""

    total: int
    items: list[CaseOut]


class StatsOut(Out):
    """Case counts in the caller's scope, grouped several ways."""

    total: int
    by_kind: dict[str, int]
    by_area: dict[str, int]  # by org path
    by_status: dict[str, int]
    by_hour: dict[str, int]  # UTC hour buckets "YYYY-MM-DDTHH"
    by_hour_of_day: dict[str, int]  # "0".."23"
    false_positive_rate: float | None  # None until a case has a verdict


class HeatCellOut(Out):
    """One grid cell of the heat map: its index "row:col", centre and case count."""

    cell: str
    lat: float
    lon: float
    count: int


class HeatmapOut(Out):
    """Cases with a position, counted per cell of `cell_deg` degrees, busiest first."""

    cell_deg: float
    cells: list[HeatCellOut]


class FeedbackReasonOut(Out):
    """Why a reviewer called a case a false positive."""

    case_id: int
    reason: str
    ts: str


class FeedbackOut(Out):
    """Review verdicts counted per camera and rule (kind, zone), for tuning that camera's detector."""

    site: str
    device: str
    camera: str  # "-" when the event named none
    kind: str
    zone: str  # "-" when the event named none
    confirmed: int
    false_positive: int
    reasons: list[FeedbackReasonOut]  # the last 20
    updated_at: str
    precision: float | None  # None before the first verdict


class SiteOut(Out):
    """A site and the org its cases belong to."""

    site: str
    org_path: str


class CameraOut(Out):
    """A camera's position and the cameras adjacent to it (for correlation)."""

    site: str
    device: str
    camera: str
    lat: float | None
    lon: float | None
    neighbours: list[str]  # "device/camera"


class RouteOut(Out):
    """A routing rule: where cases of an org subtree and kind are dispatched (never its webhook secret)."""

    id: int
    org_prefix: str
    kind: str  # "*" = any kind
    department: str
    webhook_url: str | None
    mqtt: bool
    ack_sla_min: float
    resolve_sla_min: float
    created_at: str
