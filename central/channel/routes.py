"""/api/v1/channel: channel scenes, access grants (by an authorised terminal's API key or the scene's app key),
revocation, the gateway's peer list and the grant-signing public key. Thin: parse, authorize, call."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from central.channel.models import ChannelSceneOut, GrantOut, IssuedGrantOut, SigningKeyOut
from central.channel.service import ChannelService, service_of
from central.deps import get_hub
from central.hub import Hub
from central.iam.deps import Principal, authenticated, current_principal, public, require

router = APIRouter()


def svc(hub: Hub = Depends(get_hub)) -> ChannelService:
    return service_of(hub)


def org_of_scene(app_id: int, s: ChannelService = Depends(svc)) -> str | None:
    sc = s.scene(app_id)
    return None if sc is None else str(sc["org"])


def org_of_grant(grant_id: str, s: ChannelService = Depends(svc)) -> str | None:
    g = s.grant(grant_id)
    return None if g is None else str(g["org"])


def org_of_application(body: SceneIn, s: ChannelService = Depends(svc)) -> str:
    return str(s.application(body.application_id)["org"])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SceneIn(_In):
    application_id: int = Field(ge=1, description="the approved city-code application (scene) to open a channel for")
    service_name: str = Field(min_length=1, max_length=100)
    service_addr: str = Field(max_length=45, description="the one IP address the channel reaches")
    service_port: int = Field(ge=1, le=65535)
    ttl_s: int = Field(default=900, description="grant lifetime, 60..28800 s")
    gateway_public_key: str = Field(max_length=64, description="the scene gateway's WireGuard public key")
    endpoint: str = Field(pattern=r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$", description="gateway host:port")
    terminals: list[str] = Field(default_factory=list, max_length=200,
                                 description="names of authorised terminal principals, e.g. apikey:gate-1")


class GrantIn(_In):
    text: str = Field(min_length=1, max_length=4096, description="the scanned city code")


class GrantRevokeIn(_In):
    reason: str = Field(min_length=1, max_length=500)


class GrantCaller:
    def __init__(self, principal: Principal | None, app_id: int | None) -> None:
        self.principal, self.app_id = principal, app_id


def grant_caller(request: Request, hub: Hub = Depends(get_hub)) -> GrantCaller:
    """An authorised app (the scene's codes X-App-Key) or a terminal/user holding channel.grant."""
    key = request.headers.get("x-app-key")
    if key:
        from central.codes.service import service_of as codes

        app_id = codes(hub).app_for_key(key.strip())
        if app_id is None:
            raise HTTPException(401, "X-App-Key: invalid or revoked app key")
        return GrantCaller(None, app_id)
    p = current_principal(authenticated(request, hub))
    if not p.has("channel.grant"):
        from central.iam.audit import record

        with hub.store.tx() as db:
            record(db, actor=p.name, action="denied", target=f"{request.method} {request.url.path}",
                   detail={"permission": "channel.grant"})
        raise HTTPException(403, f"forbidden: {p.name} lacks 'channel.grant'")
    return GrantCaller(p, None)


grant_caller.iam_permission = "channel.grant"  # type: ignore[attr-defined]  # for the route-coverage test


@router.get("/key", response_model=SigningKeyOut,
            dependencies=[Depends(public("grant-signing public key: scene services verify grants offline"))])
def signing_key(s: ChannelService = Depends(svc)) -> dict[str, str]:
    return s.signing_key.public.to_dict()


@router.post("/scenes", status_code=201, response_model=ChannelSceneOut)
def mark_scene(body: SceneIn, p: Principal = Depends(require("channel.manage", org_of=org_of_application)),
               s: ChannelService = Depends(svc)) -> dict[str, Any]:
    return s.mark_scene(p.name, body.application_id, body.service_name, body.service_addr, body.service_port,
                        body.ttl_s, body.gateway_public_key, body.endpoint, body.terminals)


@router.get("/scenes", response_model=list[ChannelSceneOut])
def list_scenes(p: Principal = Depends(require("channel.read")), s: ChannelService = Depends(svc)
                ) -> list[dict[str, Any]]:
    return s.scenes(p.scopes("channel.read"))


@router.get("/scenes/{app_id}/peers", response_class=PlainTextResponse)
def gateway_peers(app_id: int, p: Principal = Depends(require("channel.read", org_of=org_of_scene)),
                  s: ChannelService = Depends(svc)) -> PlainTextResponse:
    """The [Peer] sections the scene's WireGuard gateway should hold now (`wg syncconf` input)."""
    return PlainTextResponse(s.gateway_peers(app_id))


@router.post("/grants", status_code=201, response_model=IssuedGrantOut)
def request_grant(body: GrantIn, who: GrantCaller = Depends(grant_caller), s: ChannelService = Depends(svc)
                  ) -> dict[str, Any]:
    """Present a scanned code; a valid code of a channel scene returns a signed token and a WireGuard peer
    config (its private key is shown only here)."""
    return s.request_grant(body.text, principal=who.principal, app_key_app=who.app_id)


@router.get("/grants", response_model=list[GrantOut])
def list_grants(status: Literal["active", "expired", "revoked"] | None = None,
                p: Principal = Depends(require("channel.read")), s: ChannelService = Depends(svc)
                ) -> list[dict[str, Any]]:
    return s.grants(p.scopes("channel.read"), status)


@router.get("/grants/{grant_id}", response_model=GrantOut)
def get_grant(grant_id: str, p: Principal = Depends(require("channel.read", org_of=org_of_grant)),
              s: ChannelService = Depends(svc)) -> dict[str, Any]:
    s.sweep()
    g = s.grant(grant_id)
    if g is None:  # org_of_grant already answered 404 for an unknown id; grants are never deleted
        raise HTTPException(404, "not found")
    return g


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut)
def revoke_grant(grant_id: str, body: GrantRevokeIn,
                 p: Principal = Depends(require("channel.revoke", org_of=org_of_grant)),
                 s: ChannelService = Depends(svc)) -> dict[str, Any]:
    return s.revoke(p.name, grant_id, body.reason)
