"""The codes and channel stores on both backends (no hub: the other capabilities' SQL is not on the
data-access layer everywhere yet): the verify lookup, revocations, scans counted once, statistics,
serialised list versions and channel grants (webhook claims: tests/webhooks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from central.channel import store as channel
from central.codes import store as codes
from central.store import Store
from tests.conftest import database_url

pytestmark = pytest.mark.both_backends

NOW = int(time.time())
LONG = NOW + 40 * 366 * 86400  # past 2038: epoch seconds must not overflow a 32-bit column


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url() or tmp_path / "codes.db")
    s.migrate()
    yield s
    s.close()


def seed(s: Store, dept: str = "HEALTH", org: str = "/city/health", n: int = 3, url: str | None = "http://x/h"
         ) -> dict[str, Any]:
    with s.tx() as db:
        codes.insert_department(db, {"id": dept, "name": dept.title(), "org": org, "webhook_url": url,
                                     "webhook_secret": "s3cret", "created_by": "t", "created_at": "2026-01-01"})
        kid = f"K{dept}"
        codes.insert_key(db, {"kid": kid, "dept_id": dept, "alg": "ed25519", "pub": "cHVi", "status": "active",
                              "not_before": NOW - 60.0, "not_after": NOW + 1e6, "created_at": "2026-01-01"})
        app_id = codes.insert_application(db, {
            "dept_id": dept, "applicant": "t", "scene_name": "Clinic pass", "scene_type": "clinic.pass",
            "code_type": "static", "entity_type": "person", "purpose": "p", "share_commitment": 1,
            "validity": "Y", "single_use": 0, "created_at": "2026-01-01"})
        codes.update_application(db, app_id, {"status": "approved", "code_system": "HC", "auth_id": f"A{app_id:04d}"})
        serials = [f"{dept}{i:04d}" for i in range(n)]
        codes.insert_issued(db, [{
            "serial": sr, "app_id": app_id, "dept_id": dept, "code_system": "HC", "identity_id": f"P{i % 2}",
            "kid": kid, "issued_at": NOW - 86400 * i, "expires_at": LONG, "text": f"text-{sr}", "status": "active",
            "scans": 0} for i, sr in enumerate(serials)])
    return {"app_id": app_id, "kid": kid, "serials": serials, "dept": dept}


def test_verify_row_and_every_kind_of_revocation(store: Store) -> None:
    a = seed(store)
    s0, s1, s2 = a["serials"]
    with store.read() as db:
        row = codes.verify_row(db, s0)
        assert row is not None and row["text"] == f"text-{s0}" and row["expires_at"] == LONG
        assert (row["status"], row["key_status"], row["id_revoked"]) == ("active", "active", None)
        assert row["scene_name"] == "Clinic pass" and row["app_id"] == a["app_id"]
        assert codes.verify_row(db, "NOPE") is None
        assert codes.public_key(db, a["kid"].lower())["dept_id"] == "HEALTH"  # type: ignore[index]
        assert codes.revoked_reasons(db, a["serials"]) == {}
    with store.tx() as db:
        codes.revoke_serial(db, s0, NOW)
        n, depts = codes.revoke_identity(db, "P1", "lost", "t", NOW)  # s1 is P1's
        assert (n, depts) == (1, ["HEALTH"])
    with store.read() as db:
        assert codes.verify_row(db, s1)["id_revoked"] == 1  # type: ignore[index]
        assert codes.revoked_reasons(db, a["serials"]) == {s0: "code revoked", s1: "code revoked"}
        assert codes.revocations(db, NOW) == ([s0, s1], ["P1"], [])
    with store.tx() as db:
        codes.revoke_key(db, a["kid"], "2026-01-02")
    with store.read() as db:
        assert codes.verify_row(db, s2)["key_status"] == "revoked"  # type: ignore[index]
        assert codes.revoked_reasons(db, [s2]) == {s2: "department key revoked"}
        assert channel.revoked_serials(db, [s2, "NOPE"]) == {s2: "department key revoked"}


def test_applications_duties_rules_and_urls(store: Store) -> None:
    a = seed(store)
    b = seed(store, "ROADS", "/city/roads", n=0, url=None)
    with store.tx() as db:
        codes.replace_duties(db, [{"dept_id": "HEALTH", "scene_type": "clinic.pass", "description": "a"},
                                  {"dept_id": "HEALTH", "scene_type": "clinic.pass", "description": "b"}], False)
        codes.set_rules(db, {"dept_data_max": 4})
        codes.set_rules(db, {"dept_data_max": 6, "static_classes": ["Y"]})
        uid = codes.insert_url(db, {"dept_id": "HEALTH", "url": "https://h.example/c", "filed_by": "t",
                                    "created_at": "2026-01-01"})
        codes.decide_url(db, uid, "approved", "checker", "")
    with store.read() as db:
        assert codes.all_duties(db) == [{"dept_id": "HEALTH", "scene_type": "clinic.pass", "description": "b"}]
        assert codes.stored_rules(db) == {"dept_data_max": 6, "static_classes": ["Y"]}
        assert codes.other_holder(db, "person", "clinic.pass", "ROADS") == a["app_id"]
        assert codes.other_holder(db, "person", "clinic.pass", "HEALTH") == b["app_id"]
        assert codes.other_holder(db, "place", "clinic.pass", "ROADS") is None
        assert codes.approved_systems_by_dept(db) == {"HEALTH": ["HC"], "ROADS": ["HC"]}
        app = codes.application(db, a["app_id"])
        assert app is not None and app["org"] == "/city/health" and app["status"] == "approved"
        assert codes.approved_urls(db, "HEALTH") == ["https://h.example/c"] and codes.approved_urls(db, "ROADS") == []
        assert codes.url(db, uid)["org"] == "/city/health"  # type: ignore[index]
        assert codes.webhook_url(db, "HEALTH") == "http://x/h" and codes.webhook_url(db, "ROADS") is None


def test_issued_listing_by_scope_escapes_like_wildcards(store: Store) -> None:
    seed(store, "UNDER", "/city/a_b", n=2)
    seed(store, "OTHER", "/city/axb", n=3)
    with store.read() as db:
        total, items = codes.issued_page(db, ["/city/a_b"], None, None, 50, 0)
        assert total == 2 and {i["dept_id"] for i in items} == {"UNDER"}
        total, items = codes.issued_page(db, ["/city"], None, "active", 2, 1)
        assert total == 5 and len(items) == 2
        assert [i["issued_at"] for i in items] == sorted((i["issued_at"] for i in items), reverse=True)


def test_scans_counted_once_and_supervision_figures(store: Store) -> None:
    a = seed(store)
    s0, s1, _ = a["serials"]
    with store.tx() as db:
        for k, (sr, verdict) in enumerate([(s0, "valid"), (s0, "valid"), (s1, "replayed")]):
            row = {"scan_id": f"scan{k}", "serial": sr, "app_id": a["app_id"], "dept_id": "HEALTH", "site": "s",
                   "device": "d", "verdict": verdict, "reason": "", "ts": NOW - 10 + k}
            assert codes.insert_scan(db, row) is True
            assert codes.insert_scan(db, row) is False  # a re-sent batch
            codes.note_scan(db, sr, NOW - 10 + k)
        codes.note_scan(db, s1, NOW - 1000)  # an older scan never moves last_scan_at back
        stats = [{"day": "2026-01-01", "app_id": a["app_id"], "verdict": "valid", "n": 2}]
        codes.add_verify_stats(db, stats)
        codes.add_verify_stats(db, stats)
    with store.read() as db:
        rec = codes.code_record(db, s1)
        assert rec is not None and rec["scans"] == 2 and rec["last_scan_at"] == NOW - 8
        f = codes.app_figures(db, a["app_id"], NOW, NOW - 30 * 86400, "2000-01-01", NOW - 86400 // 2)
    assert (f["issued"], f["active"], f["revoked"], f["scanned_codes"]) == (3, 3, 0, 2)
    assert f["zombies"] == 1  # issued two days ago, never scanned
    assert f["scans"] == {"valid": 2, "replayed": 1} and f["online"] == {"valid": 4}
    assert f["duplicates"] == 1  # P0 holds two live codes
    assert sum(f["issued_by_day"].values()) == 3 and len(f["issued_by_day"]) == 3
    assert sum(f["scanned_by_day"].values()) == 3
    assert set(f["scanned_by_day"]) <= {(NOW - 10) // 86400, (NOW - 8) // 86400}  # epoch day numbers


def test_list_versions_never_collide(store: Store) -> None:
    def publish(n: int) -> None:
        for _ in range(n):
            with store.tx() as db:
                codes.append_list(db, "trust", lambda v: f'{{"version": {v}}}', "2026-01-01")

    ts = [threading.Thread(target=publish, args=(10,)) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    with store.read() as db:
        versions = sorted(db.run(sa.select(codes.lists.c.version).where(codes.lists.c.kind == "trust")).scalars())
        assert versions == list(range(1, 31))
        assert codes.latest_list(db, "trust") == '{"version": 30}' and codes.latest_list(db, "revocations") is None


def test_channel_scenes_and_one_active_grant_per_address(store: Store) -> None:
    a = seed(store)
    scene = {"app_id": a["app_id"], "org": "/city/health", "service_name": "s", "service_addr": "10.1.0.5",
             "service_port": 443, "ttl_s": 600, "gateway_public_key": "gw", "endpoint": "gw:51820",
             "terminals": '["apikey:gate-1"]', "enabled": 1, "created_by": "t", "created_at": 1.0}
    grant = {"app_id": a["app_id"], "org": "/city/health", "serial": a["serials"][0], "identity_id": "P0",
             "via": "apikey:gate-1", "peer_public_key": "pk", "peer_address": "10.77.0.2",
             "allowed_ips": "10.1.0.5/32", "issued_at": 1.0, "expires_at": 2.0, "status": "active"}
    with store.tx() as db:
        channel.upsert_scene(db, scene)
        channel.upsert_scene(db, {**scene, "ttl_s": 300})
        channel.insert_grant(db, {**grant, "id": "G1"})
    with pytest.raises(IntegrityError), store.tx() as db:
        channel.insert_grant(db, {**grant, "id": "G2"})  # the address is taken by an active grant
    with store.tx() as db:
        channel.end_grant(db, "G1", "expired", 3.0, "grant lifetime over")
        channel.insert_grant(db, {**grant, "id": "G2", "issued_at": 4.0})  # the address is free again
    with store.read() as db:
        assert [s["ttl_s"] for s in channel.all_scenes(db)] == [300]
        assert codes.scene_name(db, a["app_id"]) == "Clinic pass"
        assert [g["id"] for g in channel.all_grants(db)] == ["G2", "G1"]
        assert [g["id"] for g in channel.all_grants(db, "expired")] == ["G1"]
        assert channel.active_addresses(db) == {"10.77.0.2"}
        assert [p["id"] for p in channel.scene_peers(db, a["app_id"])] == ["G2"]
        assert channel.grant(db, "G1")["end_reason"] == "grant lifetime over"  # type: ignore[index]
