"""Devices API: list/status, provisioning, commands. Thin: parse, authorize, call the service."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from central.deps import get_hub
from central.devices.models import (
    BrokerAuthnOut,
    BrokerAuthzOut,
    CommandOut,
    DeviceEventOut,
    DeviceOut,
    ProvisionedOut,
)
from central.devices.service import DeviceService
from central.hub import Hub
from central.iam.deps import Principal, public, require
from central.problems import HubError, NotFound
from central.schema import inline_schema

router = APIRouter()


def svc(hub: Hub = Depends(get_hub)) -> DeviceService:
    return hub.services["devices"]


def device_org(site: str, device: str, service: DeviceService = Depends(svc)) -> str | None:
    # None: require() answers 404 "not found", the same as for a device outside the caller's scope.
    d = service.get(f"{site}/{device}")
    return None if d is None else d["org_path"]


class ProvisionIn(BaseModel):
    site: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kind: Literal["camera", "scanner"]
    name: str = Field(min_length=1, max_length=128)
    device: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    org_path: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_/-]*$",
                                 description="the device's org; default: the site's org (/city for a new site)")


class CommandIn(BaseModel):
    action: Literal["config", "snapshot", "restart", "ping"]
    args: dict[str, Any] = Field(default_factory=dict)


@router.get("", response_model=list[DeviceOut])
def list_devices(p: Principal = Depends(require("devices.read")),
                 service: DeviceService = Depends(svc)) -> list[dict[str, Any]]:
    return service.list(p.scopes("devices.read"))


@router.get("/{site}/{device}", response_model=DeviceOut)
def get_device(
    site: str, device: str, p: Principal = Depends(require("devices.read", org_of=device_org)),
    service: DeviceService = Depends(svc),
) -> dict[str, Any]:
    d = service.get(f"{site}/{device}")
    if d is None:  # device_org found it a moment ago
        raise NotFound("device: not found", field="device")
    return d


@router.get("/{site}/{device}/events", response_model=list[DeviceEventOut])
def device_events(
    site: str, device: str, limit: int = Query(50, ge=1, le=1000),
    p: Principal = Depends(require("devices.read", org_of=device_org)), service: DeviceService = Depends(svc),
) -> list[dict[str, Any]]:
    """The device's most recent events as stored by the bridge (each event_id once)."""
    return service.events(f"{site}/{device}", limit)


# exclude_unset: mqtt.ca_file (TLS only) and the scanner section (scanners only) stay absent, not null
@router.post("", status_code=201, response_model=ProvisionedOut, response_model_exclude_unset=True)
def provision(
    body: ProvisionIn, p: Principal = Depends(require("devices.write")), service: DeviceService = Depends(svc),
) -> dict[str, Any]:
    """Returns the device and its ready config (the broker password appears only here, once). A site
    belongs to the org that first provisioned on it: only admins over that org add devices there."""
    row, cfg = service.provision(body.site, body.kind, body.name, body.device, body.org_path, actor=p)
    return {"device": service.get(row["id"]), "config": cfg}


@router.post("/{site}/{device}/commands", status_code=202, response_model=CommandOut)
def command(
    site: str, device: str, body: CommandIn,
    p: Principal = Depends(require("devices.write", org_of=device_org)), service: DeviceService = Depends(svc),
) -> dict[str, Any]:
    return service.send_command(f"{site}/{device}", body.action, body.args, actor=p.name)


# EMQX 5's HTTP authentication and authorization hooks (docker/emqx/emqx.conf sends these bodies, built from
# its placeholders ${username} ${password} ${clientid} ${peerhost} ${topic} ${action}). Called by the broker,
# not by people: the shared secret `mqtt.hook_secret` is the credential. Any answer but 200 counts as
# "ignore" in EMQX, and with the hub as the only source that refuses the client (authn: the chain ends
# without an allow; authz: no_match = deny), so a wrong secret or body fails closed.

class BrokerAuthnIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a city may template more placeholders than these
    username: str = Field(max_length=256)
    password: str = Field(max_length=1024)
    clientid: str | None = Field(default=None, max_length=256)
    peerhost: str | None = Field(default=None, max_length=64)


class BrokerAuthzIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str = Field(max_length=256)
    topic: str = Field(min_length=1, max_length=65535)
    action: Literal["publish", "subscribe"]
    clientid: str | None = Field(default=None, max_length=256)
    peerhost: str | None = Field(default=None, max_length=64)


def _hook_body(model: type[BaseModel], raw: bytes) -> Any:
    """The broker's JSON body as `model`; a bad one is a 400 naming the first failing field."""
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        raise HubError(f"{loc}: {err['msg']}", status=400, field=loc) from None


def _hook_secret(hub: Hub, authorization: str | None) -> DeviceService:
    service: DeviceService = hub.services["devices"]
    given = authorization.removeprefix("Bearer ") if authorization and authorization.startswith("Bearer ") else None
    if not service.hooks.secret_ok(given):
        raise HubError("authorization: the broker hook secret (mqtt.hook_secret) is missing or wrong", status=401,
                       field="authorization", headers={"WWW-Authenticate": "Bearer"})
    return service


@router.post("/mqtt/authn", response_model=BrokerAuthnOut,
             dependencies=[Depends(public("EMQX's HTTP authentication hook; the broker's shared secret"))],
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": inline_schema(BrokerAuthnIn)}}}})
async def broker_authn(request: Request, authorization: str | None = Header(default=None),
                      hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """May this CONNECT in? The hub's own MQTT user by `mqtt.password`; a provisioned device by its stored
    password hash, unless revoked; anyone else is denied."""
    service = _hook_secret(hub, authorization)
    body: BrokerAuthnIn = _hook_body(BrokerAuthnIn, await request.body())
    result, superuser = await run_in_threadpool(service.hooks.authenticate, body.username, body.password)
    return {"result": result, "is_superuser": superuser}


@router.post("/mqtt/authz", response_model=BrokerAuthzOut,
             dependencies=[Depends(public("EMQX's HTTP authorization hook; the broker's shared secret"))],
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": inline_schema(BrokerAuthzIn)}}}})
async def broker_authz(request: Request, authorization: str | None = Header(default=None),
                      hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """May this client publish to / subscribe to `topic`? The rules mosquitto's ACL file is written from."""
    service = _hook_secret(hub, authorization)
    body: BrokerAuthzIn = _hook_body(BrokerAuthzIn, await request.body())
    return {"result": await run_in_threadpool(service.hooks.authorize, body.username, body.action, body.topic)}
