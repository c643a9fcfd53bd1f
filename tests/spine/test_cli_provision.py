"""`citybrain hub migrate` and `provision-device` through the real CLI: the written config validates,
the broker files get a hashed password and an ACL limited to the device's own prefix."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from citybrain.cli import app


def test_migrate_then_provision(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "hub"),
        "mqtt": {"enabled": False, "passwd_file": str(passwd), "acl_file": str(acl)},
    }))
    runner = CliRunner()
    r = runner.invoke(app, ["hub", "migrate", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "alembic:empty->" in r.output  # to the head revision
    r = runner.invoke(app, ["hub", "migrate", "-c", str(cfg)])
    assert "applied 0 migration" in r.output  # idempotent

    out = tmp_path / "cam.yaml"
    r = runner.invoke(app, ["hub", "provision-device", "--site", "s1", "--kind", "camera", "--name", "Gate 1",
                            "--device", "gate1", "--out", str(out), "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    device_cfg = yaml.safe_load(out.read_text())
    assert device_cfg["mqtt"]["username"] == "s1.gate1"
    assert device_cfg["mqtt"]["password"] not in passwd.read_text()  # stored hashed
    assert "s1.gate1:" in passwd.read_text()
    acl_text = acl.read_text()
    assert "user s1.gate1" in acl_text and "topic write city/v1/s1/gate1/event/+" in acl_text
    assert "city/v1/#" not in acl_text.split("user s1.gate1", 1)[1]
    r = runner.invoke(app, ["firmware", "validate", str(out)])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["hub", "provision-device", "--site", "bad site", "--kind", "camera", "--name", "x",
                            "-c", str(cfg)])
    assert r.exit_code == 2 and "site" in r.output
    r = runner.invoke(app, ["hub", "provision-device", "--site", "s1", "--kind", "camera", "--name", "Gate 1",
                            "--device", "gate1", "-c", str(cfg)])
    assert r.exit_code == 2 and "already exists" in r.output
