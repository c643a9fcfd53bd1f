"""Registry service: aliases."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from central.registry import store
from central.registry.models import (
    AliasIn,
)
from central.registry.service.common import (
    Actor,
    Conflict,
    NotFound,
    RegistryError,
    _audit,
    _deny,
    _id_arg,
    _now,
)
from central.registry.service.feed import append_feed

if TYPE_CHECKING:
    from central.hub import Hub

log = logging.getLogger("citybrain.registry")



# ---------------------------------------------------------------- aliases

def set_alias(hub: Hub, actor: Actor, body: AliasIn) -> dict[str, Any]:
    base = _id_arg(body.base_id, "base_id")
    org = body.org
    if org is None:
        scopes = actor.scopes("registry.write")
        if len(scopes) != 1:
            raise RegistryError("org", "say which department's local id this is")
        org = scopes[0]
    if not actor.allowed("registry.write", org):
        raise _deny(hub, actor, "registry.write", org, base, "org")
    with hub.store.tx() as db:
        if not store.exists(db, base):
            raise NotFound("base_id", f"{base} is not registered")
        hit = store.alias_target(db, org, body.local_id)
        if hit:
            if hit == base:
                return {"org": org, "local_id": body.local_id, "base_id": base}
            raise Conflict("local_id", f"{body.local_id!r} already maps to {hit} in {org}")
        store.insert_alias(db, org, body.local_id, base, actor.name, _now())
        alias = {"org": org, "local_id": body.local_id, "base_id": base}
        append_feed(db, "alias.set", base, alias, org)
        _audit(db, actor, "registry.alias", base, org, alias)
        return alias


def resolve_alias(hub: Hub, actor: Actor, org: str, local_id: str) -> dict[str, Any]:
    if not actor.allowed("registry.read", org):
        raise _deny(hub, actor, "registry.read", org, local_id, "org")
    with hub.store.read() as db:
        base = store.alias_target(db, org, local_id)
    if base is None:
        raise NotFound("local_id", f"no local id {local_id!r} in {org}")
    return {"org": org, "local_id": local_id, "base_id": base}


def aliases_of(hub: Hub, actor: Actor, eid: str) -> dict[str, Any]:
    """Base id -> the local ids departments in the actor's scope gave it (many-to-one, read backwards)."""
    eid = _id_arg(eid)
    with hub.store.read() as db:
        rows = store.aliases_of(db, eid, actor.scopes("registry.read"))
    return {"base_id": eid, "aliases": rows}


