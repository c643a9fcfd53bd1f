"""Table-driven over every route the app serves under /api/v1 (all capabilities, present and future):

1. statically, each route carries `require(...)`, `authenticated`, or an explicit `public(...)` marker;
2. without credentials every non-public route answers 401;
3. a district-A admin asking for district-B things gets 404 (org / known iam ids in the path: out of scope
   means "not found"), never a 2xx
   for a write whose body names district B, and never sees district B in a list it may read.
Path parameters are filled from their names (org/path -> district B, username/binding_id/key_id -> seeded
district-B iam objects) or from their schema type, so a new router is covered with no edit here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from central.app import create_app
from central.hub import Hub
from central.iam.deps import authenticated, current_principal
from tests.helpers import auth, token_for
from tests.iam.conftest import make_hub

B = "/city/district-b"
ORG_NAMES = {"org", "org_path", "path", "parent", "scope", "site_org"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _guards(route: APIRoute) -> tuple[bool, bool]:
    """(has an auth dependency, is marked public) anywhere in the route's dependency tree."""
    found_auth = found_public = False
    stack = list(route.dependant.dependencies)
    while stack:
        d = stack.pop()
        call = d.call
        if getattr(call, "iam_permission", None) or call in (authenticated, current_principal):
            found_auth = True
        if getattr(call, "iam_public", None):
            found_public = True
        stack.extend(d.dependencies)
    return found_auth, found_public


def _api_routes(app: FastAPI) -> Iterator[tuple[str, APIRoute]]:
    """(OpenAPI path, APIRoute) of every route, including those of included routers. FastAPI ≥ 0.13x
    keeps included routers lazily (`iter_route_contexts`); older ones flatten them into app.routes."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI
        for r in app.routes:
            if isinstance(r, APIRoute):
                yield r.path_format, r
        return
    for ctx in iter_route_contexts(app.routes):
        r = ctx.original_route
        if isinstance(r, APIRoute):
            yield str(ctx.path_format), r


class World:
    def __init__(self, hub: Hub, app: FastAPI, client: TestClient) -> None:
        self.hub, self.app, self.client = hub, app, client
        svc = hub.services["iam"]
        token_for(hub, "admin-b", "district_admin", B)
        admin_b = svc.principal_for_user(svc.user("admin-b")["id"])
        svc.ensure_org_chain(f"{B}/street-9")
        svc.create_user(admin_b, "bob-b", "Bob-Pass-2024!", f"{B}/street-9", phone="13900000000")
        self.binding_b = svc.grant(admin_b, "bob-b", "street_operator", f"{B}/street-9")["id"]
        self.key_b = svc.create_apikey(admin_b, "b-system", "auditor", B)["id"]
        self.spec = app.openapi()

    def value(self, name: str, schema: dict[str, Any], iam: bool = False) -> tuple[Any, bool]:
        """A value for a parameter, and whether it points at a district-B object."""
        n = name.lower()
        if n in ORG_NAMES or n.endswith("_org"):
            return (B.lstrip("/") if n == "path" else B), True
        if iam and n == "username":
            return "bob-b", True
        if iam and n == "binding_id":
            return self.binding_b, True
        if iam and n == "key_id":
            return self.key_b, True
        t = schema.get("type") or next((s.get("type") for s in schema.get("anyOf", []) if s.get("type")), "string")
        return {"integer": 1, "number": 1, "boolean": False, "array": []}.get(t, "x-test-1"), False

    def body(self, op: dict[str, Any]) -> tuple[Any, bool]:
        content = op.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is None:
            return None, False
        if "$ref" in schema:
            schema = self.spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        out: dict[str, Any] = {}
        names_b = False
        for prop, ps in schema.get("properties", {}).items():
            if "$ref" in ps:
                continue
            v, is_b = self.value(prop, ps)
            if is_b or prop in schema.get("required", []):
                out[prop] = v
                names_b |= is_b and prop != "username"
        return out, names_b

    def cases(self) -> Iterator[tuple[str, str, APIRoute, dict[str, Any]]]:
        for path, route in _api_routes(self.app):
            if not path.startswith("/api/v1"):
                continue
            for m in sorted(route.methods & set(METHODS)):
                op = self.spec["paths"].get(path, {}).get(m.lower(), {})
                yield m, path, route, op

    def url(self, path: str, op: dict[str, Any]) -> tuple[str, bool, bool]:
        """(url, a path parameter names a district-B object, a query parameter names district B)"""
        path_b = query_b = False
        query: list[str] = []
        iam = path.startswith("/api/v1/iam/")
        for p in op.get("parameters", []):
            v, b = self.value(p["name"], p.get("schema", {}), iam)
            if p["in"] == "path":
                path = path.replace("{" + p["name"] + "}", str(v))
                path_b |= b
            elif p["in"] == "query" and (b or p.get("required")):
                query.append(f"{p['name']}={v}")
                query_b |= b
        return path + ("?" + "&".join(query) if query else ""), path_b, query_b


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    hub = make_hub(tmp_path)
    app = create_app(hub=hub, start_bridge=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield World(hub, app, c)
    hub.close()


def test_every_route_declares_auth_or_public(world: World) -> None:
    missing = []
    for m, path, route, _op in world.cases():
        has_auth, is_public = _guards(route)
        if not (has_auth or is_public):
            missing.append(f"{m} {path}")
    assert not missing, f"routes without require()/authenticated/public(): {missing}"


def test_no_route_reachable_without_credentials(world: World) -> None:
    wrong = []
    n = 0
    for m, path, route, op in world.cases():
        if _guards(route)[1]:
            continue
        url, _, _ = world.url(path, op)
        body, _ = world.body(op)
        r = world.client.request(m, url, json=body if body is not None else None)
        n += 1
        if r.status_code != 401:
            wrong.append(f"{m} {url} -> {r.status_code}")
    assert n >= 20  # iam alone has more; guards against an empty table
    assert not wrong, wrong


def test_district_a_admin_cannot_touch_district_b(world: World) -> None:
    wrong = []
    checked_b = 0
    for m, path, route, op in world.cases():
        if _guards(route)[1]:
            continue
        url, path_is_b, query_is_b = world.url(path, op)
        body, body_is_b = world.body(op)
        # A fresh session each time: logout / change-password in the table must not end the next request's.
        tok = token_for(world.hub, "admin-a", "district_admin", "/city/district-a")
        r = world.client.request(m, url, json=body if body is not None else None, headers=auth(tok))
        if r.status_code >= 500:
            wrong.append(f"{m} {url} -> {r.status_code} (server error)")
        elif path_is_b:
            checked_b += 1
            if r.status_code != 404:
                wrong.append(f"{m} {url} -> {r.status_code}, expected 404")
        elif body_is_b:
            checked_b += 1
            if r.is_success:
                wrong.append(f"{m} {url} body={body} -> {r.status_code}, expected a refusal")
        elif (m == "GET" or query_is_b) and r.is_success and "district-b" in r.text:
            # a list filtered by a district-B org may answer 403 or an empty/scoped result, never B's rows
            wrong.append(f"GET {url} leaks district-B data")
    assert checked_b >= 12
    assert not wrong, "\n".join(wrong)
    # The same requests by district B's own admin are not refused: the 404s above are about scope.
    b = token_for(world.hub, "admin-b", "district_admin", B)
    assert world.client.get("/api/v1/iam/users/bob-b", headers=auth(b)).status_code == 200
    assert world.client.get("/api/v1/iam/orgs/city/district-b", headers=auth(b)).status_code == 200
