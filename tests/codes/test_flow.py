"""The full path over HTTP: apply -> three checks -> approve -> issue -> decode the PNG -> verify online ->
revoke -> verify says revoked; both crypto profiles."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from pyzbar.pyzbar import ZBarSymbol
from pyzbar.pyzbar import decode as zbar_decode

from protocol import citycode, signing, topics
from protocol.trust import RevocationList, TrustList
from tests.helpers import auth, token_for

from .conftest import City, register_entity


@pytest.mark.parametrize("profile", ["intl", "gm"], indirect=True)
def test_full_path(city: City, profile: str) -> None:
    city.department()
    city.duties([("HEALTH", "clinic.pass")])
    app = city.apply()
    assert app["status"] == "pending"
    assert all(c["ok"] for c in app["checks"].values()), app["checks"]

    # the department may not approve itself
    assert (
        city.c.post(
            f"/api/v1/codes/applications/{app['id']}/decision",
            headers=city.issuer,
            json={"approve": True, "code_system": "HC"},
        ).status_code
        == 403
    )
    decided = city.ok(city.approve(app["id"]))
    assert decided["status"] == "approved" and decided["code_system"] == "HC" and decided["auth_id"]
    assert set(decided["checks"]) == {"duty", "duplicate", "sharing"}

    person = register_entity(city.hub)
    issued = city.ok(city.issue(app["id"], person, dept_data="ward-3"), 201)
    png = base64.b64decode(issued["png_b64"])
    (sym,) = zbar_decode(Image.open(io.BytesIO(png)), symbols=[ZBarSymbol.QRCODE])
    text = sym.data.decode()
    assert text == issued["text"] and int(issued["qr_version"]) <= 11  # level Q since issue 14
    code = citycode.parse(text)
    assert code.kid.startswith("SM" if profile == "gm" else "ED")

    v = city.verify(text)
    assert v["verdict"] == "valid", v
    assert v["scene"] == "Clinic pass" and v["entity"]["id"] == person
    assert v["entity"]["name"] != "Zhang San"  # a person's name is masked in the public view

    # offline: the retained trust list (signed by the city root) verifies the same code
    sent = city.hub.publisher.sent  # type: ignore[attr-defined]
    trust_raw = [p for t, p, _q, retain in sent if t == topics.TRUST and retain][-1]
    trust = TrustList.model_validate_json(trust_raw)
    root = signing.PublicKey.from_dict(city.ok(city.c.get("/api/v1/codes/root")))
    assert trust.verify(root)
    assert citycode.verify_offline(text, trust, None, code.issued_at + 5, 60)[0] == "valid"

    r = city.ok(
        city.c.post("/api/v1/codes/revoke", headers=city.issuer, json={"serial": code.serial, "reason": "lost"})
    )
    assert r["revocation_version"] >= 1
    v = city.verify(text)
    assert v["verdict"] == "revoked" and "serial" in v["reason"]
    rev_raw = [p for t, p, _q, retain in city.hub.publisher.sent if t == topics.REVOCATIONS and retain][-1]  # type: ignore[attr-defined]
    rev = RevocationList.model_validate_json(rev_raw)
    assert rev.verify(root) and code.serial in rev.serials
    assert citycode.verify_offline(text, trust, rev, code.issued_at + 5, 60)[0] == "revoked"


def test_checks_block_approval(city: City) -> None:
    city.department()
    city.department("SOCIAL", "/city/social")
    city.duties([("HEALTH", "clinic.pass"), ("SOCIAL", "clinic.pass")])
    no_duty = city.apply(scene_type="bus.pass")
    assert not no_duty["checks"]["duty"]["ok"]
    r = city.approve(no_duty["id"])
    assert r.status_code == 409 and "duty" in r.json()["detail"]

    no_share = city.apply(share=False)
    assert not no_share["checks"]["sharing"]["ok"]
    assert city.approve(no_share["id"]).status_code == 409

    first = city.apply()
    city.ok(city.approve(first["id"]))
    social_tok = auth(token_for(city.hub, "clerk", role="department_issuer", org="/city/social"))
    dup = city.apply(dept_id="SOCIAL", headers=social_tok)
    # The duplicate check names no other scope's ids.
    assert not dup["checks"]["duplicate"]["ok"] and "HEALTH" not in dup["checks"]["duplicate"]["detail"]
    r = city.approve(dup["id"])
    assert r.status_code == 409 and "duplicate" in r.json()["detail"]
    # a department cannot apply for another one
    assert (
        city.c.post(
            "/api/v1/codes/applications",
            headers=city.outsider,
            json={
                "dept_id": "HEALTH",
                "scene_name": "x",
                "scene_type": "clinic.pass",
                "code_type": "static",
                "entity_type": "person",
                "purpose": "x",
                "share_commitment": True,
                "validity": "Y",
            },
        ).status_code
        == 404  # another scope's department: not found
    )
    # approved scenes appear in the department's list
    scenes = city.ok(city.c.get("/api/v1/codes/departments/HEALTH/scenes", headers=city.issuer))
    assert [s["id"] for s in scenes] == [first["id"]]


def test_issued_list_is_scoped(city: City) -> None:
    app_id = city.approved_scene()
    serials = {city.ok(city.issue(app_id, register_entity(city.hub), image="none"), 201)["serial"] for _ in range(3)}
    listed = city.ok(city.c.get("/api/v1/codes/issued", headers=city.issuer))
    assert listed["total"] == 3 and {c["serial"] for c in listed["items"]} == serials
    assert city.ok(city.c.get("/api/v1/codes/issued", headers=city.admin))["total"] == 3
    assert city.ok(city.c.get("/api/v1/codes/issued", headers=city.outsider))["total"] == 0  # another department
    one = sorted(serials)[0]
    city.ok(city.c.post("/api/v1/codes/revoke", headers=city.issuer, json={"serial": one, "reason": "lost"}))
    revoked = city.ok(city.c.get("/api/v1/codes/issued?status=revoked", headers=city.issuer))
    assert [c["serial"] for c in revoked["items"]] == [one]
    assert city.c.get("/api/v1/codes/issued?status=bogus", headers=city.issuer).status_code == 422


def test_issuance_and_revocation_join_the_registry_feed(city: City) -> None:
    app_id = city.approved_scene()
    person = register_entity(city.hub)
    serial = city.ok(city.issue(app_id, person, image="none"), 201)["serial"]
    city.ok(city.c.post("/api/v1/codes/revoke", headers=city.issuer, json={"serial": serial, "reason": "lost"}))
    feed = city.ok(city.c.get("/api/v1/registry/feed/page?after=0", headers=city.admin))
    items = feed["items"] if isinstance(feed, dict) else feed
    mine = [(r["kind"], r["entity_id"]) for r in items if r["kind"].startswith("code.")]
    assert ("code.issued", person) in mine and ("code.revoked", person) in mine, mine
