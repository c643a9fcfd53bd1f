"""Registry service: applications."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from central.registry import store
from central.registry.models import (
    UsageApplicationIn,
    iso,
)
from central.registry.service.common import (
    Actor,
    Conflict,
    Forbidden,
    NotFound,
    RegistryError,
    _audit,
    _deny,
    _now,
    under,
)

if TYPE_CHECKING:
    from central.hub import Hub

log = logging.getLogger("citybrain.registry")



# ---------------------------------------------------------------- usage applications

def _app(d: dict[str, Any]) -> dict[str, Any]:
    d["fields"] = json.loads(d["fields"])
    return d


def apply(hub: Hub, actor: Actor, body: UsageApplicationIn) -> dict[str, Any]:
    org = body.applicant_org
    if org is None:
        scopes = actor.scopes("registry.apply")
        if len(scopes) != 1:
            raise RegistryError("applicant_org", "say which department applies")
        org = scopes[0]
    if not actor.allowed("registry.apply", org):
        raise _deny(hub, actor, "registry.apply", org, None, "applicant_org")
    vf, vt = iso(body.valid_from), iso(body.valid_to)
    if vt <= vf:  # type: ignore[operator]
        raise RegistryError("valid_to", "must be after valid_from")
    if under(org, body.owner_org):
        raise RegistryError("owner_org", "is your own scope; no application needed")
    with hub.store.tx() as db:
        app_id = store.insert_application(
            db, applicant=actor.name, applicant_org=org, owner_org=body.owner_org, purpose=body.purpose,
            fields=json.dumps(sorted(set(body.fields))), valid_from=vf, valid_to=vt, created_at=_now())
        from central.iam.service import note_maker

        note_maker(db, f"registry.application:{app_id}", actor.name, "file")
        _audit(db, actor, "registry.apply", str(app_id), org,
               {"owner_org": body.owner_org, "fields": sorted(set(body.fields)), "purpose": body.purpose})
        return _app(store.application(db, app_id))  # type: ignore[arg-type]


def application_owner(hub: Hub, app_id: int) -> str:
    with hub.store.read() as db:
        r = store.application(db, app_id)
    if r is None:
        raise NotFound("application_id", f"no application {app_id}")
    return str(r["owner_org"])


def decide(hub: Hub, actor: Actor, app_id: int, approve: bool, reason: str | None = None) -> dict[str, Any]:
    owner = application_owner(hub, app_id)
    if not actor.allowed("registry.approve", owner):
        raise _deny(hub, actor, "registry.approve", owner, str(app_id), "application_id",
                    NotFound("application_id", f"no application {app_id}"))
    from central.iam.service import maker_refusal

    with hub.store.read() as db:
        filer = store.application(db, app_id)["applicant"]  # type: ignore[index]
        why = maker_refusal(db, f"registry.application:{app_id}", actor.name, filer=filer)
    if why:
        with hub.store.tx() as db:
            _audit(db, actor, "registry.denied", str(app_id), owner, {"why": "separation of duties"})
        raise Forbidden("application_id", why)
    with hub.store.tx() as db:
        status = store.application(db, app_id)["status"]  # type: ignore[index]
        if status != "pending":
            raise Conflict("application_id", f"already {status}")
        new = "approved" if approve else "rejected"
        store.set_decision(db, app_id, new, actor.name, _now(), reason)
        _audit(db, actor, f"registry.application.{new}", str(app_id), owner, {"reason": reason})
        return _app(store.application(db, app_id))  # type: ignore[arg-type]


def list_applications(hub: Hub, actor: Actor, status: str | None = None) -> list[dict[str, Any]]:
    """Applications the actor made (applicant side) or may decide (owner side)."""
    with hub.store.read() as db:
        rows = store.applications_for(db, actor.scopes("registry.apply") + actor.scopes("registry.read"),
                                      actor.scopes("registry.approve"), status)
    return [_app(r) for r in rows]
