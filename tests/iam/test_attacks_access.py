"""Issue 14, point 2: each attack as it was reproduced (two districts and a street admin), now refused.

Every test here failed on the code before the fix: the attack succeeded, or the answer named another
scope's org path or ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from tests.iam.attackers import API, NEW_PW, PW, STREET, A, B, Cast, id_card
from tests.iam.conftest import Clock, make_hub


@pytest.fixture
def cast(tmp_path: Path, clock: Clock) -> Iterator[Cast]:
    hub = make_hub(tmp_path)
    hub.services["iam"].now = clock
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        yield Cast(hub, c)
    hub.close()


def _login(w: Cast, username: str, password: str) -> tuple[int, Any]:
    r = w.c.post(f"{API}/iam/login", json={"username": username, "password": password})
    return r.status_code, r.json()


# ---- 1. account takeover through user administration ------------------------------------------------

def test_street_admin_cannot_take_over_a_district_admin_homed_in_its_street(cast: Cast) -> None:
    w = cast
    w.user("deputy", STREET, ("district_admin", A))
    r = w.post("/iam/users/deputy/reset-password", w.street, {"password": NEW_PW})
    assert r.status_code == 403, r.text
    assert "district-a" not in r.text
    assert _login(w, "deputy", NEW_PW)[0] == 401 and _login(w, "deputy", PW)[0] == 200  # password unchanged
    for action in ("disable", "enable", "unlock"):
        assert w.post(f"/iam/users/deputy/{action}", w.street).status_code == 403, action
    assert w.post("/iam/bindings", w.street, {"username": "deputy", "role": "street_operator",
                                              "org": STREET}).status_code == 403
    (bid,) = [b["id"] for b in w.ok(w.get("/iam/bindings", w.admin_a)) if b["username"] == "deputy"]
    assert w.c.delete(f"{API}/iam/bindings/{bid}", headers=w.street).status_code == 404  # not even visible
    # An account the street admin does dominate stays manageable.
    w.user("sweeper", STREET, ("street_operator", STREET))
    w.ok(w.post("/iam/users/sweeper/reset-password", w.street, {"password": NEW_PW}))
    w.ok(w.post("/iam/users/sweeper/disable", w.street))
    # The district admin over all of deputy's access may.
    w.ok(w.post("/iam/users/deputy/reset-password", w.admin_a, {"password": NEW_PW}))


def test_district_admin_cannot_manage_users_with_power_elsewhere(cast: Cast) -> None:
    w = cast
    w.user("dual", A, ("street_operator", A), ("street_operator", B))  # also works in district B
    w.user("boss", A, ("city_admin", "/city"))  # a city admin homed in district A
    for name in ("dual", "boss"):
        r = w.post(f"/iam/users/{name}/reset-password", w.admin_a, {"password": NEW_PW})
        assert r.status_code == 403 and "district-b" not in r.text, (name, r.text)
        assert w.post(f"/iam/users/{name}/disable", w.admin_a).status_code == 403, name
        assert w.post(f"/iam/users/{name}/unlock", w.admin_a).status_code == 403, name
    assert _login(w, "boss", PW)[0] == 200
    # bind and unbind are user management too
    assert w.post("/iam/bindings", w.admin_a, {"username": "dual", "role": "auditor", "org": A}).status_code == 403
    (bid,) = [b["id"] for b in w.ok(w.get("/iam/bindings", w.admin_a)) if b["username"] == "dual"]
    assert w.c.delete(f"{API}/iam/bindings/{bid}", headers=w.admin_a).status_code == 403
    # The city admin holds everything dual and boss hold.
    w.ok(w.post("/iam/users/dual/reset-password", w.city, {"password": NEW_PW}))
    w.ok(w.post("/iam/users/boss/disable", w.city2))


def test_api_key_holding_more_cannot_be_revoked_by_a_lesser_admin(cast: Cast) -> None:
    w = cast
    w.ok(w.post("/iam/roles", w.city, {"name": "key_admin", "patterns": ["iam.apikeys.*"]}), 201)
    keyadm = w.token("keyadm", "key_admin", A)  # manages keys in A, holds nothing else
    feed = w.ok(w.post("/iam/apikeys", w.city, {"name": "city-feed", "role": "auditor", "org": A}), 201)
    assert w.c.delete(f"{API}/iam/apikeys/{feed['id']}", headers=keyadm).status_code == 403
    assert w.c.delete(f"{API}/iam/apikeys/{feed['id']}", headers=w.street).status_code == 404  # not its scope
    peer = w.ok(w.post("/iam/apikeys", w.city, {"name": "peer", "role": "key_admin", "org": A}), 201)
    assert w.c.delete(f"{API}/iam/apikeys/{peer['id']}", headers=keyadm).status_code == 200


def test_roles_apply_only_in_the_scope_they_were_made_in(cast: Cast) -> None:
    w = cast
    role = w.ok(w.post("/iam/roles", w.admin_b, {"name": "b_inspector", "patterns": ["video.*"]}), 201)
    assert role["scope"] == B
    w.user("ann", A)
    r = w.post("/iam/bindings", w.city, {"username": "ann", "role": "b_inspector", "org": A})
    assert r.status_code == 403, r.text  # outside the role's scope, even for the city admin
    r = w.post("/iam/bindings", w.city, {"username": "ann", "role": "b_inspector", "org": "/city"})
    assert r.status_code == 403, r.text
    # district A does not see B's roles, and cannot bind them
    assert "b_inspector" not in {x["name"] for x in w.ok(w.get("/iam/roles", w.admin_a))}
    r = w.post("/iam/bindings", w.admin_a, {"username": "ann", "role": "b_inspector", "org": A})
    assert r.status_code == 404 and "district-b" not in r.text
    w.user("bert", B)
    w.ok(w.post("/iam/bindings", w.admin_b, {"username": "bert", "role": "b_inspector", "org": B}), 201)
    # a role grants nothing its creator does not hold
    w.ok(w.post("/iam/roles", w.city, {"name": "role_maker", "patterns": ["iam.roles.*", "video.*"],
                                       "scope": "/city"}), 201)
    maker = w.token("rm", "role_maker", A)
    r = w.post("/iam/roles", maker, {"name": "peeker", "patterns": ["pii.read"]})
    assert r.status_code == 403 and "pii.read" in r.text
    assert w.ok(w.post("/iam/roles", maker, {"name": "watcher", "patterns": ["video.read"]}), 201)["scope"] == A


# ---- 2. devices on someone else's site --------------------------------------------------------------

def test_devices_only_on_sites_of_ones_own_org(cast: Cast) -> None:
    w = cast
    body = {"site": "gate-a", "kind": "camera", "name": "Gate A"}
    first = w.ok(w.post("/devices", w.admin_a, {**body, "device": "cam-a1", "org_path": A}), 201)
    assert first["device"]["org_path"] == A
    r = w.post("/devices", w.admin_b, {**body, "device": "cam-b1", "org_path": B})
    assert r.status_code == 403, r.text
    assert r.json()["field"] == "site" and "district-a" not in r.text
    r = w.post("/devices", w.street, {**body, "device": "cam-s1", "org_path": STREET})  # needs rights over A
    assert r.status_code == 403, r.text
    assert w.ok(w.post("/devices", w.admin_a, {**body, "device": "cam-a2"}), 201)["device"]["org_path"] == A
    assert w.post("/devices", w.city, {**body, "device": "cam-c1", "org_path": B}).status_code == 422
    # a site video already maps to an org is that org's too (its devices open cases there)
    w.ok(w.c.put(f"{API}/video/sites/market-a", headers=w.city, json={"org_path": A}))
    r = w.post("/devices", w.admin_b, {"site": "market-a", "kind": "camera", "name": "M", "org_path": B})
    assert r.status_code == 403, r.text
    w.ok(w.post("/devices", w.admin_b, {"site": "gate-b", "kind": "camera", "name": "Gate B", "org_path": B}), 201)
    assert {d["site"] for d in w.ok(w.get("/devices", w.admin_b))} == {"gate-b"}


# ---- 3. separation of duties ------------------------------------------------------------------------

def _health(w: Cast) -> None:
    w.ok(w.post("/codes/departments", w.city, {"id": "HEALTH", "name": "Health", "org": "/city/health"}), 201)
    w.ok(w.c.post(f"{API}/codes/duties", headers={**w.city, "Content-Type": "text/csv"},
                  content="dept_id,scene_type,description\nHEALTH,clinic.pass,duty\nHEALTH,ward.pass,duty\n"))


APPLICATION = {"dept_id": "HEALTH", "scene_name": "Clinic pass", "scene_type": "clinic.pass", "code_type": "static",
               "entity_type": "person", "purpose": "entry", "share_commitment": True, "validity": "Y"}


def test_whoever_filed_or_edited_a_code_application_may_not_decide_it(cast: Cast) -> None:
    w = cast
    _health(w)
    own = w.ok(w.post("/codes/applications", w.city, APPLICATION), 201)  # the city admin files for itself
    for approve in (True, False):
        r = w.post(f"/codes/applications/{own['id']}/decision", w.city, {"approve": approve, "code_system": "HC"})
        assert r.status_code == 403 and "separation of duties" in r.text, r.text
    assert w.ok(w.post(f"/codes/applications/{own['id']}/decision", w.city2,
                       {"approve": True, "code_system": "HC"}))["status"] == "approved"
    # an editor is a maker too
    nurse = w.token("nurse", "department_issuer", "/city/health")
    app = w.ok(w.post("/codes/applications", nurse, {**APPLICATION, "scene_type": "ward.pass",
                                                      "share_commitment": False}), 201)
    w.ok(w.c.patch(f"{API}/codes/applications/{app['id']}", headers=w.city, json={"share_commitment": True}))
    r = w.post(f"/codes/applications/{app['id']}/decision", w.city, {"approve": True, "code_system": "HW"})
    assert r.status_code == 403 and "edited" in r.text, r.text
    assert w.ok(w.post(f"/codes/applications/{app['id']}/decision", w.city2,
                       {"approve": True, "code_system": "HW"}))["status"] == "approved"


def test_whoever_filed_a_url_may_not_audit_it(cast: Cast) -> None:
    w = cast
    _health(w)
    url = w.ok(w.post("/codes/urls", w.city, {"dept_id": "HEALTH", "url": "https://health.example.gov/c"}), 201)
    r = w.post(f"/codes/urls/{url['id']}/decision", w.city, {"approve": True})
    assert r.status_code == 403 and "separation of duties" in r.text, r.text
    assert w.ok(w.post(f"/codes/urls/{url['id']}/decision", w.city2, {"approve": True}))["status"] == "approved"


def test_whoever_filed_a_usage_application_may_not_decide_it(cast: Cast) -> None:
    w = cast
    body = {"applicant_org": B, "owner_org": A, "purpose": "fire inspection", "fields": ["name"],
            "valid_from": "2020-01-01T00:00:00Z", "valid_to": "2099-01-01T00:00:00Z"}
    app = w.ok(w.post("/registry/applications", w.city, body), 201)
    for verb in ("approve", "reject"):
        r = w.post(f"/registry/applications/{app['id']}/{verb}", w.city, {})
        assert r.status_code == 403 and "separation of duties" in r.text, r.text
    assert w.ok(w.post(f"/registry/applications/{app['id']}/approve", w.admin_a, {}))["status"] == "approved"


# ---- 4. what other scopes may learn -----------------------------------------------------------------

def test_registry_answers_out_of_scope_like_missing(cast: Cast) -> None:
    w = cast
    person = w.ok(w.post("/registry/entities", w.admin_a, {"type": "person", "region": "330106", "name": "Li Si",
                                                          "external_key": id_card(7)}), 201)
    foreign = w.post("/registry/lookup", w.admin_b, {"type": "person", "external_key": id_card(7)})
    unknown = w.post("/registry/lookup", w.admin_b, {"type": "person", "external_key": id_card(8)})
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    assert person["id"] not in foreign.text and "district-a" not in foreign.text
    r = w.get(f"/registry/entities/{person['id']}", w.admin_b)
    assert r.status_code == 404 and "district-a" not in r.text
    # registering or pushing the same ID card from B says neither whose nor which record it is
    r = w.post("/registry/entities", w.admin_b, {"type": "person", "region": "330106", "name": "x",
                                                 "external_key": id_card(7)})
    assert r.status_code == 409 and person["id"] not in r.text and "district-a" not in r.text
    rep = w.ok(w.post("/registry/push", w.admin_b, {"org": B, "records": [
        {"type": "person", "region": "330106", "name": "x", "external_key": id_card(7)}]}))
    assert rep["errors"] and "district-a" not in str(rep) and person["id"] not in str(rep)


def test_codes_url_filings_and_video_sites_are_scoped(cast: Cast) -> None:
    w = cast
    w.ok(w.post("/codes/departments", w.city, {"id": "ROADSA", "name": "Roads A", "org": A}), 201)
    w.ok(w.post("/codes/urls", w.admin_a, {"dept_id": "ROADSA", "url": "https://roads-a.example.gov/c"}), 201)
    seen_b = w.ok(w.get("/codes/urls", w.admin_b))
    assert seen_b["filed"] == [] and "roads-a" not in str(seen_b)
    assert [u["url"] for u in w.ok(w.get("/codes/urls", w.admin_a))["filed"]] == ["https://roads-a.example.gov/c"]
    w.ok(w.c.put(f"{API}/video/sites/gate-a", headers=w.city, json={"org_path": A}))
    r = w.get("/video/sites/gate-a", w.admin_b)
    assert r.status_code == 404 and "district-a" not in r.text
    assert w.ok(w.get("/video/sites/gate-a", w.admin_a))["org_path"] == A


def test_bridge_rejects_scoped_by_device_org(cast: Cast) -> None:
    from central.bridge import store as bridge_store

    w = cast
    w.ok(w.post("/devices", w.admin_a, {"site": "gate-a", "kind": "camera", "name": "G", "device": "cam-a1",
                                        "org_path": A}), 201)
    w.ok(w.post("/devices", w.admin_b, {"site": "gate-b", "kind": "camera", "name": "G", "device": "cam-b1",
                                        "org_path": B}), 201)
    with w.hub.store.tx() as db:  # what the bridge stores for payloads it refuses
        bridge_store.insert_rejects(db, [
            ("2030-01-01T00:00:00Z", "city/v1/gate-a/cam-a1/event/fire", "schema", "bad"),
            ("2030-01-01T00:00:01Z", "city/v1/gate-b/cam-b1/event/fire", "schema", "bad"),
            ("2030-01-01T00:00:02Z", "city/v1/ghost/dev-x/event/fire", "unknown_device", "?"),
        ])
    op_b = w.token("op-b", "street_operator", B + "/street-9")
    op_b2 = w.token("op-b2", "street_operator", B)
    assert w.ok(w.get("/bridge/rejects", op_b)) == []  # nothing of its street
    seen = w.ok(w.get("/bridge/rejects", op_b2))
    assert [r["topic"] for r in seen] == ["city/v1/gate-b/cam-b1/event/fire"]
    assert "gate-a" not in str(w.ok(w.get("/bridge/stats", op_b2)))
    assert len(w.ok(w.get("/bridge/rejects", w.city))) == 3  # unknown devices: city-wide readers only


def test_unknown_and_real_names_answer_alike_at_login(cast: Cast) -> None:
    w = cast
    w.user("bob", A)
    real = [_login(w, "bob", "Wrong-Pass-0000") for _ in range(6)]
    ghost = [_login(w, "nobody-here", "Wrong-Pass-0000") for _ in range(6)]
    assert [c for c, _ in real] == [401] * 5 + [423]
    assert real == ghost  # same statuses, same bodies
    # a correct password does not open a locked account, and says the same as for a ghost
    assert _login(w, "bob", PW) == _login(w, "nobody-here", PW)
