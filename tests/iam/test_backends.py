"""iam on both backends (SQLite and PostgreSQL), without a full hub: a Hub with only iam set up on a
migrated store. The audit chain never forks under concurrent writers, UPDATE/DELETE of audit rows is
refused by the database, and the service's writes and reads (orgs, users, login lockout, sessions, API
keys, delegation, maker-checker) mean the same on both."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.hub import Hub
from central.iam import audit, checkpoints
from central.iam import store as iam_store
from central.iam.service import IamService, Locked, Unauthorized, maker_refusal, note_maker, service_of
from central.settings import SecuritySettings
from central.store import Store
from tests.conftest import BACKEND, database_url, make_settings
from tests.iam.conftest import Clock

pytestmark = pytest.mark.both_backends

PASSWORD = "Xihu-Initial-2025!"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url() or tmp_path / "x.db")
    assert s.dialect == BACKEND  # this pass's backend, not a silent SQLite fallback
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with only iam (and its audit checkpoints) set up: the other capabilities may still be on
    their SQLite-only migrations."""
    settings = make_settings(tmp_path, security=SecuritySettings(lockout_failures=3))
    h = Hub(settings)
    assert h.store.dialect == BACKEND
    h.store.migrate()
    from central.iam import service

    service.setup(h)
    h.services["iam"].now = Clock()
    yield h
    h.close()


def test_concurrent_appends_make_one_chain(store: Store, tmp_path: Path) -> None:
    with store.read() as db:
        chain = audit.bind(db, tmp_path / "keys", "intl")
    errors: list[BaseException] = []

    def append(w: int) -> None:
        try:
            for i in range(25):
                with store.read() as db:  # not a transaction: record opens its own
                    audit.record(db, actor=f"w{w}", action="test.write", target=f"t:{w}:{i}")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert not errors
    with store.read() as db:
        rows = audit.fetch_rows(db)
        res = audit.verify(db, chain, checkpoints=[])
    assert [r[0] for r in rows] == list(range(1, 101))
    assert sorted(r[4] for r in rows) == sorted(f"t:{w}:{i}" for w in range(4) for i in range(25))
    assert res.ok, res.problems
    assert {r[7] for r in rows} == {"hmac-sha256"}


def test_audit_rows_cannot_be_updated_or_deleted(store: Store) -> None:
    with store.tx() as db:
        audit.record(db, actor="alice", action="test.write", target="a")
        audit.record(db, actor="alice", action="test.write", target="b")
    t = iam_store.audit
    with pytest.raises(sa.exc.IntegrityError, match="append-only"), store.tx() as db:
        db.run(sa.update(t).where(t.c.seq == 1).values(actor="mallory"))
    with pytest.raises(sa.exc.IntegrityError, match="append-only"), store.tx() as db:
        db.run(sa.delete(t).where(t.c.seq == 2))
    with store.read() as db:
        rows = audit.fetch_rows(db)
        assert [(r[0], r[2]) for r in rows] == [(1, "alice"), (2, "alice")]
        assert audit.verify(db, None, checkpoints=[]).ok


def test_a_failed_write_takes_its_audit_row_with_it(store: Store) -> None:
    with pytest.raises(RuntimeError), store.tx() as db:
        audit.record(db, actor="alice", action="test.write", target="gone")
        raise RuntimeError("the change failed")
    with store.read() as db:
        assert audit.fetch_rows(db) == []
        assert iam_store.get_meta(db, "audit_head") == {}


def test_service_round_trip(hub: Hub) -> None:
    svc: IamService = service_of(hub)
    svc.ensure_org_chain("/city/district-a/fire")
    svc.ensure_org_chain("/city/district-a")  # again: nothing new, nothing audited
    admin = svc.principal_for_user(svc.create_user(None, "root", PASSWORD, "/city", must_change=False))
    assert admin.permissions == []
    svc.grant_root(svc.user("root")["id"], "city_admin", "/city")  # type: ignore[index]
    admin = svc.principal_for_user(svc.user("root")["id"])  # type: ignore[index]
    assert admin.allowed("iam.users.write", "/city/district-a")

    uid = svc.create_user(admin, "wang.fang", PASSWORD, "/city/district-a", phone="13812345678")
    b = svc.grant(admin, "wang.fang", "district_admin", "/city/district-a")
    assert b["username"] == "wang.fang" and b["active"] and b["parent_id"] is not None
    assert [u["username"] for u in svc.list_users(admin, phone="138 1234 5678")] == ["wang.fang"]

    # login, lockout counted in the database (several hub processes share it), unknown names alike
    with pytest.raises(Unauthorized):
        svc.login("wang.fang", "wrong-password-1A!")
    ok = svc.login("wang.fang", PASSWORD, client="t")
    assert ok["must_change_password"] is True
    p = svc.principal_for_session(ok["token"])
    assert p is not None and p.must_change and p.allowed("registry.read", "/city/district-a/fire")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            svc.login("nobody", "wrong-password-1A!")
    with pytest.raises(Locked):
        svc.login("nobody", "wrong-password-1A!")
    svc.change_password(p, PASSWORD, "Another-Secret-99")
    assert svc.principal_for_session(ok["token"]).must_change is False  # type: ignore[union-attr]

    # delegation: a grant from wang.fang's binding is revoked with it
    wf = svc.principal_for_session(ok["token"])
    assert wf is not None
    svc.create_user(admin, "fire-clerk", PASSWORD, "/city/district-a/fire")
    child = svc.grant(wf, "fire-clerk", "street_operator", "/city/district-a/fire")
    assert child["parent_id"] == b["id"]
    assert svc.revoke(admin, b["id"]) == [b["id"], child["id"]]
    assert not svc.binding(child["id"])["active"]  # type: ignore[index]

    # API keys: resolve, then revoked
    key = svc.create_apikey(admin, "gate", "street_operator", "/city/district-a")
    kp = svc.principal_for_apikey(key["key"])
    assert kp is not None and kp.kind == "apikey" and kp.allowed("registry.read", "/city/district-a")
    assert svc.apikey_org(key["id"]) == "/city/district-a"
    assert [k["name"] for k in svc.list_apikeys(admin)] == ["gate"]
    svc.revoke_apikey(admin, key["id"])
    assert svc.principal_for_apikey(key["key"]) is None

    # custom roles, orgs
    role = svc.create_role(admin, "gatekeeper", "gates", ["registry.read"], scope="/city/district-a")
    assert role["scope"] == "/city/district-a" and "gatekeeper" in {r["name"] for r in svc.list_roles(admin)}
    svc.create_org(admin, "/city", "social", "市民政局")
    assert svc.rename_org(admin, "/city/social", "民政")["name"] == "民政"
    svc.delete_org(admin, "/city/social")
    assert svc.org("/city/social") is None
    assert uid == svc.user("wang.fang")["id"]  # type: ignore[index]

    # maker-checker, called by other capabilities inside their own transactions
    with hub.store.tx() as db:
        note_maker(db, "codes.application:7", "alice", "file")
        note_maker(db, "codes.application:7", "alice", "file")  # twice: one record
    with hub.store.read() as db:
        assert maker_refusal(db, "codes.application:7", "alice") is not None
        assert maker_refusal(db, "codes.application:7", "bob") is None
        assert maker_refusal(db, "codes.application:8", "carol", filer="carol") is not None

    # the audit chain of all of it verifies, with a checkpoint made over it
    cp = hub.services["audit_checkpoints"]
    assert cp.checkpoint() is not None
    res = checkpoints.verify_hub(hub, mqtt=False)
    assert res.ok, res.problems
    with hub.store.read() as db:
        actions = [r[3] for r in audit.fetch_rows(db)]
    assert actions.count("org.create") == 4 and "login.failed" in actions and "binding.revoke" in actions


def test_api_login_and_audit_pages(hub: Hub) -> None:
    """The iam HTTP API over this backend: login, an authenticated call, the audit log in pages."""
    from central.app import create_app
    from tests.helpers import auth, token_for

    token = token_for(hub, "auditor", "city_admin", "/city")
    svc = service_of(hub)
    for i in range(5):
        svc.ensure_org_chain(f"/city/d{i}")
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        r = c.get("/api/v1/iam/me", headers=auth(token))
        assert r.status_code == 200 and r.json()["name"] == "auditor"
        page = c.get("/api/v1/iam/audit", params={"after": 2, "limit": 3}, headers=auth(token)).json()
        assert [row["seq"] for row in page] == [3, 4, 5]
        district = c.get("/api/v1/iam/audit", params={"org": "/city/d4"}, headers=auth(token)).json()
        assert [row["target"] for row in district] == ["/city/d4"]
        assert c.get("/api/v1/iam/audit/verify", headers=auth(token)).json()["ok"] is True
        assert c.post("/api/v1/iam/login", json={"username": "auditor", "password": "x" * 12}).status_code == 401
