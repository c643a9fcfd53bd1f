"""City code API (/api/v1/codes) and the resolver page (/c/...): parse, authorize, call the service."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from central.codes import feed as codes_feed
from central.codes import page
from central.codes.models import (
    AppKeyCreatedOut,
    AppKeyOut,
    ApplicationOut,
    CodeRecordOut,
    DepartmentCreatedOut,
    DepartmentOut,
    DutiesImportedOut,
    DutyOut,
    IssuedBatchOut,
    IssuedCodeOut,
    IssuedPageOut,
    KeyRotationOut,
    RevocationListOut,
    RevokeOut,
    RootKeyOut,
    RulesOut,
    SceneOut,
    SupervisionOut,
    TrustListOut,
    UrlFilingOut,
    UrlsOut,
    VerifyOut,
    WebhookOut,
)
from central.codes.service import CodesService, service_of
from central.deps import get_hub
from central.feeds import routes as feed_http
from central.hub import Hub
from central.iam.deps import Principal, authenticated, current_principal, public, require
from central.schema import inline_schema

router = APIRouter()

Perm = Callable[..., Principal]


def svc_dep(hub: Hub = Depends(get_hub)) -> CodesService:
    return service_of(hub)


Svc = Annotated[CodesService, Depends(svc_dep)]


def _ensure(hub: Hub, principal: Principal, perm: str, org: str, missing: str = "not found") -> None:
    """Audited refusal. An object outside what the caller may read gets `missing`, the very answer a
    missing one gets (404), so nothing about it (not even that it exists) leaks; else a 403 that names
    only the permission."""
    if not principal.allowed(perm, org):
        from central.iam.audit import record

        with hub.store.tx() as db:
            record(db, actor=principal.name, action="denied", target=perm, org=org, detail={"permission": perm})
        if org != "/" and principal.has(perm) and not principal.allowed("codes.read", org):
            raise HTTPException(404, missing)
        raise HTTPException(403, f"forbidden: {principal.name} lacks '{perm}' here")


def _no_dept(dept_id: str) -> str:
    return f"dept_id: no department {dept_id!r}"  # CodesService.department's 404


def _no_app(app_id: int) -> str:
    return f"application_id: no application {app_id}"  # CodesService.application's 404


def _city_level(hub: Hub, principal: Principal, perm: str) -> None:
    """Approval, the duty catalogue and URL audit are city-level acts: a binding at an org-tree root."""
    if not any(s.count("/") == 1 for s in principal.scopes(perm)):
        _ensure(hub, principal, perm, "/")  # audited 403


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- callers: a user/API key (iam) or a business subsystem's app key ---------------------------------


@dataclass
class Caller:
    name: str
    principal: Principal | None
    app_id: int | None  # set when the caller is an app key bound to one approved application


def caller(perm: str) -> Callable[..., Any]:
    # async on purpose: no threadpool hop on the hot verify path (the lookups are cached / sub-ms reads).
    async def dep(request: Request) -> Caller:
        hub: Hub = request.app.state.hub
        key = request.headers.get("x-app-key")
        if key:
            app_id = service_of(hub).app_for_key(key.strip())
            if app_id is None:
                raise HTTPException(401, "X-App-Key: invalid or revoked app key")
            return Caller(name=f"appkey:{app_id}", principal=None, app_id=app_id)
        p = current_principal(authenticated(request, hub))
        if not p.has(perm):
            _ensure(hub, p, perm, "/")
        return Caller(name=p.name, principal=p, app_id=None)

    dep.iam_permission = perm  # type: ignore[attr-defined]  # the route-coverage test looks for this
    return dep


def _authorize_app(hub: Hub, who: Caller, perm: str, app: dict[str, Any]) -> None:
    if who.app_id is not None:
        if who.app_id != app["id"]:
            raise HTTPException(403, f"application_id: this app key is bound to application {who.app_id}")
    elif who.principal is not None:
        _ensure(hub, who.principal, perm, app["org"], _no_app(app["id"]))


def _app(svc: CodesService, app_id: int) -> dict[str, Any]:
    return svc.application(app_id)


def _dept(svc: CodesService, dept_id: str) -> dict[str, Any]:
    return svc.department(dept_id)


# ---- departments, duties, rules ---------------------------------------------------------------------


class DepartmentIn(Body):
    id: str = Field(pattern=r"^[A-Z][0-9A-Z]{1,15}$", description="short department code, e.g. HEALTH")
    name: str = Field(min_length=1, max_length=100)
    org: str = Field(pattern=r"^/[a-z0-9_/-]+$", max_length=200)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=500)


@router.post("/departments", status_code=201, response_model=DepartmentCreatedOut)
def register_department(
    body: DepartmentIn, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.keys"))
) -> dict[str, Any]:
    _ensure(hub, p, "codes.keys", body.org, "org: not found")
    return svc.register_department(p.name, body.id, body.name, body.org, body.webhook_url)


@router.get("/departments", response_model=list[DepartmentOut])
def list_departments(svc: Svc, p: Principal = Depends(require("codes.read"))) -> list[dict[str, Any]]:
    return svc.departments(p.scopes("codes.read"))


@router.get("/departments/{dept_id}/scenes", response_model=list[SceneOut])
def department_scenes(
    dept_id: str, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.read"))
) -> list[dict[str, Any]]:
    """Approved scenes of a department (what it may issue), each with its app keys."""
    dept = _dept(svc, dept_id)
    _ensure(hub, p, "codes.read", dept["org"], _no_dept(dept_id))
    apps = svc.applications([dept["org"]], dept_id=dept_id, status="approved")
    return [{**a, "app_keys": svc.app_keys(a["id"])} for a in apps]


class WebhookIn(Body):
    url: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=500)


@router.put("/departments/{dept_id}/webhook", response_model=WebhookOut)
def set_webhook(
    dept_id: str, body: WebhookIn, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.apply"))
) -> dict[str, Any]:
    dept = _dept(svc, dept_id)
    _ensure(hub, p, "codes.apply", dept["org"], _no_dept(dept_id))
    return svc.set_webhook(p.name, dept_id, body.url)


@router.post("/departments/{dept_id}/keys/rotate", response_model=KeyRotationOut)
def rotate_key(
    dept_id: str, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.keys"))
) -> dict[str, Any]:
    dept = _dept(svc, dept_id)
    _ensure(hub, p, "codes.keys", dept["org"], _no_dept(dept_id))
    return svc.rotate_key(p.name, dept_id)


class DutyRow(Body):
    dept_id: str
    scene_type: str
    description: str = ""


class DutiesIn(Body):
    rows: list[DutyRow] = Field(max_length=100_000)
    replace: bool = False


@router.post("/duties", response_model=DutiesImportedOut, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(DutiesIn)},
    "text/csv": {"schema": {"type": "string", "description": "header dept_id,scene_type,description"}}}}})
async def import_duties(
    request: Request, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.approve"))
) -> dict[str, Any]:
    """Import the duty catalogue: JSON {rows:[{dept_id, scene_type, description}], replace} or a CSV body
    (Content-Type text/csv, header dept_id,scene_type,description; ?replace=true)."""
    _city_level(hub, p, "codes.approve")
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("text/csv"):
        try:
            rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error) as e:
            raise HTTPException(422, f"body: not a UTF-8 CSV ({e})") from None
        replace = request.query_params.get("replace") == "true"
    else:
        try:
            parsed = DutiesIn.model_validate_json(raw)
        except ValueError as e:
            raise HTTPException(422, f"body: {e}") from None
        rows, replace = [r.model_dump() for r in parsed.rows], parsed.replace
    n = svc.import_duties(p.name, rows, replace=replace)
    return {"imported": n}


@router.get("/duties", response_model=list[DutyOut])
def list_duties(svc: Svc, p: Principal = Depends(require("codes.read"))) -> list[dict[str, Any]]:
    """The duty catalogue: city-wide readers see all of it, others the rows of their own departments."""
    rows = svc.duties()
    if p.visible("codes.read", None):
        return rows
    mine = {d["id"] for d in svc.departments(p.scopes("codes.read"))}
    return [r for r in rows if r["dept_id"] in mine]


@router.get("/rules", response_model=RulesOut)
def get_rules(svc: Svc, p: Principal = Depends(require("codes.read"))) -> dict[str, Any]:
    return svc.rules()


@router.put("/rules", response_model=RulesOut)
def put_rules(
    body: dict[str, Any], svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.approve"))
) -> dict[str, Any]:
    _city_level(hub, p, "codes.approve")
    return svc.set_rules(p.name, body)


# ---- applications ------------------------------------------------------------------------------------


class ApplicationIn(Body):
    dept_id: str = Field(max_length=16)
    scene_name: str = Field(min_length=1, max_length=100)
    scene_type: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
    code_type: Literal["static", "dynamic"]
    entity_type: Literal["person", "enterprise", "object", "place"]
    purpose: str = Field(min_length=1, max_length=1000)
    share_commitment: bool
    validity: str = Field(pattern=r"^[A-Z]$", description="validity class: M H D Y L")
    single_use: bool = False


@router.post("/applications", status_code=201, response_model=ApplicationOut)
def apply(
    body: ApplicationIn, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.apply"))
) -> dict[str, Any]:
    dept = _dept(svc, body.dept_id)
    _ensure(hub, p, "codes.apply", dept["org"], _no_dept(body.dept_id))
    return svc.apply(p.name, **body.model_dump())


@router.get("/applications", response_model=list[ApplicationOut])
def list_applications(
    svc: Svc, dept_id: str | None = None, status: str | None = None, p: Principal = Depends(require("codes.read"))
) -> list[dict[str, Any]]:
    return svc.applications(p.scopes("codes.read"), dept_id=dept_id, status=status)


@router.get("/applications/{app_id}", response_model=ApplicationOut)
def get_application(
    app_id: int, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.read"))
) -> dict[str, Any]:
    app = _app(svc, app_id)
    _ensure(hub, p, "codes.read", app["org"], _no_app(app_id))
    return app


class ApplicationPatch(Body):
    scene_name: str | None = Field(default=None, min_length=1, max_length=100)
    purpose: str | None = Field(default=None, min_length=1, max_length=1000)
    share_commitment: bool | None = None
    validity: str | None = Field(default=None, pattern=r"^[A-Z]$")
    single_use: bool | None = None


@router.patch("/applications/{app_id}", response_model=ApplicationOut)
def edit_application(
    app_id: int, body: ApplicationPatch, svc: Svc, hub: Hub = Depends(get_hub),
    p: Principal = Depends(require("codes.apply")),
) -> dict[str, Any]:
    """Change a pending application. Whoever edits it, like whoever filed it, may not decide it."""
    app = _app(svc, app_id)
    _ensure(hub, p, "codes.apply", app["org"], _no_app(app_id))
    return svc.edit_application(p.name, app_id, body.model_dump(exclude_unset=True))


class DecisionIn(Body):
    approve: bool
    code_system: str | None = Field(default=None, pattern=r"^[0-9A-Z]{1,8}$")
    reason: str = Field(default="", max_length=500)


@router.post("/applications/{app_id}/decision", response_model=ApplicationOut)
def decide(
    app_id: int,
    body: DecisionIn,
    svc: Svc,
    hub: Hub = Depends(get_hub),
    p: Principal = Depends(require("codes.approve")),
) -> dict[str, Any]:
    """Approve (assigning the code-system id) or reject; the response shows the three checks."""
    _city_level(hub, p, "codes.approve")
    _app(svc, app_id)
    return svc.decide(p.name, app_id, body.approve, body.code_system, body.reason)


class AppKeyIn(Body):
    name: str = Field(min_length=1, max_length=100)


@router.post("/applications/{app_id}/appkeys", status_code=201, response_model=AppKeyCreatedOut)
def create_app_key(
    app_id: int, body: AppKeyIn, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.apply"))
) -> dict[str, Any]:
    """Register a business subsystem: the key (shown once) issues and verifies under this scene only."""
    app = _app(svc, app_id)
    _ensure(hub, p, "codes.apply", app["org"], _no_app(app_id))
    return svc.create_app_key(p.name, app_id, body.name)


@router.get("/applications/{app_id}/appkeys", response_model=list[AppKeyOut])
def list_app_keys(
    app_id: int, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.read"))
) -> list[dict[str, Any]]:
    app = _app(svc, app_id)
    _ensure(hub, p, "codes.read", app["org"], _no_app(app_id))
    return svc.app_keys(app_id)


@router.delete("/applications/{app_id}/appkeys/{key_id}", status_code=204)
def revoke_app_key(
    app_id: int, key_id: int, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.apply"))
) -> Response:
    app = _app(svc, app_id)
    _ensure(hub, p, "codes.apply", app["org"], _no_app(app_id))
    if key_id not in {k["id"] for k in svc.app_keys(app_id)}:
        raise HTTPException(404, f"key_id: no app key {key_id} under application {app_id}")
    svc.revoke_app_key(p.name, key_id)
    return Response(status_code=204)


# ---- URL filing --------------------------------------------------------------------------------------


class UrlIn(Body):
    dept_id: str = Field(max_length=16)
    url: str = Field(max_length=200)


@router.post("/urls", status_code=201, response_model=UrlFilingOut)
def file_url(
    body: UrlIn, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.apply"))
) -> dict[str, Any]:
    dept = _dept(svc, body.dept_id)
    _ensure(hub, p, "codes.apply", dept["org"], _no_dept(body.dept_id))
    return svc.file_url(p.name, body.dept_id, body.url)


@router.get("/urls", response_model=UrlsOut)
def list_urls(svc: Svc, dept_id: str | None = None, p: Principal = Depends(require("codes.read"))) -> dict[str, Any]:
    """Filed guide URLs of the departments in the caller's codes.read scope."""
    return {"hub_resolver": svc.hub_resolver, "filed": svc.urls(dept_id, p.scopes("codes.read"))}


class UrlDecisionIn(Body):
    approve: bool
    reason: str = Field(default="", max_length=500)


@router.post("/urls/{url_id}/decision", response_model=UrlFilingOut)
def audit_url(
    url_id: int,
    body: UrlDecisionIn,
    svc: Svc,
    hub: Hub = Depends(get_hub),
    p: Principal = Depends(require("codes.approve")),
) -> dict[str, Any]:
    _city_level(hub, p, "codes.approve")
    return svc.audit_url(p.name, url_id, body.approve, body.reason)


# ---- issuing -----------------------------------------------------------------------------------------

Image = Literal["none", "png", "svg"]


def qr_image(text: str, fmt: Image) -> dict[str, str]:
    """QR at error-correction level Q (~25 % damage margin), optimized segments (alphanumeric body, numeric
    tail); protocol.citycode keeps every code within version 11 at Q."""
    if fmt == "none":
        return {}
    import qrcode
    import qrcode.image.svg

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_Q, box_size=6, border=4)
    qr.add_data(text, optimize=20)
    qr.make(fit=True)
    buf = io.BytesIO()
    if fmt == "png":
        qr.make_image().save(buf, format="PNG")
        return {"png_b64": base64.b64encode(buf.getvalue()).decode(), "qr_version": str(qr.version)}
    qr.make_image(image_factory=qrcode.image.svg.SvgPathImage).save(buf)
    return {"svg": buf.getvalue().decode(), "qr_version": str(qr.version)}


class CityFields(Body):
    # City-assigned segments: accepted only to be checked (a department cannot change them).
    code_system: str | None = None
    auth_id: str | None = None
    attribute: str | None = None


class IssueIn(CityFields):
    application_id: int
    identity_id: str = Field(min_length=1, max_length=40)
    dept_data: str = Field(default="", max_length=24, pattern=r"^[0-9A-Za-z-]*$")
    guide_url: str | None = Field(default=None, max_length=200)
    lifetime_s: int | None = Field(default=None, ge=1)
    image: Image = "png"


class BatchItem(Body):
    identity_id: str = Field(min_length=1, max_length=40)
    dept_data: str = Field(default="", max_length=24, pattern=r"^[0-9A-Za-z-]*$")


class BatchIn(CityFields):
    application_id: int
    items: list[BatchItem] = Field(min_length=1, max_length=5000)
    guide_url: str | None = Field(default=None, max_length=200)
    lifetime_s: int | None = Field(default=None, ge=1)
    image: Image = "none"


def _issue(
    svc: CodesService, hub: Hub, who: Caller, body: IssueIn | BatchIn, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    app = _app(svc, body.application_id)
    _authorize_app(hub, who, "codes.issue", app)
    return svc.issue_batch(
        who.name,
        body.application_id,
        items,
        guide_url=body.guide_url,
        lifetime_s=body.lifetime_s,
        city_fields={"code_system": body.code_system, "auth_id": body.auth_id, "attribute": body.attribute},
    )


# exclude_unset: the QR keys (and verify's code/scene keys) stay absent when the service leaves them out.
@router.post("/issue", status_code=201, response_model=IssuedCodeOut, response_model_exclude_unset=True)
def issue(
    body: IssueIn, svc: Svc, hub: Hub = Depends(get_hub), who: Caller = Depends(caller("codes.issue"))
) -> dict[str, Any]:
    """Issue one code: the payload and (by default) a PNG QR; `image` = png | svg | none."""
    (out,) = _issue(svc, hub, who, body, [{"identity_id": body.identity_id, "dept_data": body.dept_data}])
    return {**out, **qr_image(out["text"], body.image)}


@router.post("/issue/batch", status_code=201, response_model=IssuedBatchOut, response_model_exclude_unset=True)
def issue_batch(
    body: BatchIn, svc: Svc, hub: Hub = Depends(get_hub), who: Caller = Depends(caller("codes.issue"))
) -> dict[str, Any]:
    if body.image != "none" and len(body.items) > 500:
        raise HTTPException(422, "image: at most 500 images per batch; ask image=none for larger batches")
    out = _issue(svc, hub, who, body, [i.model_dump() for i in body.items])
    return {"count": len(out), "codes": [{**c, **qr_image(c["text"], body.image)} for c in out]}


@router.get("/issued", response_model=IssuedPageOut)
def list_issued(
    svc: Svc,
    app_id: int | None = None,
    status: Literal["active", "revoked"] | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
    p: Principal = Depends(require("codes.read")),
) -> dict[str, Any]:
    """Issued codes in the caller's scope, newest first (QR image: GET /issued/{serial}/qr)."""
    return svc.issued(p.scopes("codes.read"), app_id, status, limit, offset)


@router.get("/issued/{serial}", response_model=CodeRecordOut)
def get_code(
    serial: str, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.read"))
) -> dict[str, Any]:
    rec = svc.code_record(serial.upper())
    if rec is None:
        raise HTTPException(404, f"serial: no code {serial}")
    _ensure(hub, p, "codes.read", rec["org"], f"serial: no code {serial}")
    return rec


@router.get(
    "/issued/{serial}/qr",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "the QR image"}},
)
def get_qr(
    serial: str,
    svc: Svc,
    fmt: Literal["png", "svg"] = "png",
    hub: Hub = Depends(get_hub),
    p: Principal = Depends(require("codes.read")),
) -> Response:
    rec = svc.code_record(serial.upper())
    if rec is None:
        raise HTTPException(404, f"serial: no code {serial}")
    _ensure(hub, p, "codes.read", rec["org"], f"serial: no code {serial}")
    img = qr_image(rec["text"], fmt)
    if fmt == "png":
        return Response(base64.b64decode(img["png_b64"]), media_type="image/png")
    return Response(img["svg"], media_type="image/svg+xml")


# ---- verification and revocation -------------------------------------------------------------------


class VerifyIn(Body):
    text: str = Field(max_length=4096)


@router.post("/verify", response_model=VerifyOut, response_model_exclude_unset=True)
async def verify(body: VerifyIn, request: Request, who: Caller = Depends(caller("codes.verify"))) -> dict[str, Any]:
    """Verdict (valid / expired / revoked / unknown-key / bad-signature / malformed / wrong-system /
    unfiled-url) with its reason, and the entity's public view for a valid code. Runs on the event loop:
    one cached key lookup, one signature check and one primary-key query, no threadpool hop."""
    return service_of(request.app.state.hub).verify_online(body.text)


class CodeRevokeIn(Body):
    serial: str | None = Field(default=None, max_length=32)
    identity_id: str | None = Field(default=None, max_length=40)
    kid: str | None = Field(default=None, max_length=32)
    reason: str = Field(min_length=1, max_length=500)


@router.post("/revoke", response_model=RevokeOut)
def revoke(
    body: CodeRevokeIn, svc: Svc, hub: Hub = Depends(get_hub), p: Principal = Depends(require("codes.revoke"))
) -> dict[str, Any]:
    """Revoke exactly one of: a code (serial), every code of an entity (identity_id), a department key."""
    given = [k for k in ("serial", "identity_id", "kid") if getattr(body, k)]
    if len(given) != 1:
        raise HTTPException(422, "serial/identity_id/kid: give exactly one")
    if body.serial:
        rec = svc.code_record(body.serial.upper())
        if rec is None:
            raise HTTPException(404, f"serial: no code {body.serial}")
        _ensure(hub, p, "codes.revoke", rec["org"], f"serial: no code {body.serial}")
        return svc.revoke_code(p.name, body.serial.upper(), body.reason)
    if body.identity_id:
        _city_level(hub, p, "codes.revoke")  # spans every department's codes
        return svc.revoke_identity(p.name, body.identity_id, body.reason, p.scopes("codes.revoke")[0])
    key_dept = svc.key_dept(str(body.kid))
    if key_dept is None:
        raise HTTPException(404, f"kid: no key {body.kid}")
    _ensure(hub, p, "codes.revoke", _dept(svc, key_dept)["org"], f"kid: no key {body.kid}")
    return svc.revoke_key(p.name, str(body.kid), body.reason)


# ---- trust material for devices (public: the lists are signed by the city root) -------------------


@router.get(
    "/trust",
    response_model=TrustListOut,
    dependencies=[Depends(public("signed trust list; devices fetch it to bootstrap"))],
)
def get_trust(svc: Svc) -> dict[str, Any]:
    cur = svc.current("trust")
    if cur is None:
        raise HTTPException(404, "trust: nothing published yet")
    return cur


@router.get(
    "/revocations",
    response_model=RevocationListOut,
    dependencies=[Depends(public("signed revocation list for devices"))],
)
def get_revocations(svc: Svc) -> dict[str, Any]:
    cur = svc.current("revocations") or {}
    if not cur:
        return {"version": svc.publish_revocations(), **(svc.current("revocations") or {})}
    return cur


@router.get(
    "/root",
    response_model=RootKeyOut,
    dependencies=[Depends(public("the city root public key, pinned on devices"))],
)
def get_root(svc: Svc) -> dict[str, str]:
    return svc.root.public.to_dict()


# ---- supervision -------------------------------------------------------------------------------------


@router.get("/supervision", response_model=SupervisionOut)
def supervision(
    svc: Svc, days: int = 30, zombie_days: int = 90, p: Principal = Depends(require("codes.supervise"))
) -> dict[str, Any]:
    if not (1 <= days <= 3660 and 1 <= zombie_days <= 3660):
        raise HTTPException(422, "days/zombie_days: must be 1..3660")
    return svc.supervision(p.scopes("codes.supervise"), days, zombie_days)


@router.get(
    "/supervision.csv",
    response_class=Response,  # not PlainTextResponse, which would document text/plain besides text/csv
    responses={200: {"content": {"text/csv": {}}, "description": "the supervision figures as CSV"}},
)
def supervision_csv(
    svc: Svc, days: int = 30, zombie_days: int = 90, p: Principal = Depends(require("codes.supervise"))
) -> PlainTextResponse:
    if not (1 <= days <= 3660 and 1 <= zombie_days <= 3660):
        raise HTTPException(422, "days/zombie_days: must be 1..3660")
    return PlainTextResponse(
        svc.supervision_csv(p.scopes("codes.supervise"), days, zombie_days),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="city-codes-supervision.csv"'},
    )


_DASHBOARD = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>City codes: supervision</title>
<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}
td.n{text-align:right}.bad{color:#b00}</style></head><body><h1>City codes (城市码): supervision</h1>
<p><a href="supervision.csv">CSV export</a></p><table id="t"><thead><tr><th>Dept</th><th>Scene</th><th>Issued</th>
<th>Active</th><th>Revoked</th><th>Scanned</th><th>Verified</th><th>Failed</th><th>Duplicates</th><th>Zombies</th>
<th>Trend (issued/scanned per day)</th></tr></thead><tbody></tbody></table>
<script>
fetch("supervision", {credentials: "same-origin"}).then(r => r.json()).then(d => {
  const tb = document.querySelector("#t tbody");
  for (const r of d.rows) {
    const tr = document.createElement("tr");
    const cells = [r.dept_id, r.scene, r.issued, r.active, r.revoked, r.scanned, r.verified, r.failed,
                   r.duplicates, r.zombies,
                   r.trend.map(x => x.day.slice(5) + ":" + x.issued + "/" + x.scanned).join(" ")];
    for (const [i, c] of cells.entries()) {
      const td = document.createElement("td"); td.textContent = c;
      if (i >= 2 && i <= 9) td.className = "n" + ((i === 7 || i === 9) && c > 0 ? " bad" : "");
      tr.appendChild(td);
    }
    tb.appendChild(tr);
  }
});
</script></body></html>"""


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(p: Principal = Depends(require("codes.supervise"))) -> HTMLResponse:
    """A small page over the supervision JSON (uses the session cookie, GET only)."""
    return HTMLResponse(_DASHBOARD)


# ---- resolver page ------------------------------------------------------------------------------------

resolver = APIRouter()


def _optional_principal(request: Request, hub: Hub) -> Principal | None:
    try:
        return current_principal(authenticated(request, hub))
    except HTTPException:
        return None


@resolver.get(
    "/c/{city_seg}/{dept_seg}",
    response_class=HTMLResponse,
    dependencies=[Depends(public("city-code resolver: anyone who scans a code sees scene, department and "
                                 "validity; the holder is masked but for an officer over the department"))],
)
def resolve(city_seg: str, dept_seg: str, request: Request, lang: str | None = None,
            hub: Hub = Depends(get_hub)) -> HTMLResponse:
    """The city's service page for a scanned code (Chinese by default, `?lang=en` or Accept-Language)."""
    view = service_of(hub).resolver_view(city_seg, dept_seg, _optional_principal(request, hub))
    language = page.pick_language(lang, request.headers.get("accept-language"))
    body = page.render(view, language, hub.settings.timezone)
    return HTMLResponse(body, status_code=200 if view["found"] else 404, headers={"Content-Language": language,
                        "Vary": "Accept-Language, Cookie", "Content-Security-Policy": page.CSP})


def install(app: FastAPI, hub: Hub) -> None:
    """Mount the resolver at the root: the guide URL of hub-resolved codes is `{public_url}/c`."""
    app.include_router(resolver, tags=["codes"])


# ---- the change feed in the shared shape (docs/FEEDS.md) ----------------------------------------------
@router.get("/feed", response_class=Response, responses={200: {"content": {"application/x-ndjson": {}}}})
def feed_lines(after: str | None = feed_http.AFTER, limit: int = feed_http.LIMIT, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("codes.feed.read"))) -> Response:
    """Codes changes (issued, revoked, terminal scans) as JSON Lines after the cursor `after`."""
    return feed_http.feed_response(hub, p, codes_feed.SOURCE, after, limit)
