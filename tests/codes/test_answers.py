"""Every JSON route of /api/v1/codes answers what its response model declares (issue 16). The suite runs
with strict answers (tests/conftest.py), so a key the service returns and the model lacks fails here; this
walks the routes and answer variants the flow tests do not reach (webhook, key rotation, revocation of an
entity and of a key, SVG batches, the verdicts without a record)."""

from __future__ import annotations

from central.codes.models import IssuedCodeOut, RevocationListOut, TrustListOut

from .conftest import City, register_entity


def test_every_answer_matches_its_model(city: City) -> None:
    app_id = city.approved_scene()
    c, admin, issuer = city.c, city.admin, city.issuer

    assert city.ok(c.get("/api/v1/codes/departments", headers=admin))[0]["id"] == "HEALTH"
    hook = city.ok(c.put("/api/v1/codes/departments/HEALTH/webhook", headers=issuer,
                         json={"url": "https://health.example/hook"}))
    assert hook["url"] == "https://health.example/hook" and hook["secret"]
    rotated = city.ok(c.post("/api/v1/codes/departments/HEALTH/keys/rotate", headers=admin))
    assert rotated["retired"] and rotated["kid"] not in rotated["retired"]
    assert city.ok(c.get("/api/v1/codes/duties", headers=admin)) == [
        {"dept_id": "HEALTH", "scene_type": "clinic.pass", "description": "duty"}]
    assert city.ok(c.post("/api/v1/codes/duties", headers=admin,
                          json={"rows": [{"dept_id": "HEALTH", "scene_type": "clinic.pass"}]})) == {"imported": 1}
    rules = city.ok(c.put("/api/v1/codes/rules", headers=admin, json={"dept_data_max": 20}))
    assert rules["dept_data_max"] == 20 and rules == city.ok(c.get("/api/v1/codes/rules", headers=issuer))

    pending = city.apply(scene_type="bus.pass", share=False)
    edited = city.ok(c.patch(f"/api/v1/codes/applications/{pending['id']}", headers=issuer,
                             json={"share_commitment": True}))
    assert edited["share_commitment"] is True and edited["status"] == "pending"
    rejected = city.ok(c.post(f"/api/v1/codes/applications/{pending['id']}/decision", headers=admin,
                              json={"approve": False, "reason": "no duty"}))
    assert rejected["status"] == "rejected" and rejected["code_system"] is None
    assert len(city.ok(c.get("/api/v1/codes/applications", headers=issuer))) == 2

    key = city.ok(c.post(f"/api/v1/codes/applications/{app_id}/appkeys", headers=issuer, json={"name": "gate"}), 201)
    assert key["key"].startswith("ck_")
    (listed,) = city.ok(c.get(f"/api/v1/codes/applications/{app_id}/appkeys", headers=issuer))
    assert listed["id"] == key["id"] and listed["revoked_at"] is None
    (scene,) = city.ok(c.get("/api/v1/codes/departments/HEALTH/scenes", headers=issuer))
    assert scene["id"] == app_id and scene["app_keys"] == [listed]

    filed = city.ok(c.post("/api/v1/codes/urls", headers=issuer,
                           json={"dept_id": "HEALTH", "url": "https://health.example/c"}), 201)
    assert filed["status"] == "pending" and filed["org"] == "/city/health"
    decided = city.ok(c.post(f"/api/v1/codes/urls/{filed['id']}/decision", headers=admin, json={"approve": True}))
    assert decided["status"] == "approved"
    urls = city.ok(c.get("/api/v1/codes/urls", headers=issuer))
    assert urls["hub_resolver"] and [u["url"] for u in urls["filed"]] == ["https://health.example/c"]

    # issue: each image choice (the image keys are there only when asked for)
    people = [register_entity(city.hub) for _ in range(3)]
    one = city.ok(city.issue(app_id, people[0], image="svg"), 201)
    assert "<svg" in one["svg"] and "png_b64" not in one  # absent keys stay absent (exclude_unset)
    bare = city.ok(city.issue(app_id, people[0], image="none"), 201)
    assert set(bare) == set(IssuedCodeOut.model_fields) - {"png_b64", "svg", "qr_version"}
    batch = city.ok(c.post("/api/v1/codes/issue/batch", headers={"X-App-Key": key["key"]},
                           json={"application_id": app_id, "image": "png",
                                 "items": [{"identity_id": p} for p in people[1:]]}), 201)
    assert batch["count"] == 2 and all(x["png_b64"] for x in batch["codes"])
    page = city.ok(c.get("/api/v1/codes/issued?limit=2", headers=issuer))
    assert page["total"] == 4 and len(page["items"]) == 2
    rec = city.ok(c.get(f"/api/v1/codes/issued/{one['serial']}", headers=issuer))
    assert rec["scans"] == 0 and rec["revoked_at"] is None and rec["dept_name"] == "Health"

    # verdicts: with a record, without one, and of no code at all
    assert city.verify(one["text"])["entity"]["type"] == "person"
    assert set(city.verify("not a code")) == {"verdict", "reason"}
    tampered = one["text"][:-1] + ("0" if one["text"][-1] != "0" else "1")
    assert city.verify(tampered)["verdict"] in ("bad-signature", "malformed")

    # revocation, each kind, and the signed lists it republishes
    r = city.ok(c.post("/api/v1/codes/revoke", headers=admin, json={"serial": one["serial"], "reason": "lost"}))
    assert r["revoked"] == "serial" and r["revocation_version"] >= 1
    r = city.ok(c.post("/api/v1/codes/revoke", headers=admin, json={"identity_id": people[1], "reason": "moved"}))
    assert r["revoked"] == "identity" and r["codes"] == 1
    r = city.ok(c.post("/api/v1/codes/revoke", headers=admin, json={"kid": rotated["kid"], "reason": "leak"}))
    assert r["revoked"] == "key" and r["replacement"]
    assert city.verify(batch["codes"][1]["text"])["verdict"] == "revoked"
    revs = RevocationListOut.model_validate(city.ok(c.get("/api/v1/codes/revocations")))
    assert one["serial"] in revs.serials and people[1] in revs.identities and rotated["kid"] in revs.kids
    trust = TrustListOut.model_validate(city.ok(c.get("/api/v1/codes/trust")))
    assert {k.kid for k in trust.keys} >= {rotated["kid"], r["replacement"]}
    assert city.ok(c.get("/api/v1/codes/root"))["kid"]

    sup = city.ok(c.get("/api/v1/codes/supervision", headers=admin))
    (row,) = sup["rows"]
    assert row["application_id"] == app_id and row["issued"] == 4 and row["trend"][0]["issued"] == 4
