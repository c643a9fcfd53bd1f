"""Delegation: only roles you hold, only inside your subtree; revocation and expiry cascade."""

from __future__ import annotations

from fastapi.testclient import TestClient

from central.hub import Hub
from tests.helpers import auth, token_for
from tests.iam.conftest import Clock

IAM = "/api/v1/iam"
PW = "Initial-Pass-2024"


def _user(c: TestClient, tok: str, name: str, org: str) -> None:
    r = c.post(f"{IAM}/users", headers=auth(tok), json={"username": name, "password": PW, "org": org})
    assert r.status_code == 201, r.text


def _session(hub: Hub, name: str) -> str:
    svc = hub.services["iam"]
    return svc.new_session(svc.user(name)["id"])


def test_district_admin_delegates_inside_subtree_only(ihub: Hub, iclient: TestClient) -> None:
    city = token_for(ihub, "root", "city_admin", "/city")
    ihub.services["iam"].ensure_org_chain("/city/district-a/street-1")
    ihub.services["iam"].ensure_org_chain("/city/district-b")
    _user(iclient, city, "dana", "/city/district-a")
    r = iclient.post(f"{IAM}/bindings", headers=auth(city),
                     json={"username": "dana", "role": "district_admin", "org": "/city/district-a"})
    assert r.status_code == 201, r.text
    assert r.json()["parent_id"] is not None  # delegated from root's city binding
    dana = _session(ihub, "dana")
    _user(iclient, dana, "sam", "/city/district-a/street-1")
    ok = iclient.post(f"{IAM}/bindings", headers=auth(dana),
                      json={"username": "sam", "role": "street_operator", "org": "/city/district-a/street-1"})
    assert ok.status_code == 201, ok.text
    outside = iclient.post(f"{IAM}/bindings", headers=auth(dana),
                           json={"username": "sam", "role": "street_operator", "org": "/city/district-b"})
    assert outside.status_code == 404  # outside her scope: "not found", nothing about it
    assert "district-b" not in outside.text
    above = iclient.post(f"{IAM}/bindings", headers=auth(dana),
                         json={"username": "sam", "role": "street_operator", "org": "/city"})
    assert above.status_code == 403
    # A user outside her subtree cannot even be created by her.
    r = iclient.post(f"{IAM}/users", headers=auth(dana),
                     json={"username": "eve", "password": PW, "org": "/city/district-b"})
    assert r.status_code == 404  # outside her scope: not found
    # Each refusal is in the audit log.
    denials = [a for a in iclient.get(f"{IAM}/audit?limit=1000", headers=auth(city)).json() if a["action"] == "denied"]
    assert len(denials) >= 3


def test_only_roles_you_hold(ihub: Hub, iclient: TestClient) -> None:
    city = token_for(ihub, "root", "city_admin", "/city")
    ihub.services["iam"].ensure_org_chain("/city/district-a")
    r = iclient.post(f"{IAM}/roles", headers=auth(city),
                     json={"name": "grantor", "patterns": ["iam.*", "video.read", "!pii.read"]})
    assert r.status_code == 201, r.text
    assert iclient.post(f"{IAM}/roles", headers=auth(city),
                        json={"name": "video_reader", "patterns": ["video.read"]}).status_code == 201
    g = token_for(ihub, "gina", "grantor", "/city/district-a")
    _user(iclient, city, "vic", "/city/district-a")
    # auditor includes audit.read and every *.read gina does not hold: refused.
    r = iclient.post(f"{IAM}/bindings", headers=auth(g),
                     json={"username": "vic", "role": "auditor", "org": "/city/district-a"})
    assert r.status_code == 403 and "only roles it holds" in r.json()["detail"]
    r = iclient.post(f"{IAM}/bindings", headers=auth(g),
                     json={"username": "vic", "role": "video_reader", "org": "/city/district-a"})
    assert r.status_code == 201, r.text
    # Unknown role / org name the field.
    r = iclient.post(f"{IAM}/bindings", headers=auth(g),
                     json={"username": "vic", "role": "nope", "org": "/city/district-a"})
    assert r.status_code == 404 and r.json()["field"] == "role"
    r = iclient.post(f"{IAM}/bindings", headers=auth(g),
                     json={"username": "vic", "role": "video_reader", "org": "City A"})
    assert r.status_code == 422 and r.json()["field"] == "org"
    # A street operator holds no iam.bindings.write at all.
    s = token_for(ihub, "stu", "street_operator", "/city/district-a/street-1")
    r = iclient.post(f"{IAM}/bindings", headers=auth(s),
                     json={"username": "vic", "role": "street_operator", "org": "/city/district-a/street-1"})
    assert r.status_code == 403


def test_revoked_binding_stops_delegated_access(ihub: Hub, iclient: TestClient) -> None:
    city = token_for(ihub, "root", "city_admin", "/city")
    ihub.services["iam"].ensure_org_chain("/city/district-a/street-1")
    _user(iclient, city, "dana", "/city/district-a")
    b1 = iclient.post(f"{IAM}/bindings", headers=auth(city),
                      json={"username": "dana", "role": "district_admin", "org": "/city/district-a"}).json()
    dana = _session(ihub, "dana")
    _user(iclient, dana, "sam", "/city/district-a/street-1")
    b2 = iclient.post(f"{IAM}/bindings", headers=auth(dana),
                      json={"username": "sam", "role": "district_admin", "org": "/city/district-a/street-1"}).json()
    assert b2["parent_id"] == b1["id"]
    sam = _session(ihub, "sam")
    key = iclient.post(f"{IAM}/apikeys", headers=auth(sam),
                       json={"name": "kiosk", "role": "street_operator", "org": "/city/district-a/street-1"}).json()
    assert iclient.get(f"{IAM}/orgs/city/district-a/street-1", headers=auth(sam)).status_code == 200
    assert iclient.get(f"{IAM}/me", headers={"X-API-Key": key["key"]}).json()["bindings"]

    r = iclient.delete(f"{IAM}/bindings/{b1['id']}", headers=auth(city))
    assert r.status_code == 200
    assert set(r.json()["revoked"]) >= {b1["id"], b2["id"]}
    # Both the delegate, the delegate's delegate and the API key it made lost access.
    assert iclient.get(f"{IAM}/orgs/city/district-a", headers=auth(dana)).status_code == 403
    assert iclient.get(f"{IAM}/orgs/city/district-a/street-1", headers=auth(sam)).status_code == 403
    assert iclient.get(f"{IAM}/me", headers=auth(sam)).json()["permissions"] == []
    assert iclient.get(f"{IAM}/me", headers={"X-API-Key": key["key"]}).json()["permissions"] == []


def test_delegated_expiry_is_clamped_and_enforced(ihub: Hub, iclient: TestClient, clock: Clock) -> None:
    city = token_for(ihub, "root", "city_admin", "/city")
    r = iclient.post(f"{IAM}/orgs", headers=auth(city), json={"parent": "/city", "slug": "district-a", "name": "A"})
    assert r.status_code == 201, r.text
    _user(iclient, city, "dana", "/city/district-a")
    _user(iclient, city, "temp", "/city/district-a")
    exp = clock.t + 3600
    iclient.post(f"{IAM}/bindings", headers=auth(city),
                 json={"username": "dana", "role": "district_admin", "org": "/city/district-a", "expires_at": exp})
    dana = _session(ihub, "dana")
    b = iclient.post(f"{IAM}/bindings", headers=auth(dana),
                     json={"username": "temp", "role": "auditor", "org": "/city/district-a",
                           "expires_at": exp + 86400}).json()
    assert b["expires_at"] == exp  # cannot outlive the grant it was delegated from
    past = iclient.post(f"{IAM}/bindings", headers=auth(dana),
                        json={"username": "temp", "role": "auditor", "org": "/city/district-a",
                              "expires_at": clock.t - 1})
    assert past.status_code == 422 and past.json()["field"] == "expires_at"
    temp = _session(ihub, "temp")
    assert iclient.get(f"{IAM}/orgs/city/district-a", headers=auth(temp)).status_code == 200
    clock.t = exp + 1
    dana = _session(ihub, "dana")
    temp = _session(ihub, "temp")
    assert iclient.get(f"{IAM}/orgs/city/district-a", headers=auth(temp)).status_code == 403
    assert iclient.get(f"{IAM}/orgs/city/district-a", headers=auth(dana)).status_code == 403


def test_me_is_personalised(ihub: Hub, iclient: TestClient) -> None:
    aud = token_for(ihub, "audrey", "auditor", "/city/district-a")
    op = token_for(ihub, "otto", "street_operator", "/city/district-a/street-1")
    m1 = iclient.get(f"{IAM}/me", headers=auth(aud)).json()
    m2 = iclient.get(f"{IAM}/me", headers=auth(op)).json()
    assert "audit.read" in m1["permissions"] and "audit.read" not in m2["permissions"]
    assert m1["scopes"]["audit.read"] == ["/city/district-a"]
    assert {i["id"] for i in m1["menu"]} != {i["id"] for i in m2["menu"]}
    assert "audit" in {i["id"] for i in m1["menu"]}
    assert not any(p.startswith("iam.") for p in m2["permissions"])
