"""The codes service end to end on both backends, without the capabilities it calls into (iam's audit
and maker records, the registry feed: not on the data-access layer everywhere yet, so stubbed here and
their calls recorded): department, duty, application and decision, URL filing, app key, issue, online
verify, revocations, lists, scans, supervision and webhook delivery."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from central.codes import service as codes_service
from central.codes.service import CodesError, CodesService
from central.hub import Hub
from central.webhooks.service import service_of as webhooks_of
from protocol.messages import ScanBatch, ScanRecord
from tests.conftest import make_settings

pytestmark = pytest.mark.both_backends


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CodesService]:
    from central.codes.service import applications, issuing, keys, supervision

    calls: list[tuple[str, Any]] = []
    makers: dict[str, set[str]] = {}

    def note_maker(db: Any, obj: str, actor: str, act: str) -> None:
        makers.setdefault(obj, set()).add(actor)

    def maker_refusal(db: Any, obj: str, actor: str, filer: str | None = None) -> str | None:
        return "separation of duties" if actor in makers.get(obj, set()) or actor == filer else None

    for mod in (applications, issuing, keys, supervision):
        if hasattr(mod, "audit"):
            monkeypatch.setattr(mod, "audit", lambda db, actor, action, *a, **k: calls.append(("audit", action)))
        if hasattr(mod, "feed"):
            monkeypatch.setattr(mod, "feed", lambda db, kind, *a: calls.append(("feed", kind)))
    monkeypatch.setattr(applications, "note_maker", note_maker)
    monkeypatch.setattr(applications, "maker_refusal", maker_refusal)
    hub = Hub(make_settings(tmp_path))
    hub.store.migrate()  # on PostgreSQL: the Core tables (codes, channel, ...) only
    s = codes_service.service_of(hub)
    s.calls = calls  # type: ignore[attr-defined]
    yield s
    hub.close()


def test_the_whole_codes_flow(svc: CodesService) -> None:
    dept = svc.register_department("admin", "HEALTH", "Health", "/city/health", webhook_url="http://127.0.0.1:9/h")
    with pytest.raises(CodesError, match="already exists"):
        svc.register_department("admin", "HEALTH", "Health", "/city/health")
    assert svc.department_exists("HEALTH") and not svc.department_exists("ROADS")
    assert svc.import_duties("admin", [{"dept_id": "HEALTH", "scene_type": "clinic.pass"}]) == 1
    app = svc.apply("nurse", "HEALTH", "Clinic pass", "clinic.pass", "static", "person", "p", True, "Y")
    assert app["checks"]["duty"]["ok"] and app["checks"]["duplicate"]["ok"]
    with pytest.raises(CodesError, match="separation"):
        svc.decide("nurse", app["id"], True, "HC")
    app = svc.decide("checker", app["id"], True, "HC")
    assert app["status"] == "approved" and app["auth_id"] == f"A{app['id']:04d}"
    trust = svc.current("trust")
    assert trust is not None and trust["keys"][0]["kid"] == dept["kid"] and trust["keys"][0]["code_systems"] == ["HC"]
    u = svc.file_url("nurse", "HEALTH", "https://health.example.gov/c")
    svc.audit_url("checker", u["id"], True)
    assert "https://health.example.gov/c" in svc.filed_urls("HEALTH")
    key = svc.create_app_key("nurse", app["id"], "gate")
    assert svc.app_for_key(key["key"]) == app["id"]

    codes = svc.issue_batch("nurse", app["id"], [{"identity_id": "P3301060000000001P"},
                                                  {"identity_id": "P3301060000000002N"}], check_identity=False)
    r = svc.verify_online(codes[0]["text"])
    assert r["verdict"] == "valid" and r["scene"] == "Clinic pass" and "entity" in r  # None: not registered
    assert svc.verify_online("garbage")["verdict"] == "malformed"
    assert svc.issued(["/city"])["total"] == 2 and svc.issued(["/city/roads"])["total"] == 0

    svc.revoke_code("nurse", codes[0]["serial"], "lost")
    assert svc.verify_online(codes[0]["text"])["verdict"] == "revoked"
    out = svc.revoke_identity("admin", codes[1]["identity_id"], "moved", "/city")
    assert out["codes"] == 1 and svc.verify_online(codes[1]["text"])["verdict"] == "revoked"
    rev = svc.current("revocations")
    assert rev is not None and rev["version"] == 2 and sorted(rev["serials"]) == sorted(c["serial"] for c in codes)

    batch = ScanBatch(records=[ScanRecord(scan_id="scan000001", serial=codes[0]["serial"], verdict="revoked",
                                          ts=datetime.now(UTC))])
    with svc.hub.store.tx() as db:
        assert svc.ingest_scans(db, [("site", "gate", batch)]) == 1
        assert svc.ingest_scans(db, [("site", "gate", batch)]) == 0  # a re-sent batch counts once
    (row,) = svc.supervision(["/city"])["rows"]
    assert (row["issued"], row["revoked"], row["scanned"], row["scanned_codes"]) == (2, 2, 1, 1)
    assert row["verified"] == 1 and row["trend"][0]["issued"] == 2  # the first online verify was valid

    rotated = svc.rotate_key("admin", "HEALTH")
    assert rotated["retired"] == [dept["kid"]] and svc.active_kid("HEALTH") == rotated["kid"]
    revoked = svc.revoke_key("admin", rotated["kid"], "leaked")
    assert revoked["replacement"] and svc.active_kid("HEALTH") == revoked["replacement"]

    # The hook URL is unreachable: every delivery fails once and backs off, none is lost or sent twice.
    outbox = webhooks_of(svc.hub)
    first = outbox.deliver_due()
    assert first["delivered"] == 0 and first["failed"] >= 5
    assert outbox.deliver_due() == {"delivered": 0, "failed": 0, "dead": 0}  # backing off: nothing due
    actions = {a for kind, a in svc.calls if kind == "audit"}  # type: ignore[attr-defined]
    assert {"codes.issue", "codes.revoke.code", "codes.approve", "codes.key.rotate"} <= actions


def test_channel_grant_and_its_end_on_revocation(svc: CodesService, monkeypatch: pytest.MonkeyPatch) -> None:
    from central.channel import service as channel_service

    monkeypatch.setattr(channel_service, "record", lambda db, **kw: svc.calls.append(("audit", kw["action"])))  # type: ignore[attr-defined]
    svc.register_department("admin", "SOCIAL", "Social", "/city/social")
    svc.import_duties("admin", [{"dept_id": "SOCIAL", "scene_type": "elder.care"}])
    app = svc.apply("clerk", "SOCIAL", "Elder care", "elder.care", "static", "person", "p", True, "Y")
    svc.decide("checker", app["id"], True, "EC")
    (code,) = svc.issue_batch("clerk", app["id"], [{"identity_id": "P3301060000000001P"}], check_identity=False)
    ch = channel_service.service_of(svc.hub)
    _priv, gw_pub = channel_service.wg_keypair()
    scene = ch.mark_scene("admin", app["id"], "records", "10.60.1.10", 443, 600, gw_pub, "gw:51820", ["apikey:gate-1"])
    assert scene["scene_name"] == "Elder care" and scene["terminals"] == ["apikey:gate-1"]
    g1 = ch.request_grant(code["text"], app_key_app=app["id"])["grant"]
    g2 = ch.request_grant(code["text"], app_key_app=app["id"])["grant"]
    assert g1["peer_address"] != g2["peer_address"] and g1["status"] == "active"
    assert g1["peer_public_key"] in ch.gateway_peers(app["id"])
    svc.revoke_code("clerk", code["serial"], "lost")
    assert ch.sweep() == {"expired": 0, "revoked": 2}
    assert {g["status"] for g in ch.grants(["/city"])} == {"revoked"} and ch.gateway_peers(app["id"]) == ""
