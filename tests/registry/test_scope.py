"""Scope: departments see and change only their subtree (outside it an entity is "not found"); usage
applications grant a projected, audited read."""

from __future__ import annotations

from fastapi.testclient import TestClient

from central.hub import Hub
from central.registry.store import tables as tb
from tests.helpers import token_for
from tests.registry.conftest import AUDIT, Api, count, uscc


def _denials(hub: Hub) -> int:
    return count(hub, AUDIT, AUDIT.c.action.in_(("denied", "registry.denied")))


def test_other_district_is_denied_and_audited(hub: Hub, admin_b: Api, city: dict[str, str]) -> None:
    before = _denials(hub)
    assert admin_b.get(f"/entities/{city['hydrant']}").status_code == 404
    assert admin_b.patch(f"/entities/{city['hydrant']}", {"name": "mine now"}).status_code == 404
    r = admin_b.post("/entities", {"type": "place", "region": "330106", "name": "x", "org": "/city/district-a"})
    assert r.status_code == 403 and r.json()["field"] == "org"
    assert admin_b.post("/links", {"src": city["hydrant"], "rel": "attached_to",
                                   "dst": city["building"]}).status_code == 404
    assert admin_b.get(f"/entities/{city['building']}/descendants").status_code == 404
    assert admin_b.ok("get", "/search", params={"q": "hydrant"})["items"] == []
    assert admin_b.ok("get", "/feed/page")["items"] == []
    assert _denials(hub) >= before + 5
    # but b can register in its own district, linking to a's (city-wide) identifiers
    own = admin_b.ok("post", "/entities", {"type": "object", "region": "330108", "name": "bench", "links": [
        {"rel": "attached_to", "target": city["building"]}, {"rel": "owned_by", "target": city["enterprise"]}]})
    assert own["org"] == "/city/district-b"


def test_roles_without_write_or_feed_are_refused(hub: Hub, client: TestClient, city: dict[str, str]) -> None:
    issuer = Api(client, token_for(hub, "issuer", role="department_issuer", org="/city/district-a"))
    assert issuer.ok("get", f"/entities/{city['building']}")["id"] == city["building"]
    assert issuer.post("/entities", {"type": "place", "region": "330106", "name": "x"}).status_code == 403
    assert issuer.get("/feed/page").status_code == 403
    assert client.get("/api/v1/registry/search").status_code == 401


def test_usage_application_grants_projected_audited_read(hub: Hub, client: TestClient, admin_a: Api,
                                                         admin_b: Api, city: dict[str, str]) -> None:
    body = {"owner_org": "/city/district-a", "purpose": "fire inspection planning", "fields": ["name", "grid"],
            "valid_from": "2020-01-01T00:00:00Z", "valid_to": "2099-01-01T00:00:00Z"}
    app = admin_b.ok("post", "/applications", body)
    assert app["status"] == "pending" and app["applicant_org"] == "/city/district-b"
    assert admin_b.get(f"/entities/{city['hydrant']}").status_code == 404  # pending grants nothing
    # b cannot approve its own application to a's data; a can
    assert admin_b.post(f"/applications/{app['id']}/approve").status_code == 404
    assert app["id"] in {x["id"] for x in admin_a.ok("get", "/applications", params={"status": "pending"})["items"]}
    admin_a.ok("post", f"/applications/{app['id']}/approve", {"reason": "ok for 2025 plan"})
    seen = admin_b.ok("get", f"/entities/{city['hydrant']}")
    assert seen["access"] == "grant" and seen["name"].startswith("Hydrant") and seen["grid"] == "wtmkq8v1"
    assert "attrs" not in seen and "address" not in seen  # only granted fields
    person = admin_b.ok("get", f"/entities/{city['person']}")
    assert "external_key" not in person
    hits = admin_b.ok("get", "/search", params={"q": "hydrant"})["items"]
    assert [h["id"] for h in hits] == [city["hydrant"]] and "attrs" not in hits[0]
    assert count(hub, AUDIT, AUDIT.c.action == "registry.grant_read") >= 3
    assert count(hub, AUDIT, AUDIT.c.action == "registry.application.approved") == 1
    # a decided application cannot be decided again
    assert admin_a.post(f"/applications/{app['id']}/reject").status_code == 409


def test_rejected_or_expired_application_grants_nothing(hub: Hub, admin_a: Api, admin_b: Api,
                                                        city: dict[str, str]) -> None:
    base = {"owner_org": "/city/district-a", "purpose": "curious", "fields": ["name"]}
    rej = admin_b.ok("post", "/applications", {**base, "valid_from": "2020-01-01", "valid_to": "2099-01-01"})
    admin_a.ok("post", f"/applications/{rej['id']}/reject", {"reason": "no purpose"})
    old = admin_b.ok("post", "/applications", {**base, "valid_from": "2020-01-01", "valid_to": "2021-01-01"})
    admin_a.ok("post", f"/applications/{old['id']}/approve")
    assert admin_b.get(f"/entities/{city['enterprise']}").status_code == 404
    r = admin_b.post("/applications", {**base, "owner_org": "/city/district-b", "valid_from": "2020-01-01",
                                       "valid_to": "2099-01-01"})
    assert r.status_code == 400 and r.json()["field"] == "owner_org"
    r = admin_b.post("/applications", {**base, "fields": ["phone"], "valid_from": "2020-01-01",
                                       "valid_to": "2099-01-01"})
    assert r.status_code == 422


def test_push_is_scoped_too(admin_b: Api, city: dict[str, str]) -> None:
    r = admin_b.ok("post", "/push", {"org": "/city/district-a", "records": [
        {"type": "enterprise", "region": "330106", "name": "sneaky", "external_key": uscc(99)}]})
    assert r["created"] == 0 and r["errors"][0]["field"] == "org"


def test_bulk_import_into_another_scope_is_denied(hub: Hub, client: TestClient, admin_b: Api) -> None:
    text = "type,region,name\nplace,330106,kiosk\n"
    r = client.post("/api/v1/registry/import", params={"org": "/city/district-a"}, content=text, headers=admin_b.h)
    assert r.status_code == 403 and r.json()["field"] == "org"
    r = client.post("/api/v1/registry/import", content="type,region,name,org\nplace,330106,kiosk,/city/district-a\n",
                    headers=admin_b.h)
    assert r.json()["created"] == 0 and r.json()["errors"][0]["field"] == "org"
    assert count(hub, tb.entities) == 0
