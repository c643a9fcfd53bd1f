"""/api/v1/webhooks: endpoints and deliveries in the caller's scope, replay (one delivery, or every dead one
of an endpoint) and secret rotation. Thin: parse, authorize, call."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from central.deps import get_hub
from central.hub import Hub
from central.iam.deps import Principal, require
from central.webhooks.models import DeliveryOut, EndpointOut, ReplayDeadOut, RotatedSecretOut
from central.webhooks.service import WebhooksError, WebhooksService, service_of

router = APIRouter()

ENDPOINT = r"^[A-Za-z0-9_.:-]{1,128}$"


def svc(hub: Hub = Depends(get_hub)) -> WebhooksService:
    return service_of(hub)


def org_of_delivery(delivery_id: int, s: WebhooksService = Depends(svc)) -> str | None:
    return s.delivery_org(delivery_id)


def org_of_endpoint(endpoint_id: str, s: WebhooksService = Depends(svc)) -> str | None:
    return s.endpoint_org(endpoint_id)


def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except WebhooksError as e:
        raise HTTPException(e.status, {"field": e.field, "detail": e.detail}) from None


@router.get("/endpoints", response_model=list[EndpointOut])
def list_endpoints(p: Principal = Depends(require("webhooks.read")),
                   s: WebhooksService = Depends(svc)) -> list[dict[str, Any]]:
    return s.endpoints(p.scopes("webhooks.read"))  # never a secret


@router.get("/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    endpoint_id: str | None = Query(default=None, pattern=ENDPOINT),
    status: Literal["pending", "delivering", "delivered", "dead"] | None = None,
    before: int | None = Query(default=None, ge=1),
    limit: int = Query(default=100, ge=1, le=1000),
    p: Principal = Depends(require("webhooks.read")), s: WebhooksService = Depends(svc),
) -> list[dict[str, Any]]:
    return _call(s.deliveries, p.scopes("webhooks.read"), endpoint_id, status, None, before, limit)


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut)
def get_delivery(delivery_id: int, p: Principal = Depends(require("webhooks.read", org_of=org_of_delivery)),
                 s: WebhooksService = Depends(svc)) -> dict[str, Any]:
    return _call(s.delivery, delivery_id)


@router.post("/deliveries/{delivery_id}/replay", response_model=DeliveryOut)
def replay(delivery_id: int, p: Principal = Depends(require("webhooks.manage", org_of=org_of_delivery)),
           s: WebhooksService = Depends(svc)) -> dict[str, Any]:
    return _call(s.replay, p.name, delivery_id)


@router.post("/endpoints/{endpoint_id}/replay-dead", response_model=ReplayDeadOut)
def replay_dead(endpoint_id: str, p: Principal = Depends(require("webhooks.manage", org_of=org_of_endpoint)),
                s: WebhooksService = Depends(svc)) -> dict[str, Any]:
    return _call(s.replay_dead, p.name, endpoint_id)


@router.post("/endpoints/{endpoint_id}/rotate-secret", response_model=RotatedSecretOut)
def rotate_secret(endpoint_id: str, p: Principal = Depends(require("webhooks.manage", org_of=org_of_endpoint)),
                  s: WebhooksService = Depends(svc)) -> dict[str, Any]:
    return _call(s.rotate, p.name, endpoint_id)
