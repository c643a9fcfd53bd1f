"""Every route of the OpenAPI document, called by a street admin of district A against district B's objects:
no answer may tell it anything of district B it did not send itself (B's org path, B's usernames, base
ids, device and site names, department ids, filed URLs, the ID-card number's owner...).

Parameters are filled from their names (path / query / JSON body), so a route added later is walked with
no edit here. Issue 14, point 2, "what other scopes may learn"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from tests.helpers import auth, token_for
from tests.iam.attackers import API, PW, STREET, B, Cast, id_card
from tests.iam.conftest import make_hub

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Public by design: the signed trust list devices pin names every department key (offline verification).
PUBLIC = {("GET", "/api/v1/codes/trust"): {"BEEDEPT"}}


class BWorld:
    """District B's objects in every capability, and the strings that identify them."""

    def __init__(self, w: Cast) -> None:
        self.w = w
        hub, iam = w.hub, w.iam
        admin_b = iam.principal_for_user(iam.user("admin-b")["id"])
        iam.ensure_org_chain(f"{B}/street-9")
        iam.create_user(admin_b, "bob-bee", PW, f"{B}/street-9", phone="13900000000")
        self.binding = iam.grant(admin_b, "bob-bee", "street_operator", f"{B}/street-9")["id"]
        self.key = iam.create_apikey(admin_b, "bee-system", "auditor", B)["id"]
        w.ok(w.post("/devices", w.admin_b, {"site": "site-bee", "kind": "camera", "name": "Bee gate",
                                            "device": "cam-bee", "org_path": B}), 201)
        w.ok(w.c.put(f"{API}/video/sites/site-bee", headers=w.city, json={"org_path": B}))
        self.route = w.ok(w.post("/video/routes", w.admin_b, {"org_prefix": B, "department": "beefire"}), 201)["id"]
        self.person = w.ok(w.post("/registry/entities", w.admin_b, {
            "type": "person", "region": "330106", "name": "Wang Beeman", "external_key": id_card(42),
            "local_id": "bee-local-1"}), 201)["id"]
        self.place = w.ok(w.post("/registry/entities", w.admin_b, {
            "type": "place", "region": "330106", "name": "Beehive Hall"}), 201)["id"]
        w.ok(w.post("/codes/departments", w.city, {"id": "BEEDEPT", "name": "Bee dept", "org": B}), 201)
        w.ok(w.c.post(f"{API}/codes/duties", headers={**w.city, "Content-Type": "text/csv"},
                      content="dept_id,scene_type,description\nBEEDEPT,hive.pass,duty\n"))
        self.app = w.ok(w.post("/codes/applications", w.admin_b, {
            "dept_id": "BEEDEPT", "scene_name": "Hive pass", "scene_type": "hive.pass", "code_type": "static",
            "entity_type": "person", "purpose": "entry", "share_commitment": True, "validity": "Y"}), 201)["id"]
        self.url = w.ok(w.post("/codes/urls", w.admin_b, {"dept_id": "BEEDEPT",
                                                          "url": "https://bee.example.gov/c"}), 201)["id"]
        from central.bridge import store as bridge_store

        with hub.store.tx() as db:
            bridge_store.insert_rejects(db, [("2030-01-01T00:00:00Z", "city/v1/site-bee/cam-bee/event/fire",
                                              "schema", "bad payload")])
        self.secrets = ["district-b", "bob-bee", "bee-system", "site-bee", "cam-bee", "beefire", self.person,
                        self.place, "Wang Beeman", "Beehive Hall", id_card(42), "bee-local-1", "BEEDEPT",
                        "Hive pass", "bee.example.gov"]

    def value(self, name: str, schema: dict[str, Any], where: str) -> Any:
        n = name.lower()
        by_name: dict[str, Any] = {
            "path": B.lstrip("/"), "username": "bob-bee", "binding_id": self.binding, "key_id": self.key,
            "site": "site-bee", "device": "cam-bee", "entity_id": self.person, "src": self.place,
            "dst": self.place, "base_id": self.person, "local_id": "bee-local-1", "dept_id": "BEEDEPT",
            "app_id": self.app, "application_id": self.app, "url_id": self.url, "route_id": self.route,
            "external_key": id_card(42), "identity_id": self.person, "owner_org": B,
        }
        if n in by_name:
            return by_name[n]
        if n in {"org", "org_path", "parent", "scope", "org_prefix", "applicant_org"} or n.endswith("_org"):
            return B
        if "enum" in schema:
            return schema["enum"][0]
        t = schema.get("type") or next((s.get("type") for s in schema.get("anyOf", []) if s.get("type")), "string")
        return {"integer": 1, "number": 1, "boolean": False, "array": [], "object": {}}.get(t, "x-test-1")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[BWorld]:
    hub = make_hub(tmp_path)
    with TestClient(create_app(hub=hub, start_bridge=False), raise_server_exceptions=False) as c:
        yield BWorld(Cast(hub, c))
    hub.close()


def _body(world: BWorld, spec: dict[str, Any], op: dict[str, Any]) -> Any:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    out: dict[str, Any] = {}
    for prop, ps in schema.get("properties", {}).items():
        if "$ref" in ps:
            continue
        v = world.value(prop, ps, "body")
        if prop in schema.get("required", []) or v != world.value("", ps, "body"):
            out[prop] = v
    return out


def test_out_of_scope_street_admin_learns_nothing_of_another_district(world: BWorld) -> None:
    w = world.w
    spec = w.c.app.openapi()  # type: ignore[attr-defined]
    leaks: list[str] = []
    walked = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method.upper() not in METHODS:
                continue
            url, query = path, []
            for p in op.get("parameters", []):
                v = world.value(p["name"], p.get("schema", {}), p["in"])
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", str(v))
                elif p["in"] == "query" and (p.get("required") or v != world.value("", p.get("schema", {}), "q")):
                    query.append(f"{p['name']}={v}")
            url += "?" + "&".join(query) if query else ""
            body = _body(world, spec, op)
            # A fresh session each time: logout / change-password must not end the next request's.
            tok = token_for(w.hub, "street-a", "district_admin", STREET)
            r = w.c.request(method.upper(), url, json=body, headers=auth(tok))
            walked += 1
            sent = url + json.dumps(body)
            told = [s for s in world.secrets if s not in sent and s in r.text
                    and s not in PUBLIC.get((method.upper(), path), set())]
            if told:
                leaks.append(f"{method.upper()} {url} -> {r.status_code} tells {told}: {r.text[:200]}")
    assert walked >= 100  # every route of every capability, not an empty table
    assert not leaks, "\n".join(leaks)
    # The same world seen from district B itself is full of these strings: the walk can see a leak.
    b = auth(token_for(w.hub, "admin-b", "district_admin", B))
    assert "bee.example.gov" in w.c.get(f"{API}/codes/urls", headers=b).text
    assert "district-b" in w.c.get(f"{API}/video/sites/site-bee", headers=b).text
