"""A hub database the legacy store made (tests/data/legacy) upgrades in place and its codes and channel rows
read back through the services: departments, applications, keys, issued codes that still verify (and the
revoked ones that do not), scans, pending webhooks, rules, URL filings, channel scenes and grants. New
writes work on the upgraded database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from central.app import build_hub
from central.channel.service import service_of as channel_of
from central.codes.service import service_of
from central.hub import Hub
from central.store import migrations
from central.webhooks.service import service_of as webhooks_of
from tests.legacy import legacy_settings

pytestmark = pytest.mark.sqlite_only(reason="the legacy store only made SQLite databases")

SOCIAL_VALID = "SK7BRZTG6VTBG5WC"
SOCIAL_REVOKED = "7SGF23RX3WVFIG37"
IDENTITY_REVOKED = "WG3HO335ISBFMPT4"  # P3301060000000003L: every code of the entity revoked


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = build_hub(legacy_settings(tmp_path))
    yield h
    h.close()


def test_codes_rows_read_back_and_verify(hub: Hub) -> None:
    assert hub.store.versions() == {"alembic": migrations.head()}
    svc = service_of(hub)
    assert [d["id"] for d in svc.departments(["/city"])] == ["DEMOHEALTH", "SOCIAL"]
    assert svc.department("SOCIAL")["webhook_url"] == "http://127.0.0.1:9/codes-hook"
    app = svc.application(2)
    assert app["scene_name"] == "养老服务码" and app["status"] == "approved" and app["auth_id"] == "A0002"
    assert app["checks"]["duty"]["ok"] is True and app["share_commitment"] is True
    assert svc.active_kid("SOCIAL") == "ed1d27f0b7e8b8bd"
    assert [k["name"] for k in svc.app_keys(2)] == ["养老中心闸机系统"]
    assert "https://social.hz.example.gov/c" in svc.filed_urls("SOCIAL")
    assert svc.issued(["/city"])["total"] == 6

    texts = {s: svc.code_record(s)["text"] for s in (SOCIAL_VALID, SOCIAL_REVOKED, IDENTITY_REVOKED)}  # type: ignore[index]
    assert svc.verify_online(texts[SOCIAL_VALID])["verdict"] == "valid"
    r = svc.verify_online(texts[SOCIAL_REVOKED])
    assert r["verdict"] == "revoked" and "serial" in r["reason"]
    assert svc.verify_online(texts[IDENTITY_REVOKED])["verdict"] == "revoked"  # its code revoked with it
    rev = svc.build_revocations()
    assert SOCIAL_REVOKED in rev.serials and "P3301060000000003L" in rev.identities
    assert svc.current("trust")["version"] >= 1  # type: ignore[index]

    sup = {r["application_id"]: r for r in svc.supervision(["/city"], days=3650)["rows"]}
    assert sup[2]["scanned"] >= 2 and sup[2]["issued"] == 4
    # codes' own queue moved into the outbox (revision 0005): the 8 pending rows, ids kept in webhook-id
    pending = webhooks_of(hub).deliveries(["/city"], endpoint_id="codes:SOCIAL", status="pending")
    assert sorted(d["msg_id"] for d in pending) == sorted(f"msg_codes_{i}" for i in range(1, 9))


def test_new_writes_on_the_upgraded_database(hub: Hub) -> None:
    svc = service_of(hub)
    issued = svc.issue_batch("social-clerk", 2, [{"identity_id": "P3301060000000002N"}])
    assert svc.verify_online(issued[0]["text"])["verdict"] == "valid"
    svc.revoke_code("social-clerk", issued[0]["serial"], "test")
    assert svc.verify_online(issued[0]["text"])["verdict"] == "revoked"
    dept = svc.register_department("cityadmin", "ROADS", "Roads", "/city/roads")
    assert dept["kid"] and svc.active_kid("ROADS") == dept["kid"]
    a = svc.apply("roads-clerk", "ROADS", "Roads pass", "roads.pass", "static", "object", "p", True, "Y")
    assert a["id"] == 3  # ids continue after the legacy rows
    # deliveries to the unreachable legacy hook fail and back off; none is lost
    out = webhooks_of(hub).deliver_due()
    assert out["failed"] >= 8 and out["delivered"] == 0

    ch = channel_of(hub)
    (g,) = ch.grants(["/city"], status=None)
    assert g["id"] == "G5E0308EE0BA7FA15" and g["serial"] == "J4MMIAGUQV2S7WEA"
    assert g["status"] == "expired"  # its 10 minutes ran out long ago: swept on read
    scene = ch.scene(2)
    assert scene is not None and scene["terminals"] == ["apikey:gate-1"] and scene["scene_name"] == "养老服务码"
