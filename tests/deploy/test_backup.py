"""`citybrain hub backup` / `restore` through the real CLI (Typer's CliRunner over citybrain.cli:app): an
online backup taken while the hub holds its store open, then damage, then restore, and every table's rows
compare equal to what was backed up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from citybrain.cli import app
from tests.helpers import token_for


def snapshot(db: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                            " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}  # noqa: S608
    finally:
        con.close()



pytestmark = pytest.mark.sqlite_only(reason="hub backup/restore copies the SQLite file (PostgreSQL: pg_dump)")

def test_backup_then_restore(tmp_path: Path) -> None:
    from central.app import build_hub
    from central.settings import load_settings

    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "hub"), "mqtt": {"enabled": False}}))
    hub = build_hub(load_settings(cfg))
    token_for(hub, "alice", "district_admin", "/city/district-a")  # org chain, user, binding, audit rows
    hub.services["devices"].provision("site-1", "camera", "Gate", "cam-1", "/city/district-a")
    runner = CliRunner()
    target = tmp_path / "backups" / "hub-1.db"
    target.parent.mkdir()

    r = runner.invoke(app, ["hub", "backup", str(target), "--config", str(cfg)])  # hub still has the store open
    assert r.exit_code == 0, r.output
    before = snapshot(hub.settings.database)
    assert before["devices"] and before["iam_users"] and before["iam_audit"]
    assert snapshot(target) == before

    # Damage: rows lost after the backup.
    with hub.store.tx() as db:
        db.run("DELETE FROM devices")
        db.run("DELETE FROM iam_bindings")
    hub.close()
    assert snapshot(hub.settings.database) != before

    r = runner.invoke(app, ["hub", "restore", str(target), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert snapshot(hub.settings.database) == before
    # The restored store is a working hub store: migrations are all applied and the audit chain verifies.
    hub2 = build_hub(load_settings(cfg))
    from central.iam.audit import verify

    with hub2.store.read() as db:
        assert verify(db).ok
    assert hub2.services["devices"].get("site-1/cam-1")["org_path"] == "/city/district-a"
    hub2.close()

    r = runner.invoke(app, ["hub", "restore", str(tmp_path / "missing.db"), "--config", str(cfg)])
    assert r.exit_code == 2 and "does not exist" in r.output
