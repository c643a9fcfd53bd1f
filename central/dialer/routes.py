"""Dialer API (/api/v1/dialer): thin — parse, authorize over the resource's org, call the service."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from central.deps import get_hub
from central.dialer import feed as dialer_feed
from central.dialer import models as m
from central.dialer import service as svc
from central.dialer.templates import KEY_RE, Template
from central.feeds import routes as feed_http
from central.hub import Hub
from central.iam.deps import Principal, require
from central.problems import FieldProblem, Invalid
from central.schema import Ok

router = APIRouter()
MAX_LIST_BYTES = 10 * 1024 * 1024


def _check(p: Principal, perm: str, org: str) -> None:
    if not p.allowed(perm, org):
        raise HTTPException(403, detail={"field": "org", "error": f"{perm} not granted over {org}"})


def _task(hub: Hub, task_id: int, p: Principal, perm: str) -> dict[str, Any]:
    task = svc.get_task(hub, task_id)
    _check(p, perm, task["org"])
    return task


def _template(hub: Hub, key: str, version: int | None, p: Principal) -> tuple[Template, dict[str, Any]]:
    tpl, meta = svc.get_template(hub, key, version)
    if not svc.visible(meta["org"], p.scopes("dialer.read")):
        raise HTTPException(404, detail={"field": "key", "error": f"no template {key!r}"})
    return tpl, meta


# --- templates ---
@router.get("/templates", response_model=list[m.TemplateSummaryOut])
def list_templates(hub: Hub = Depends(get_hub),
                   p: Principal = Depends(require("dialer.read"))) -> list[dict[str, Any]]:
    return svc.list_templates(hub, p.scopes("dialer.read"))


@router.get("/templates/{key}", response_model=m.TemplateOut)
def get_template(key: str, version: int | None = Query(default=None, ge=1), hub: Hub = Depends(get_hub),
                 p: Principal = Depends(require("dialer.read"))) -> dict[str, Any]:
    tpl, meta = _template(hub, key, version, p)
    return {**meta, "template": tpl.model_dump(mode="json"),
            "versions": svc.template_versions(hub, key)}


@router.get("/templates/{key}/yaml", response_class=PlainTextResponse)
def export_template(key: str, version: int | None = Query(default=None, ge=1), hub: Hub = Depends(get_hub),
                    p: Principal = Depends(require("dialer.read"))) -> PlainTextResponse:
    tpl, meta = _template(hub, key, version, p)
    return PlainTextResponse(tpl.model_copy(update={"version": meta["version"]}).to_yaml(),
                             media_type="application/yaml")


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org: str = Field(pattern=r"^/[\w\-/]*$")
    template: Template


@router.post("/templates", status_code=201, response_model=m.TemplateSavedOut)
def save_template(body: TemplateIn, hub: Hub = Depends(get_hub),
                  p: Principal = Depends(require("dialer.design"))) -> dict[str, Any]:
    _check(p, "dialer.design", body.org)
    tpl = svc.save_template(hub, body.template, body.org, p.name)
    return {"key": tpl.key, "version": tpl.version, "org": body.org}


@router.post("/templates/import", status_code=201, response_model=m.TemplateSavedOut)
def import_template(org: str = Query(pattern=r"^/[\w\-/]*$"), yaml_text: str = Body(media_type="application/yaml"),
                    hub: Hub = Depends(get_hub), p: Principal = Depends(require("dialer.design"))) -> dict[str, Any]:
    _check(p, "dialer.design", org)
    try:
        tpl = Template.from_yaml(yaml_text)
    except ValidationError as e:
        problems: list[FieldProblem] = [{"field": ".".join(map(str, x["loc"])), "message": x["msg"]}
                                        for x in e.errors()]
        raise Invalid(f"template: {len(problems)} invalid field(s)", errors=problems) from e
    except ValueError as e:
        raise Invalid(f"body: {e}", field="body") from e
    return save_template(TemplateIn(org=org, template=tpl), hub, p)


class CopyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_key: str = Field(pattern=KEY_RE)
    org: str = Field(pattern=r"^/[\w\-/]*$")
    name: str | None = None
    version: int | None = Field(default=None, ge=1)


@router.post("/templates/{key}/copy", status_code=201, response_model=m.TemplateCopiedOut)
def copy_template(key: str, body: CopyIn, hub: Hub = Depends(get_hub),
                  p: Principal = Depends(require("dialer.design"))) -> dict[str, Any]:
    _check(p, "dialer.design", body.org)
    _template(hub, key, body.version, p)
    tpl = svc.copy_template(hub, key, body.new_key, body.org, p.name, body.version, body.name)
    return {"key": tpl.key, "version": tpl.version, "org": body.org, "based_on": key}


# --- template recordings (each template key's own store: templates.py's module doc) ---
MAX_RECORDING_BODY = svc.MAX_RECORDING_BYTES
Lang = Literal["zh", "en"]


def _design(hub: Hub, key: str, p: Principal) -> str:
    _tpl, meta = _template(hub, key, None, p)
    _check(p, "dialer.design", meta["org"])
    return str(meta["org"])


@router.get("/templates/{key}/recordings", response_model=list[m.RecordingOut])
def list_recordings(key: str, hub: Hub = Depends(get_hub),
                    p: Principal = Depends(require("dialer.read"))) -> list[dict[str, Any]]:
    _template(hub, key, None, p)
    return svc.list_recordings(hub, key)


@router.get("/templates/{key}/recordings/{name}", response_class=Response,
            responses={200: {"content": {"audio/wav": {}}}})
def get_recording(key: str, name: str = Path(max_length=63), language: Lang | None = None,
                  hub: Hub = Depends(get_hub), p: Principal = Depends(require("dialer.read"))) -> Response:
    """The recording's WAV (16-bit mono PCM), in `language` (default: the template's)."""
    _template(hub, key, None, p)
    return Response(svc.recording_bytes(hub, key, name, language), media_type="audio/wav")


@router.put("/templates/{key}/recordings/{name}", response_model=m.RecordingSavedOut,
            openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}})
async def put_recording(key: str, request: Request, name: str = Path(max_length=63),
                        language: Lang | None = None, hub: Hub = Depends(get_hub),
                        p: Principal = Depends(require("dialer.design"))) -> dict[str, Any]:
    """Upload a PCM WAV (8/16-bit, mono/stereo, 8-48 kHz, at most 60 s) as recording `name` in `language`
    (default: the template's); stored as 16-bit mono 16 kHz in a new template version."""
    org = await run_in_threadpool(_design, hub, key, p)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_RECORDING_BODY:
            raise HTTPException(413, detail={"field": "body", "error": "a recording is at most 20 MB"})
    # the WAV is converted in pure Python: off the event loop
    return await run_in_threadpool(svc.put_recording, hub, key, name, language, bytes(data), org, p.name)


@router.delete("/templates/{key}/recordings/{name}", response_model=m.RecordingDeletedOut)
def delete_recording(key: str, name: str = Path(max_length=63), language: Lang | None = None,
                     hub: Hub = Depends(get_hub), p: Principal = Depends(require("dialer.design"))) -> dict[str, Any]:
    org = _design(hub, key, p)
    return {"template_key": key, "version": svc.delete_recording(hub, key, name, language, org, p.name)}


# --- tasks ---
@router.post("/tasks", status_code=201, response_model=m.TaskCreatedOut)
def create_task(body: svc.TaskIn, hub: Hub = Depends(get_hub),
                p: Principal = Depends(require("dialer.run"))) -> dict[str, Any]:
    _check(p, "dialer.run", body.org)
    tid = svc.create_task(hub, body, p.name)
    task = svc.get_task(hub, tid)
    warnings = svc.task_warnings(hub, Template.model_validate_json(task["template"]))
    if (w := svc.capacity_warning(hub, body.schedule)) is not None:
        warnings.append(w)
    return task | {"template": None, "warnings": warnings}


@router.get("/tasks", response_model=list[m.TaskSummaryOut])
def list_tasks(hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("dialer.read"))) -> list[dict[str, Any]]:
    return svc.list_tasks(hub, p.scopes("dialer.read"))


@router.get("/tasks/{task_id}", response_model=m.TaskDetailOut)
def get_task(task_id: int, hub: Hub = Depends(get_hub),
             p: Principal = Depends(require("dialer.read"))) -> dict[str, Any]:
    task = _task(hub, task_id, p, "dialer.read")
    return task | {"template": None, "progress": svc.progress(hub, task_id),
                   "state_reason": svc.state_reason(hub, task_id)}


# PATCH only (PUT stays 405): a task's template, org and call list are frozen once created; its windows
# and pacing are what an operator changes while it runs.
@router.patch("/tasks/{task_id}", response_model=m.TaskDetailOut)
def patch_task(task_id: int, body: svc.TaskPatch, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("dialer.run"))) -> dict[str, Any]:
    _task(hub, task_id, p, "dialer.run")
    svc.patch_task(hub, task_id, body, p.name)
    return get_task(task_id, hub, p)


@router.post("/tasks/{task_id}/contacts", response_model=m.ContactImportOut)
async def import_contacts(task_id: int, file: UploadFile, hub: Hub = Depends(get_hub),
                          p: Principal = Depends(require("dialer.run"))) -> dict[str, Any]:
    _task(hub, task_id, p, "dialer.run")
    data = await file.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        raise HTTPException(413, detail={"field": "file", "error": "call list larger than 10 MB"})
    return svc.import_contacts(hub, task_id, file.filename or "list.csv", data, p.name)


@router.post("/tasks/{task_id}/{action}", response_model=m.TaskStateOut)
def change_state(task_id: int, action: Literal["start", "pause", "resume", "cancel"],
                 hub: Hub = Depends(get_hub), p: Principal = Depends(require("dialer.run"))) -> dict[str, Any]:
    _task(hub, task_id, p, "dialer.run")
    status = svc.change_state(hub, task_id, action, p.name)
    return {"task_id": task_id, "status": status}


@router.get("/tasks/{task_id}/progress", response_model=m.ProgressOut)
def progress(task_id: int, hub: Hub = Depends(get_hub),
             p: Principal = Depends(require("dialer.read"))) -> dict[str, Any]:
    _task(hub, task_id, p, "dialer.read")
    return svc.progress(hub, task_id)


@router.get("/tasks/{task_id}/report", response_model=m.ReportOut)
def report(task_id: int, hub: Hub = Depends(get_hub),
           p: Principal = Depends(require("dialer.read"))) -> dict[str, Any]:
    _task(hub, task_id, p, "dialer.read")
    return svc.report(hub, task_id)


@router.get("/tasks/{task_id}/cdrs", response_model=list[m.CdrOut])
def cdrs(task_id: int, hub: Hub = Depends(get_hub),
         p: Principal = Depends(require("dialer.read"))) -> list[dict[str, Any]]:
    _task(hub, task_id, p, "dialer.read")
    return svc.cdrs(hub, task_id)


@router.get("/tasks/{task_id}/export.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}})
def export_csv(task_id: int, unmask: bool = False, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("dialer.read"))) -> Response:
    task = _task(hub, task_id, p, "dialer.read")
    if unmask:
        _check(p, "pii.read", task["org"])
        from central.iam.audit import record

        with hub.store.tx() as db:  # every unmasked read of PII is audited
            record(db, actor=p.name, action="dialer.export.unmasked", target=f"task:{task_id}", org=task["org"])
    return Response(svc.export_csv(hub, task_id, unmask=unmask), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="task-{task_id}.csv"'})


# --- engines ---
@router.get("/engines", response_model=m.EnginesOut)
def engines(hub: Hub = Depends(get_hub), p: Principal = Depends(require("dialer.read"))) -> dict[str, Any]:
    """The SIP engine processes: capacity, heartbeat and trunk registration (a refused REGISTER shows here)."""
    return {"engines": svc.engines(hub), "capacity": svc.engine_capacity(hub)}


# --- do-not-call ---
class DncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone: str = Field(min_length=3, max_length=32)
    org: str = Field(pattern=r"^/[\w\-/]*$")
    reason: str = Field(default="", max_length=200)


class DncSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone: str = Field(min_length=1, max_length=64)
    org: str | None = Field(default=None, pattern=r"^/[\w\-/]*$", max_length=200)
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class DncRemoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone: str = Field(min_length=1, max_length=64)
    org: str = Field(pattern=r"^/[\w\-/]*$", max_length=200)
    reason: str = Field(default="", max_length=200)


@router.get("/dnc", response_model=m.DncPageOut)
def list_dnc(org: str | None = Query(default=None, pattern=r"^/[\w\-/]*$", max_length=200),
             limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0, le=1_000_000),
             hub: Hub = Depends(get_hub), p: Principal = Depends(require("dialer.dnc"))) -> dict[str, Any]:
    """Do-not-call entries in the caller's scope (and those of the orgs above it), newest first."""
    if org is not None:
        _check(p, "dialer.dnc", org)
    return svc.list_dnc(hub, p.scopes("dialer.dnc"), org, None, limit, offset)


# A search and a removal take the number in the body, never in the URL: it stays out of access logs.
@router.post("/dnc/search", response_model=m.DncPageOut)
def search_dnc(body: DncSearchIn, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("dialer.dnc"))) -> dict[str, Any]:
    """The entries for one number (normalised, exact) that the caller's scope sees."""
    if body.org is not None:
        _check(p, "dialer.dnc", body.org)
    return svc.list_dnc(hub, p.scopes("dialer.dnc"), body.org, body.phone, body.limit, body.offset)


@router.post("/dnc/remove", response_model=m.DncEntryOut)
def remove_dnc(body: DncRemoveIn, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("dialer.dnc"))) -> dict[str, Any]:
    """Take a number off one org's list (audited). Out of the caller's scope answers 404, as an absent entry."""
    if not p.allowed("dialer.dnc", body.org):
        raise HTTPException(404, detail={"field": "phone", "error": f"no do-not-call entry in {body.org}"})
    return svc.remove_dnc(hub, body.phone, body.org, p.name, body.reason)


@router.post("/dnc", status_code=201, response_model=Ok)
def add_dnc(body: DncIn, hub: Hub = Depends(get_hub),
            p: Principal = Depends(require("dialer.dnc"))) -> dict[str, bool]:
    _check(p, "dialer.dnc", body.org)
    svc.add_dnc(hub, body.phone, body.org, p.name, body.reason)
    return {"ok": True}


# ---- the change feed in the shared shape (docs/FEEDS.md) ----------------------------------------------
@router.get("/feed", response_class=Response, responses={200: {"content": {"application/x-ndjson": {}}}})
def feed_lines(after: str | None = feed_http.AFTER, limit: int = feed_http.LIMIT, hub: Hub = Depends(get_hub),
               p: Principal = Depends(require("dialer.feed.read"))) -> Response:
    """Dialer call results (one line per finished attempt) as JSON Lines after the cursor `after`."""
    return feed_http.feed_response(hub, p, dialer_feed.SOURCE, after, limit)
