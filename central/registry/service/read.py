"""Registry service: read."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from central.registry import store
from central.registry.ids import (
    IdError,
    normalize_id,
    validate_id_card,
    validate_uscc,
)
from central.registry.models import (
    iso,
)
from central.registry.service.common import (
    EXT_KIND,
    Actor,
    NotFound,
    RegistryError,
    _audit,
    _audit_tx,
    _cipher,
    _id_arg,
    _now,
    ext_index,
    under,
)

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.registry")



# ---------------------------------------------------------------- reading, visibility, grants

@dataclass
class Visibility:
    own: list[str]
    grants: dict[str, tuple[int, set[str]]]  # owner org -> (application id, granted fields)

    def orgs(self) -> list[str]:
        return [*self.own, *self.grants]

    def access(self, org: str) -> tuple[str, set[str] | None, int | None]:
        """-> ("own", None, None) | ("grant", fields, app id) | ("none", ...)."""
        if any(under(org, s) for s in self.own):
            return "own", None, None
        for owner, (app_id, fields) in self.grants.items():
            if under(org, owner):
                return "grant", fields, app_id
        return "none", None, None


def visibility(hub: Hub, actor: Actor, db: Db | None = None) -> Visibility:
    own = actor.scopes("registry.read")
    grants: dict[str, tuple[int, set[str]]] = {}
    if own:
        if db is None:
            with hub.store.read() as rdb:
                rows = store.grants(rdb, own, _now())
        else:
            rows = store.grants(db, own, _now())
        for app_id, owner, fields in rows:
            prev = grants.get(owner)
            merged = set(json.loads(fields)) | (prev[1] if prev else set())
            grants[owner] = (prev[0] if prev else app_id, merged)
    return Visibility(own, grants)


def _entity_dict(d: dict[str, Any]) -> dict[str, Any]:
    d["attrs"] = json.loads(d["attrs"])
    if d["grid"] or d["valid_from"] or d["valid_to"]:
        d["spacetime_id"] = f"{d['grid'] or '-'}/{d['valid_from'] or '..'}/{d['valid_to'] or '..'}"
    return d


_PUBLIC = ("id", "type", "region", "org", "status")


def _present(hub: Hub, actor: Actor, d: dict[str, Any], mode: str, fields: set[str] | None) -> dict[str, Any]:
    ext_plain = None
    if mode == "own" and d["ext_kind"] == "id_card" and actor.allowed("pii.read", d["org"]):
        ext_plain = _cipher(hub).decrypt(d["ext_enc"])
        _audit_tx(hub, actor, "registry.pii_read", d["id"], d["org"], {"field": "external_key"})
    out = {
        "id": d["id"], "type": d["type"], "region": d["region"], "org": d["org"], "status": d["status"],
        "name": d["name"], "address": d["address"], "external_key_kind": d["ext_kind"],
        "external_key": ext_plain or d["ext_masked"], "grid": d["grid"], "valid_from": d["valid_from"],
        "valid_to": d["valid_to"], "spacetime_id": d.get("spacetime_id"), "attrs": d["attrs"],
        "has_phone": d["phone_enc"] is not None, "created_at": d["created_at"], "updated_at": d["updated_at"],
    }
    if mode == "grant":
        keep = set(_PUBLIC) | (fields or set())
        if "grid" in keep or "valid_from" in keep:
            keep.add("spacetime_id")
        out = {k: v for k, v in out.items() if k in keep}
        out["access"] = "grant"
    return out


def _view(hub: Hub, actor: Actor, eid: str, missing: RegistryError | None = None) -> dict[str, Any]:
    """The actor's view of `eid`. Outside its scope (and any grant) the entity answers exactly like a
    missing one (`missing`, default "<id> is not registered"): neither its org nor that it exists leaks."""
    missing = missing or NotFound("id", f"{eid} is not registered")
    with hub.store.read() as db:  # one connection for the row and the grants
        r = store.entity(db, eid)
        if r is None:
            raise missing
        vis = visibility(hub, actor, db)
    d = _entity_dict(r)
    mode, fields, app_id = vis.access(d["org"])
    if mode == "none":
        with hub.store.tx() as db:
            _audit(db, actor, "registry.denied", eid, d["org"], {"perm": "registry.read"})
        raise missing
    if mode == "grant":
        _audit_tx(hub, actor, "registry.grant_read", eid, d["org"], {"application": app_id})
    return _present(hub, actor, d, mode, fields)


def get_entity(hub: Hub, actor: Actor, eid: str) -> dict[str, Any]:
    """Lookup by id; a mistyped id fails on its check character before any query."""
    return _view(hub, actor, _id_arg(eid))


def lookup_external(hub: Hub, actor: Actor, etype: str, key: str) -> dict[str, Any]:
    """Find an entity by its external key via the blind index (the plaintext is never queried)."""
    if etype not in EXT_KIND:
        raise RegistryError("type", "must be person, enterprise, object or place")
    try:
        key = validate_id_card(key) if etype == "person" else validate_uscc(key) if etype == "enterprise" else key
    except ValueError as e:
        raise RegistryError("external_key", str(e)) from None
    bi = ext_index(_cipher(hub), etype, key)
    assert bi is not None
    with hub.store.read() as db:
        eid = store.id_by_ext(db, bi)
    missing = NotFound("external_key", "no entity registered under this key")
    if eid is None:
        raise missing
    return _view(hub, actor, eid, missing)  # out of scope: the same answer, no base id, no org


def lookup(hub: Hub, eid: str) -> dict[str, Any] | None:
    """Internal lookup for other capabilities (codes): no scope, no PII; None when unknown/mistyped."""
    try:
        eid = normalize_id(eid)
    except IdError:
        return None
    with hub.store.read() as db:
        return store.brief(db, eid)


def search(hub: Hub, actor: Actor, q: str | None = None, *, type: str | None = None, region: str | None = None,
           grid: str | None = None, at: datetime | None = None, org: str | None = None, limit: int = 50,
           offset: int = 0) -> list[dict[str, Any]]:
    """Name/address search (every whitespace-separated term a case-insensitive substring of the name or
    the address, the same hits on SQLite and PostgreSQL: see `store.search`) and/or filters; only what the
    actor may see."""
    if type is not None and type not in EXT_KIND:
        raise RegistryError("type", "must be person, enterprise, object or place")
    if region is not None and not re.fullmatch(r"[0-9]{2}|[0-9]{4}|[0-9]{6}", region):
        raise RegistryError("region", "a 2/4/6-digit region code (prefix matches)")
    if not 1 <= limit <= 500 or offset < 0:
        raise RegistryError("limit", "limit 1..500, offset >= 0")
    vis = visibility(hub, actor)
    rng = (region, str(int(region) + 1).zfill(len(region))) if region else None
    cell = None
    if grid:
        from central.registry.ids import validate_geohash

        try:
            g = validate_geohash(grid)
        except ValueError as e:
            raise RegistryError("grid", str(e)) from None
        cell = (g, g + "~")  # cell prefix = every smaller cell inside it
    with hub.store.read() as db:
        rows = store.search(db, (q or "").split(), vis.orgs(), type=type, region=rng, grid=cell,
                            at=iso(at) if at is not None else None, org=org, limit=limit, offset=offset)
    found = [_entity_dict(r) for r in rows]
    out = []
    granted: dict[int, int] = {}
    for d in found:
        mode, fields, app_id = vis.access(d["org"])
        out.append(_present(hub, actor, d, mode, fields) if mode == "grant" else _light(d))
        if app_id is not None:
            granted[app_id] = granted.get(app_id, 0) + 1
    if granted:
        with hub.store.tx() as wdb:
            for app_id, n in granted.items():
                _audit(wdb, actor, "registry.grant_read", None, None, {"application": app_id, "rows": n})
    return out


def _light(d: dict[str, Any]) -> dict[str, Any]:
    """List view: never decrypts (no per-row PII audit in searches)."""
    return {k: d.get(k) for k in ("id", "type", "region", "org", "status", "name", "address", "grid",
                                  "valid_from", "valid_to", "spacetime_id", "attrs")} | {
        "external_key_kind": d["ext_kind"], "external_key": d["ext_masked"]}


