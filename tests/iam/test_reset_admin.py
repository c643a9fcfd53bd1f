"""`citybrain hub reset-admin` (issue 18.8): an administrator who lost their password gets a new initial one
from the hub's host; the demo prints the first password only while it is still the initial one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from central.app import build_hub, create_app
from central.iam.service import service_of
from citybrain.cli import app
from tests.conftest import database_url

FIRST = "Demo-Initial-Pass-9a"


def test_reset_admin_and_the_initial_password_rule(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    settings: dict[str, object] = {"data_dir": str(tmp_path / "hub"), "mqtt": {"enabled": False}}
    if (url := database_url(migrated=True)) is not None:
        settings["database_url"] = url
    cfg.write_text(yaml.safe_dump(settings))
    runner = CliRunner()
    r = runner.invoke(app, ["hub", "bootstrap-admin", "--username", "admin", "--password", FIRST, "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    from central.settings import load_settings

    hub = build_hub(load_settings(cfg))
    try:
        svc = service_of(hub)
        assert svc.still_initial_password("admin", FIRST)
        assert not svc.still_initial_password("admin", "something-else")
        with TestClient(create_app(hub=hub, start_bridge=False)) as c:
            tok = c.post("/api/v1/iam/login", json={"username": "admin", "password": FIRST}).json()["token"]
            changed = c.post("/api/v1/iam/change-password", headers={"Authorization": f"Bearer {tok}"},
                             json={"old_password": FIRST, "new_password": "Changed-Pass-2026-x"})
            assert changed.status_code in (200, 204), changed.text
            assert not svc.still_initial_password("admin", FIRST)  # the demo must not print it any more
            for _ in range(6):  # and then the password is forgotten: locked out
                c.post("/api/v1/iam/login", json={"username": "admin", "password": "Wrong-Guess-123-x"})
            assert c.post("/api/v1/iam/login", json={"username": "admin",
                                                     "password": "Changed-Pass-2026-x"}).status_code == 423
        r = runner.invoke(app, ["hub", "reset-admin", "--config", str(cfg)])
        assert r.exit_code == 0, r.output
        m = re.search(r"new initial password '([^']+)'", r.output)
        assert m is not None, r.output
        new = m.group(1)
        assert svc.still_initial_password("admin", new)
        with TestClient(create_app(hub=hub, start_bridge=False)) as c:
            s = c.post("/api/v1/iam/login", json={"username": "admin", "password": new})
            assert s.status_code == 200 and s.json()["must_change_password"] is True  # lock lifted, must change it
        r = runner.invoke(app, ["hub", "reset-admin", "--username", "nobody", "--config", str(cfg)])
        assert r.exit_code == 2 and "nobody" in r.output
        with hub.store.read() as db:
            rows = db.all(sa.text("SELECT actor, detail FROM iam_audit WHERE action = 'user.reset_password'"))
        assert len(rows) == 1 and rows[0]["actor"].startswith("cli:")
        assert json.loads(rows[0]["detail"]) == {"via": "hub reset-admin"}
    finally:
        hub.close()
