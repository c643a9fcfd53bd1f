"""HTTP surface of iam under /api/v1/iam, plus `install()` for the hub-wide security middleware."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ConfigDict, Field

from central import errors
from central.deps import get_hub
from central.hub import Hub
from central.iam.audit import record, verify
from central.iam.deps import Principal, authenticated, public, require
from central.iam.middleware import BodyLimit, SecurityHeaders
from central.iam.models import (
    ApiKeyCreatedOut,
    ApiKeyOut,
    AuditRowOut,
    AuditVerifyOut,
    BindingOut,
    MeOut,
    OrgOut,
    RevokedOut,
    RoleOut,
    SessionOut,
    UserOut,
)
from central.iam.pii import present
from central.iam.service import Forbidden, IamError, IamService, NotFound, service_of
from central.iam.store import audit_page
from central.problems import HubError
from central.schema import Ok

router = APIRouter()


def svc(hub: Hub = Depends(get_hub)) -> IamService:
    return service_of(hub)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LoginIn(_In):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class ChangePasswordIn(_In):
    old_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


class OrgIn(_In):
    parent: str = Field(min_length=2, max_length=512, description="parent org path, e.g. /city")
    slug: str = Field(min_length=1, max_length=63, description="last path segment, e.g. district-a")
    name: str = Field(min_length=1, max_length=128)


class OrgPatch(_In):
    name: str = Field(min_length=1, max_length=128)


class UserIn(_In):
    username: str = Field(min_length=2, max_length=64)
    password: str = Field(min_length=1, max_length=256, description="initial password; must be changed at first login")
    org: str = Field(min_length=2, max_length=512)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9 -]{5,20}$")
    id_card: str | None = Field(default=None, pattern=r"^[0-9]{17}[0-9Xx]$")


class ResetIn(_In):
    password: str = Field(min_length=1, max_length=256)


class RoleIn(_In):
    name: str = Field(min_length=2, max_length=64)
    description: str = Field(default="", max_length=256)
    patterns: list[str] = Field(min_length=1, max_length=200)
    scope: str | None = Field(default=None, min_length=2, max_length=512,
                              description="org path the role applies in (default: your one role-writing scope)")


class BindingIn(_In):
    username: str = Field(min_length=2, max_length=64)
    role: str = Field(min_length=2, max_length=64)
    org: str = Field(min_length=2, max_length=512)
    expires_at: datetime | None = None


class ApiKeyIn(_In):
    name: str = Field(min_length=1, max_length=64)
    role: str = Field(min_length=2, max_length=64)
    org: str = Field(min_length=2, max_length=512)
    expires_at: datetime | None = None


def _ts(d: datetime | None) -> float | None:
    return None if d is None else d.timestamp()


# --- org_of dependencies: the org path of the resource named in the URL -----------------------
def org_from_path(path: str) -> str:
    return "/" + path.strip("/")


def org_of_user(username: str, s: IamService = Depends(svc)) -> str | None:
    u = s.user(username)
    return None if u is None else u["org"]


def org_of_binding(binding_id: int, s: IamService = Depends(svc)) -> str | None:
    b = s.binding(binding_id)
    return None if b is None else b["org"]


def org_of_key(key_id: int, s: IamService = Depends(svc)) -> str | None:
    return s.apikey_org(key_id)


# --- session ------------------------------------------------------------------------------
@router.post("/login", response_model=SessionOut, dependencies=[Depends(public("the way in"))])
def login(body: LoginIn, request: Request, s: IamService = Depends(svc)) -> dict[str, Any]:
    client = request.client.host if request.client else ""
    return s.login(body.username, body.password, client)


@router.post("/logout", response_model=Ok)
def logout(p: Principal = Depends(authenticated), s: IamService = Depends(svc)) -> dict[str, bool]:
    s.logout(p)
    return {"ok": True}


@router.post("/change-password", response_model=Ok)
def change_password(body: ChangePasswordIn, p: Principal = Depends(authenticated),
                    s: IamService = Depends(svc)) -> dict[str, bool]:
    s.change_password(p, body.old_password, body.new_password)
    return {"ok": True}


@router.get("/me", response_model=MeOut)
def me(p: Principal = Depends(authenticated), s: IamService = Depends(svc)) -> dict[str, Any]:
    return s.me(p)


@router.get("/permissions", response_model=dict[str, str])
def permissions(p: Principal = Depends(require("iam.roles.read")), s: IamService = Depends(svc)) -> dict[str, str]:
    return s.universe()


# --- orgs ---------------------------------------------------------------------------------
@router.get("/orgs", response_model=list[OrgOut])
def list_orgs(p: Principal = Depends(require("iam.orgs.read")), s: IamService = Depends(svc)) -> list[dict[str, Any]]:
    return s.list_orgs(p)


@router.post("/orgs", status_code=201, response_model=OrgOut)
def create_org(body: OrgIn, p: Principal = Depends(require("iam.orgs.write")),
               s: IamService = Depends(svc)) -> dict[str, Any]:
    return s.create_org(p, body.parent, body.slug, body.name)


@router.get("/orgs/{path:path}", response_model=OrgOut)
def get_org(path: str, p: Principal = Depends(require("iam.orgs.read", org_of=org_from_path)),
            s: IamService = Depends(svc)) -> dict[str, Any]:
    org = s.org(org_from_path(path))
    if org is None:
        raise NotFound(f"org /{path} not found")
    return org


@router.patch("/orgs/{path:path}", response_model=OrgOut)
def rename_org(path: str, body: OrgPatch, p: Principal = Depends(require("iam.orgs.write", org_of=org_from_path)),
               s: IamService = Depends(svc)) -> dict[str, Any]:
    return s.rename_org(p, org_from_path(path), body.name)


@router.delete("/orgs/{path:path}", response_model=Ok)
def delete_org(path: str, p: Principal = Depends(require("iam.orgs.write", org_of=org_from_path)),
               s: IamService = Depends(svc)) -> dict[str, bool]:
    s.delete_org(p, org_from_path(path))
    return {"ok": True}


# --- users --------------------------------------------------------------------------------
def _user_view(hub: Hub, p: Principal, u: dict[str, Any], unmask: bool) -> dict[str, Any]:
    return {
        "id": u["id"], "username": u["username"], "org": u["org"], "must_change_password": bool(u["must_change"]),
        "disabled": bool(u["disabled"]), "locked_until": u["locked_until"], "created_at": u["created_at"],
        # Masked unless asked for and allowed (pii.read over the user's org); each unmasked read is audited.
        "phone": present(hub, p, u["org"], "phone", u["phone_enc"], target=f"user:{u['username']}", unmask=unmask),
        "id_card": present(hub, p, u["org"], "id_card", u["id_card_enc"], target=f"user:{u['username']}",
                           unmask=unmask),
    }


@router.get("/users", response_model=list[UserOut])
def list_users(phone: str | None = Query(default=None, max_length=32), unmask: bool = False,
               p: Principal = Depends(require("iam.users.read")), s: IamService = Depends(svc),
               hub: Hub = Depends(get_hub)) -> list[dict[str, Any]]:
    return [_user_view(hub, p, u, unmask) for u in s.list_users(p, phone=phone)]


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserIn, p: Principal = Depends(require("iam.users.write")), s: IamService = Depends(svc),
                hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    s.create_user(p, body.username, body.password, body.org, phone=body.phone, id_card=body.id_card)
    return _user_view(hub, p, s.user(body.username), unmask=False)  # type: ignore[arg-type]


@router.get("/users/{username}", response_model=UserOut)
def get_user(username: str, unmask: bool = False,
             p: Principal = Depends(require("iam.users.read", org_of=org_of_user)), s: IamService = Depends(svc),
             hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    return _user_view(hub, p, s.user(username), unmask)  # type: ignore[arg-type]


@router.post("/users/{username}/disable", response_model=Ok)
def disable_user(username: str, p: Principal = Depends(require("iam.users.write", org_of=org_of_user)),
                 s: IamService = Depends(svc)) -> dict[str, bool]:
    s.set_disabled(p, username, True)
    return {"ok": True}


@router.post("/users/{username}/enable", response_model=Ok)
def enable_user(username: str, p: Principal = Depends(require("iam.users.write", org_of=org_of_user)),
                s: IamService = Depends(svc)) -> dict[str, bool]:
    s.set_disabled(p, username, False)
    return {"ok": True}


@router.post("/users/{username}/reset-password", response_model=Ok)
def reset_password(username: str, body: ResetIn,
                   p: Principal = Depends(require("iam.users.write", org_of=org_of_user)),
                   s: IamService = Depends(svc)) -> dict[str, bool]:
    s.reset_password(p, username, body.password)
    return {"ok": True}


@router.post("/users/{username}/unlock", response_model=Ok)
def unlock_user(username: str, p: Principal = Depends(require("iam.users.write", org_of=org_of_user)),
                s: IamService = Depends(svc)) -> dict[str, bool]:
    """End a lockout after failed logins (the same rule as reset: only over accounts you dominate)."""
    s.unlock(p, username)
    return {"ok": True}


# --- roles --------------------------------------------------------------------------------
@router.get("/roles", response_model=list[RoleOut])
def list_roles(p: Principal = Depends(require("iam.roles.read")), s: IamService = Depends(svc)) -> list[dict[str, Any]]:
    return s.list_roles(p)


@router.post("/roles", status_code=201, response_model=RoleOut)
def create_role(body: RoleIn, p: Principal = Depends(require("iam.roles.write")),
                s: IamService = Depends(svc)) -> dict[str, Any]:
    return s.create_role(p, body.name, body.description, body.patterns, body.scope)


# --- bindings (delegation) ----------------------------------------------------------------
@router.get("/bindings", response_model=list[BindingOut])
def list_bindings(include_inactive: bool = False, p: Principal = Depends(require("iam.bindings.read")),
                  s: IamService = Depends(svc)) -> list[dict[str, Any]]:
    return s.list_bindings(p, include_inactive)


@router.post("/bindings", status_code=201, response_model=BindingOut)
def grant(body: BindingIn, p: Principal = Depends(require("iam.bindings.write")),
          s: IamService = Depends(svc)) -> dict[str, Any]:
    return s.grant(p, body.username, body.role, body.org, _ts(body.expires_at))


@router.delete("/bindings/{binding_id}", response_model=RevokedOut)
def revoke(binding_id: int, p: Principal = Depends(require("iam.bindings.write", org_of=org_of_binding)),
           s: IamService = Depends(svc)) -> dict[str, Any]:
    return {"revoked": s.revoke(p, binding_id)}


# --- API keys -----------------------------------------------------------------------------
@router.get("/apikeys", response_model=list[ApiKeyOut])
def list_apikeys(p: Principal = Depends(require("iam.apikeys.read")), s: IamService = Depends(svc)
                 ) -> list[dict[str, Any]]:
    return s.list_apikeys(p)


@router.post("/apikeys", status_code=201, response_model=ApiKeyCreatedOut)
def create_apikey(body: ApiKeyIn, p: Principal = Depends(require("iam.apikeys.write")),
                  s: IamService = Depends(svc)) -> dict[str, Any]:
    return s.create_apikey(p, body.name, body.role, body.org, _ts(body.expires_at))


@router.delete("/apikeys/{key_id}", response_model=Ok)
def revoke_apikey(key_id: int, p: Principal = Depends(require("iam.apikeys.write", org_of=org_of_key)),
                  s: IamService = Depends(svc)) -> dict[str, bool]:
    s.revoke_apikey(p, key_id)
    return {"ok": True}


# --- audit --------------------------------------------------------------------------------
@router.get("/audit", response_model=list[AuditRowOut])
def audit(after: int = Query(default=0, ge=0), limit: int = Query(default=100, ge=1, le=1000),
          org: str | None = Query(default=None, max_length=512),
          p: Principal = Depends(require("audit.read")), hub: Hub = Depends(get_hub)) -> list[dict[str, Any]]:
    """Rows after `seq`, those whose org lies in the caller's audit scope (org-less rows: city scope only)."""
    if org is not None and not p.allowed("audit.read", org):
        raise Forbidden("forbidden: no 'audit.read' there", "org")
    out: list[dict[str, Any]] = []
    while True:  # pages of rows until `limit` visible ones (the scope filter is the principal's, in Python)
        with hub.store.read() as db:
            page = audit_page(db, after)
        for r in page:
            if org is not None and not (r["org"] and (r["org"] == org or r["org"].startswith(org + "/"))):
                continue
            if p.visible("audit.read", r["org"]):
                out.append(r)
                if len(out) >= limit:
                    return out
        if not page:
            return out
        after = page[-1]["seq"]


@router.get("/audit/verify", response_model=AuditVerifyOut)
def audit_verify(p: Principal = Depends(require("audit.read")), hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    with hub.store.read() as db:
        return verify(db).to_dict()


# --- hub-wide security baseline -----------------------------------------------------------
def install(app: FastAPI, hub: Hub) -> None:
    """Called by central.app.create_app: denial audit, body limit, CORS (off unless configured), headers."""

    def audit_denial(request: Request, exc: HubError) -> None:
        # refusals on scope are audited; central.errors answers them like every other error
        if isinstance(exc, IamError) and (exc.status == 403 or exc.denied):
            p = getattr(request.state, "principal", None)
            with hub.store.tx() as db:
                record(db, actor=p.name if p else "?", action="denied",
                       target=f"{request.method} {request.url.path}", detail={"why": exc.message})

    errors.observe(app, audit_denial)

    sec = hub.settings.security
    app.add_middleware(BodyLimit, max_bytes=sec.max_body_bytes)
    if sec.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=sec.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(SecurityHeaders)
