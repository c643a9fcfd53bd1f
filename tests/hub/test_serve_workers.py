"""Stateless HTTP (issue 17): `hub serve --workers 2` and a second `hub serve` on one database behave as
one hub. Login failures lock an account whichever process counted them, the login rate limit counts every
process's attempts, an app key revoked through one process is refused by another at once, and exactly one
process of the serves on a host runs the once-only workers. The role and URL caches are checked with two
hubs of one test process on one database (the same code path, without the processes' start-up cost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from central.broker import free_port
from central.hub import Hub
from central.settings import SecuritySettings, Settings, WebhooksSettings
from tests.codes.conftest import City, register_entity
from tests.conftest import make_settings
from tests.helpers import stop_processes, token_for, wait_for

ROOT = Path(__file__).resolve().parents[2]
PW = "Initial-Pass-2024"


def _call(base: str, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
          ) -> tuple[int, Any]:
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _up(base: str) -> bool:
    try:
        return _call(base, "GET", "/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture
def two_serves(tmp_path: Path) -> Iterator[tuple[Hub, City, list[str], list[Path]]]:
    """This test's hub (a city with an issued code, a user with a password), then `hub serve --workers 2`
    and `hub serve` on its database and data_dir, as two processes of one host would run."""
    from central.app import build_hub, create_app

    s = make_settings(tmp_path, security=SecuritySettings(lockout_failures=3, login_rate_per_minute=5),
                      webhooks=WebhooksSettings(worker=False))
    hub = build_hub(s)
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        city = City(hub, c)
        app_id = city.approved_scene()
        city.code = city.ok(city.issue(app_id, register_entity(hub), image="none"), 201)["text"]  # type: ignore[attr-defined]
        key = city.ok(c.post(f"/api/v1/codes/applications/{app_id}/appkeys", headers=city.issuer,
                             json={"name": "gate"}), 201)
        city.app_key, city.app_id = key, app_id  # type: ignore[attr-defined]
        hub.services["iam"].ensure_org_chain("/city/a")
        r = c.post("/api/v1/iam/users", headers=city.admin,
                   json={"username": "alice", "password": PW, "org": "/city/a"})
        assert r.status_code == 201, r.text
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(s.model_dump_json(include={"data_dir", "database_url", "security"}))
                                  | {"mqtt": {"enabled": False}, "webhooks": {"worker": False}}))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CITYBRAIN_")}
    env["PYTHONPATH"] = str(ROOT)
    ports, logs, procs = [free_port(), free_port()], [tmp_path / "a.log", tmp_path / "b.log"], []
    for port, extra, log in zip(ports, (["--workers", "2"], []), logs, strict=True):
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "citybrain.cli", "hub", "serve", "-c", str(cfg), "--port", str(port), *extra],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT))
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for base, p, log in zip(bases, procs, logs, strict=True):
            wait_for(lambda b=base, p=p, log=log: _up(b) or (p.poll() is not None and pytest.fail(log.read_text())),
                     timeout=180, what=f"hub serve on {base}")
        yield hub, city, bases, logs
    finally:
        stop_processes(procs)
        hub.close()


def test_two_serves_share_lockout_rate_limit_and_revocations(two_serves: tuple[Hub, City, list[str], list[Path]]
                                                             ) -> None:
    hub, city, (a, b), logs = two_serves
    # One primary among the three serve processes (A's two workers and B) runs the once-only workers.
    roles = wait_for(lambda: (r := [ln for log in logs for ln in log.read_text().splitlines()
                                    if "hub serve process" in ln]) and len(r) == 3 and r, timeout=60,
                     what="three serve processes")
    assert sum("primary" in ln for ln in roles) == 1, roles

    # Failures counted on A, B, A lock alice: B refuses her right password.
    for base in (a, b, a):
        assert _call(base, "POST", "/api/v1/iam/login", {"username": "alice", "password": "wrong"})[0] == 401
    status, body = _call(b, "POST", "/api/v1/iam/login", {"username": "alice", "password": PW})
    assert status == 423, body
    # The limit is 5 attempts a minute per client address: the 4 above and one more on A pass, B's next
    # one (A and B saw 3 each) is the sixth and is refused.
    assert _call(a, "POST", "/api/v1/iam/login", {"username": "nobody", "password": "x"})[0] == 401
    status, body = _call(b, "POST", "/api/v1/iam/login", {"username": "nobody2", "password": "x"})
    assert status == 429, body

    # An app key B has already accepted (and cached) stops working on B once revoked through A.
    gate = {"X-App-Key": city.app_key["key"]}  # type: ignore[attr-defined]
    status, v = _call(b, "POST", "/api/v1/codes/verify", {"text": city.code}, gate)  # type: ignore[attr-defined]
    assert status == 200 and v["verdict"] == "valid", v
    path = f"/api/v1/codes/applications/{city.app_id}/appkeys/{city.app_key['id']}"  # type: ignore[attr-defined]
    assert _call(a, "DELETE", path, headers=city.issuer)[0] == 204
    assert _call(b, "POST", "/api/v1/codes/verify", {"text": city.code}, gate)[0] == 401  # type: ignore[attr-defined]
    # A code revoked through B is refused by A's online verify at once (A's workers both, whichever answers).
    serial = _call(a, "POST", "/api/v1/codes/verify", {"text": city.code}, city.issuer)[1]["serial"]  # type: ignore[attr-defined]
    assert _call(b, "POST", "/api/v1/codes/revoke", {"serial": serial, "reason": "lost"}, city.admin)[0] == 200
    for _ in range(4):
        v = _call(a, "POST", "/api/v1/codes/verify", {"text": city.code}, city.issuer)[1]  # type: ignore[attr-defined]
        assert v["verdict"] == "revoked", v


def test_role_and_url_caches_follow_the_store(tmp_path: Path) -> None:
    """A role changed and a URL approved through one hub are seen by another hub's caches at once; a
    root key made by two at once is one key."""
    from central.app import build_hub
    from central.codes import store as codes_store
    from central.iam import store as iam_store

    s: Settings = make_settings(tmp_path, webhooks=WebhooksSettings(worker=False))
    one, two = build_hub(s), build_hub(s)
    try:
        iam2 = two.services["iam"]
        tok = token_for(one, "carol", role="city_admin", org="/city")
        before = iam2.principal_for_session(tok)
        assert before is not None and before.has("iam.users.write")  # the role is cached in `two` now
        with one.store.tx() as db:  # what a role change does: its row and the generation, in one transaction
            db.run(iam_store.roles.update().where(iam_store.roles.c.name == "city_admin")
                   .values(patterns='["iam.orgs.read"]'))
            iam_store.bump_roles_generation(db)
        after = iam2.principal_for_session(tok)
        assert after is not None and not after.has("iam.users.write") and after.has("iam.orgs.read")

        codes2 = two.services["codes"]
        url = "https://clinic.example.org/pass"
        assert url not in codes2.filed_urls(None)  # cached in `two` now
        with one.store.tx() as db:
            uid = codes_store.insert_url(db, {"dept_id": None, "url": url, "status": "pending", "filed_by": "m",
                                              "created_at": "2026-12-03T00:00:00+00:00"})
            codes_store.decide_url(db, uid, "approved", "checker", "")
        assert url in codes2.filed_urls(None)

        # Two processes making the city root key at once: the second to write answers the first's key.
        from protocol import signing

        first = two.services["codes"].root
        lost = one.services["codes"]._create_key_once("root", signing.generate(first.alg))
        assert lost.to_dict() == first.to_dict()
        assert not list((s.keys_dir / "codes").glob("*.tmp.json"))
    finally:
        one.close()
        two.close()


def test_workers_with_the_bridge_need_a_share_group(tmp_path: Path) -> None:
    from central.cli import app

    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "hub"), "mqtt": {"enabled": True}}))
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--workers", "2"])
    assert r.exit_code == 2 and "mqtt.share_group" in r.output, r.output
    assert not (tmp_path / "hub").exists()  # refused before the store was touched
