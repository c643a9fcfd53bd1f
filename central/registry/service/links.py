"""Registry service: links."""

from __future__ import annotations

import logging
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from central.registry import store
from central.registry.models import (
    BUSINESS,
    PHYSICAL,
)
from central.registry.service.common import (
    MAX_DEPTH,
    Actor,
    Conflict,
    NotFound,
    RegistryError,
    _audit,
    _deny,
    _id_arg,
    _now,
    _org_or_404,
)
from central.registry.service.feed import append_feed
from central.registry.service.read import Visibility, get_entity, visibility

if TYPE_CHECKING:
    from central.hub import Hub

log = logging.getLogger("citybrain.registry")



# ---------------------------------------------------------------- links and traversal

def add_link(hub: Hub, actor: Actor, src: str, rel: str, dst: str) -> dict[str, Any]:
    src, dst = _id_arg(src, "src"), _id_arg(dst, "dst")
    cat = "physical" if rel in PHYSICAL else "business" if rel in BUSINESS else None
    if cat is None:
        raise RegistryError("rel", f"one of {', '.join(PHYSICAL + BUSINESS)}")
    src_org = _org_or_404(hub, src, "src")
    if not actor.allowed("registry.write", src_org):
        raise _deny(hub, actor, "registry.write", src_org, src, "src", NotFound("src", f"{src} is not registered"))
    with hub.store.tx() as db:
        s = store.entity_fields(db, src, "type", "org", "rid")
        d = store.entity_fields(db, dst, "type", "rid")
        if d is None:
            raise NotFound("dst", f"{dst} is not registered")
        assert s is not None
        if s["type"] not in ("object", "place"):
            raise RegistryError("src", f"a {s['type']} is a link target, not a source")
        if cat == "physical" and d["type"] not in ("object", "place"):
            raise RegistryError("dst", f"{rel} needs a parent object or place, {dst} is a {d['type']}")
        if cat == "business" and d["type"] not in ("enterprise", "person"):
            raise RegistryError("dst", f"{rel} needs an enterprise or person, {dst} is a {d['type']}")
        if cat == "physical":
            if src == dst:
                raise Conflict("dst", "an entity cannot be its own parent")
            # walk up from the new parent: meeting src there means the link would close a loop
            if store.would_cycle(db, d["rid"], s["rid"]):
                raise Conflict("dst", f"{dst} already lies under {src}: the link would make a cycle")
        link_id = store.insert_link(db, src, rel, dst, cat, s["org"], actor.name, _now(), s["rid"], d["rid"])
        if link_id is None:
            raise Conflict("rel", f"{src} {rel} {dst} already exists")
        link = {"id": link_id, "src": src, "rel": rel, "dst": dst, "category": cat}
        append_feed(db, "link.create", src, link, s["org"])
        _audit(db, actor, "registry.link", src, s["org"], link)
        return link


def remove_link(hub: Hub, actor: Actor, link_id: int) -> dict[str, Any]:
    with hub.store.read() as db:
        r = store.link_owner(db, link_id)
    if r is None:
        raise NotFound("link_id", f"no link {link_id}")
    if not actor.allowed("registry.write", r["org"]):
        raise _deny(hub, actor, "registry.write", r["org"], r["src"], "link_id",
                    NotFound("link_id", f"no link {link_id}"))
    with hub.store.tx() as db:
        lk = store.link(db, link_id)
        if lk is None:
            raise NotFound("link_id", f"no link {link_id}")
        src, cat, org = lk["src"], lk["category"], lk["org"]
        if lk["src_type"] == "object" and store.other_links(db, lk["src_rid"], cat, link_id) == 0:
            raise Conflict("link_id", f"{src} would lose its last {cat} link (an object needs one)")
        store.delete_link(db, link_id)
        link = {"id": link_id, "src": src, "rel": lk["rel"], "dst": lk["dst"], "category": cat}
        append_feed(db, "link.delete", src, link, org)
        _audit(db, actor, "registry.unlink", src, org, link)
        return link


def _depth(depth: int) -> int:
    if not 1 <= depth <= MAX_DEPTH:
        raise RegistryError("depth", f"1..{MAX_DEPTH}")
    return depth


_ORG_OF_ROW = itemgetter(3)


def _walk(hub: Hub, actor: Actor, eid: str, depth: int, limit: int, down: bool,
          type: str | None = None) -> dict[str, Any]:
    eid = _id_arg(eid)
    _depth(depth)
    if not 1 <= limit <= 100000:
        raise RegistryError("limit", "1..100000")
    rid = _visible_rid(hub, actor, eid)
    vis = visibility(hub, actor)
    with hub.store.read() as db:
        rows = store.walk(db, rid, depth, limit, down, vis.orgs(), type)
    show = _name_visibility(vis)
    # a walk returns thousands of rows from a handful of orgs: decide per org once, then build the items in
    # one comprehension (the per-row branch and call were a quarter of a 10k-row walk)
    orgs = set(map(_ORG_OF_ROW, rows))
    named = {org for org in orgs if show(org)}
    if named == orgs:
        items = [{"id": i, "type": t, "depth": d, "org": o, "name": n} for i, t, n, o, d in rows]
    else:
        items = [{"id": i, "type": t, "depth": d, "org": o, "name": n} if o in named
                 else {"id": i, "type": t, "depth": d, "org": o} for i, t, n, o, d in rows]
    return {"id": eid, "depth": depth, "items": items, "truncated": len(items) == limit}


def _visible_rid(hub: Hub, actor: Actor, eid: str) -> int:
    """The key (rid) that links refer to, of an entity that must exist and be visible to the actor."""
    get_entity(hub, actor, eid)
    with hub.store.read() as db:
        rid = store.rid_of(db, eid)
    assert rid is not None  # entities are never deleted
    return rid


def _name_visibility(vis: Visibility) -> Callable[[str], bool]:
    """org -> may the name be shown; memoised because a walk returns thousands of rows from few orgs."""
    memo: dict[str, bool] = {}

    def show(org: str) -> bool:
        if org not in memo:
            mode, fields, _ = vis.access(org)
            memo[org] = mode == "own" or bool(fields and "name" in fields)
        return memo[org]

    return show


def ancestors(hub: Hub, actor: Actor, eid: str, depth: int = 16, limit: int = 1000) -> dict[str, Any]:
    return _walk(hub, actor, eid, depth, limit, down=False)


def descendants(hub: Hub, actor: Actor, eid: str, depth: int = 16, limit: int = 10000,
                type: str | None = None) -> dict[str, Any]:
    return _walk(hub, actor, eid, depth, limit, down=True, type=type)


def links_of(hub: Hub, actor: Actor, eid: str) -> dict[str, Any]:
    """Direct links both ways (outgoing: this entity's parents/owners; incoming: its children/holdings)."""
    eid = _id_arg(eid)
    rid = _visible_rid(hub, actor, eid)
    # Incoming links come from other departments' entities too: only those the actor may see.
    orgs = visibility(hub, actor).orgs()
    with hub.store.read() as db:
        out = store.links_out(db, rid)
        inc = store.links_in(db, rid, orgs)
    return {"id": eid, "outgoing": out, "incoming": inc}


def linked(hub: Hub, actor: Actor, eid: str, depth: int = 2, limit: int = 10000) -> dict[str, Any]:
    """Everything a person or enterprise is linked to: the objects/places with a business link to it
    (depth 1) and, down to `depth`, what physically lies under those."""
    eid = _id_arg(eid)
    _depth(depth)
    rid = _visible_rid(hub, actor, eid)
    vis = visibility(hub, actor)
    with hub.store.read() as db:
        rows = store.linked(db, rid, depth, limit, vis.orgs())
    show = _name_visibility(vis)
    items = []
    for r in rows:
        item = {"id": r[0], "type": r[1], "depth": r[4], "via": r[5], "org": r[3]}
        if show(r[3]):
            item["name"] = r[2]
        items.append(item)
    return {"id": eid, "depth": depth, "items": items, "truncated": len(items) == limit}


