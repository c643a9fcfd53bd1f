"""Password rules, forced change, lockout, idle expiry, logout, login rate limit, API keys."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from central.app import create_app
from central.hub import Hub
from tests.helpers import auth, token_for
from tests.iam.conftest import Clock, audit_column, dump, make_hub

IAM = "/api/v1/iam"
PW = "Initial-Pass-2024"
NEW = "Brand-New-Pass-77"


def _make_user(ihub: Hub, c: TestClient, name: str = "bob", org: str = "/city/district-a") -> str:
    admin = token_for(ihub, "root", "city_admin", "/city")
    ihub.services["iam"].ensure_org_chain(org)
    r = c.post(f"{IAM}/users", headers=auth(admin), json={"username": name, "password": PW, "org": org})
    assert r.status_code == 201, r.text
    return admin


def _login(c: TestClient, name: str, pw: str) -> tuple[int, dict]:
    r = c.post(f"{IAM}/login", json={"username": name, "password": pw})
    return r.status_code, r.json()


def test_complexity_rule_names_the_field(ihub: Hub, iclient: TestClient) -> None:
    admin = token_for(ihub, "root", "city_admin", "/city")
    for bad in ["short1A!", "alllowercaseletters", "bob-Password-1", "NoDigitsOrSymbolsHere"]:
        r = iclient.post(f"{IAM}/users", headers=auth(admin), json={"username": "bob", "password": bad, "org": "/city"})
        assert r.status_code == 422, bad
        assert r.json()["field"] == "password"
    r = iclient.post(f"{IAM}/users", headers=auth(admin), json={"username": "bob", "org": "/city"})
    assert r.status_code == 422 and "password" in r.text  # pydantic names the missing field


def test_forced_change_on_first_login_then_logout(ihub: Hub, iclient: TestClient) -> None:
    _make_user(ihub, iclient)
    code, body = _login(iclient, "bob", PW)
    assert code == 200 and body["must_change_password"] is True
    tok = body["token"]
    # Everything but me/change-password/logout is refused until the password is changed.
    assert iclient.get(f"{IAM}/orgs", headers=auth(tok)).status_code == 403
    assert iclient.get(f"{IAM}/me", headers=auth(tok)).json()["must_change_password"] is True
    r = iclient.post(f"{IAM}/change-password", headers=auth(tok), json={"old_password": PW, "new_password": "weak"})
    assert r.status_code == 422 and r.json()["field"] == "new_password"
    r = iclient.post(f"{IAM}/change-password", headers=auth(tok), json={"old_password": "wrong", "new_password": NEW})
    assert r.status_code == 422 and r.json()["field"] == "old_password"
    r = iclient.post(f"{IAM}/change-password", headers=auth(tok), json={"old_password": PW, "new_password": NEW})
    assert r.status_code == 200, r.text
    assert iclient.get(f"{IAM}/me", headers=auth(tok)).json()["must_change_password"] is False
    assert _login(iclient, "bob", PW)[0] == 401
    code, body = _login(iclient, "bob", NEW)
    assert code == 200 and body["must_change_password"] is False
    assert iclient.post(f"{IAM}/logout", headers=auth(tok)).status_code == 200
    assert iclient.get(f"{IAM}/me", headers=auth(tok)).status_code == 401
    assert iclient.get(f"{IAM}/me", headers=auth(body["token"])).status_code == 200  # other session lives


def test_lockout_after_five_failures_for_fifteen_minutes(ihub: Hub, iclient: TestClient, clock: Clock) -> None:
    _make_user(ihub, iclient)
    for _ in range(4):
        assert _login(iclient, "bob", "Wrong-Pass-0000")[0] == 401
    assert _login(iclient, "bob", PW)[0] == 200  # success before the 5th failure resets the count
    for _ in range(5):
        assert _login(iclient, "bob", "Wrong-Pass-0000")[0] == 401
    code, body = _login(iclient, "bob", PW)
    assert code == 423 and "locked" in body["detail"]
    clock.advance(14)
    assert _login(iclient, "bob", PW)[0] == 423
    clock.advance(1.1)
    assert _login(iclient, "bob", PW)[0] == 200
    actions = audit_column(ihub, "action")
    assert actions.count("login.failed") == 9 and actions.count("login.locked") == 2


def test_session_idle_expiry(ihub: Hub, iclient: TestClient, clock: Clock) -> None:
    tok = token_for(ihub, "alice", "district_admin", "/city/district-a")
    for _ in range(3):  # activity keeps it alive well past 30 minutes in total
        clock.advance(25)
        assert iclient.get(f"{IAM}/me", headers=auth(tok)).status_code == 200
    clock.advance(30.5)
    assert iclient.get(f"{IAM}/me", headers=auth(tok)).status_code == 401
    clock.advance(-60)  # the expired session stays dead even if the clock looks fine again
    assert iclient.get(f"{IAM}/me", headers=auth(tok)).status_code == 401


def test_login_rate_limit(tmp_path: Path) -> None:
    hub = make_hub(tmp_path, login_rate_per_minute=3)
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        codes = [_login(c, "nobody", "Whatever-123")[0] for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    hub.close()


def test_unauthenticated_and_malformed_credentials(iclient: TestClient) -> None:
    assert iclient.get(f"{IAM}/me").status_code == 401
    assert iclient.get(f"{IAM}/me", headers={"Authorization": "Basic abc"}).status_code == 401
    assert iclient.get(f"{IAM}/me", headers=auth("not-a-token")).status_code == 401
    assert iclient.get(f"{IAM}/me", headers={"X-API-Key": "cbk_forged"}).status_code == 401
    r = iclient.post(f"{IAM}/login", json={"username": "x"})
    assert r.status_code == 422 and "password" in r.text


def test_api_key_scoped_hashed_and_revocable(ihub: Hub, iclient: TestClient) -> None:
    admin = token_for(ihub, "alice", "district_admin", "/city/district-a")
    ihub.services["iam"].ensure_org_chain("/city/district-b")
    r = iclient.post(f"{IAM}/apikeys", headers=auth(admin),
                     json={"name": "billing", "role": "auditor", "org": "/city/district-a"})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    # Hashed at rest: the secret is nowhere in the database.
    rows = dump(ihub)
    assert "billing" in rows and key not in rows and key[4:20] not in rows
    h = {"X-API-Key": key}
    assert iclient.get(f"{IAM}/orgs/city/district-a", headers=h).status_code == 200
    assert iclient.get(f"{IAM}/orgs/city/district-b", headers=h).status_code == 404  # scoped like a user
    assert iclient.post(f"{IAM}/apikeys", headers=auth(admin),
                        json={"name": "x", "role": "auditor", "org": "/city/district-b"}).status_code == 404
    assert iclient.delete(f"{IAM}/apikeys/{r.json()['id']}", headers=auth(admin)).status_code == 200
    assert iclient.get(f"{IAM}/orgs/city/district-a", headers=h).status_code == 401
    listed = iclient.get(f"{IAM}/apikeys", headers=auth(admin)).json()
    assert listed[0]["revoked_at"] is not None and "key" not in listed[0]
