"""Devices API: list/status, provisioning, commands. Thin: parse, authorize, call the service."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from central.deps import get_hub
from central.devices.models import CommandOut, DeviceEventOut, DeviceOut, ProvisionedOut
from central.devices.service import DeviceService
from central.hub import Hub
from central.iam.deps import Principal, require
from central.problems import NotFound

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
