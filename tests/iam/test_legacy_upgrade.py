"""A hub database the pre-Core store made (tests/data/legacy, issue 15) upgrades in place: iam's users,
bindings, roles, API keys, sessions, makers and login failures read back through the service, PII still
decrypts, the 87-row audit chain still verifies, and new writes (users, logins, audit rows) work there."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.app import build_hub, create_app
from central.iam import checkpoints
from central.iam.pii import pii_cipher
from central.iam.service import Locked, Unauthorized, maker_refusal, service_of
from central.store import migrations
from tests.helpers import auth, token_for
from tests.iam.conftest import audit_column, record_in
from tests.legacy import legacy_settings

pytestmark = pytest.mark.sqlite_only(reason="the legacy store only made SQLite databases")

PASSWORD = "Xihu-Initial-2025!"  # wang.fang's, set by tests/data/legacy/make_hub_v13.py


def test_old_iam_rows_read_back_and_new_writes_work(tmp_path: Path) -> None:
    hub = build_hub(legacy_settings(tmp_path))
    try:
        assert hub.store.versions() == {"alembic": migrations.head()}  # adopted, stamped at the baseline
        svc = service_of(hub)
        city = svc.principal_for_user(2)  # cityadmin: city_admin over /city
        assert city.name == "cityadmin" and city.allowed("iam.users.write", "/city/district-a")

        # orgs, users and their PII
        assert [o["path"] for o in svc.list_orgs(city)] == [
            "/city", "/city/district-a", "/city/district-a/fire", "/city/district-b", "/city/health", "/city/social"]
        assert svc.org("/city/district-a")["name"] == "西湖区"  # type: ignore[index]
        wf = svc.user("wang.fang")
        assert wf is not None and wf["id"] == 3 and wf["org"] == "/city/district-a" and wf["must_change"] == 1
        assert pii_cipher(hub).decrypt(wf["phone_enc"]) == "13900001111"
        assert [u["username"] for u in svc.list_users(city, phone="13900001111")] == ["wang.fang"]
        assert len(svc.list_users(city)) == 7

        # bindings with their delegation parent, the custom role, the API key
        b = svc.binding(3)
        assert b is not None and b["username"] == "wang.fang" and b["parent_id"] == 2 and b["active"]
        roles = {r["name"]: r for r in svc.list_roles(city)}
        assert roles["channel_terminal"]["scope"] == "/city" and not roles["channel_terminal"]["builtin"]
        assert [(k["name"], k["role"], k["org"]) for k in svc.list_apikeys(city)] == [
            ("gate-1", "channel_terminal", "/city/social")]
        assert svc.apikey_org(1) == "/city/social"

        # maker-checker records and the ghost login failure
        with hub.store.read() as db:
            assert maker_refusal(db, "codes.url:1", "social-clerk") is not None
            assert maker_refusal(db, "codes.url:1", "cityadmin") is None

        # logins: wang.fang's old password, the ghost name keeps counting from its old failure
        out = svc.login("wang.fang", PASSWORD)
        p = svc.principal_for_session(out["token"])
        assert p is not None and p.must_change and p.allowed("registry.read", "/city/district-a/fire")
        real_now = svc.now
        svc.now = lambda: 1796185408.1694245337 + 60  # a minute after the old failure: inside its window
        try:
            for _ in range(4):
                with pytest.raises(Unauthorized):
                    svc.login("no.such.user", "wrong-password-3")
            with pytest.raises(Locked):  # 1 old + 4 new failures locked the name
                svc.login("no.such.user", "wrong-password-3")
        finally:
            svc.now = real_now

        # the old chain verifies, new rows extend it and a checkpoint vouches for both
        old_rows = 87
        record_in(hub, actor="tester", action="test.write", target="after-upgrade")
        seqs = audit_column(hub, "seq")
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > old_rows + 1
        assert hub.services["audit_checkpoints"].checkpoint() is not None
        res = checkpoints.verify_hub(hub, mqtt=False)
        assert res.ok, res.problems

        # new writes through the API on the upgraded database
        token = token_for(hub, "new-admin", "district_admin", "/city/district-b")
        with TestClient(create_app(hub=hub, start_bridge=False)) as c:
            r = c.post("/api/v1/iam/users", headers=auth(token),
                       json={"username": "li.lei", "password": "Some-Pass-2024", "org": "/city/district-b"})
            assert r.status_code == 201, r.text
            assert c.get("/api/v1/iam/users/li.lei", headers=auth(token)).json()["org"] == "/city/district-b"
        assert svc.user("li.lei")["id"] > 7  # type: ignore[index]
    finally:
        hub.close()
