"""A hub database the pre-Core store made (tests/data/legacy: one task, 4 contacts, 2 CDRs, a do-not-call
entry, 6 templates) reads back through the dialer's service after the upgrade, and new writes work on it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.app import build_hub
from central.dialer import service as svc
from central.dialer.templates import Template
from central.store import migrations
from tests.legacy import legacy_settings, restore

pytestmark = pytest.mark.sqlite_only(reason="the legacy store only made SQLite databases")

# 12:24 in Shanghai on the day the legacy hub was made: contact 2's busy retry (04:24:29 UTC) is not due yet
NOW = datetime(2026, 12, 2, 4, 24, 0, tzinfo=UTC)


def test_old_rows_read_back_and_new_writes_work(tmp_path: Path) -> None:
    hub = build_hub(legacy_settings(tmp_path))
    try:
        assert hub.store.versions() == {"alembic": migrations.head()}
        with hub.store.read() as db:
            idx = {i["name"] for t in ("dialer_contacts", "dialer_cdrs") for i in sa.inspect(db.sa).get_indexes(t)}
        assert {"dialer_contacts_due", "dialer_contacts_phone", "dialer_cdrs_task"} <= idx

        keys = {t["key"]: t for t in svc.list_templates(hub, ["/city/district-a"])}
        assert set(keys) == {"epidemic-screening", "notice", "questionnaire", "return-visit", "satisfaction",
                             "sat-xihu"}
        assert keys["sat-xihu"]["org"] == "/city/district-a" and keys["notice"]["builtin"] is True
        assert svc.get_template(hub, "sat-xihu")[1]["based_on"] == "satisfaction@1"

        [task] = svc.list_tasks(hub, ["/city/district-a"])
        assert task["id"] == 1 and task["name"] == "物业满意度回访 2025Q1" and task["status"] == "running"
        assert svc.get_task(hub, 1)["schedule"]["retry_delay_s"] == {"busy": 60}
        p = svc.progress(hub, 1)
        assert (p["total"], p["pending"], p["dialled"], p["answered"], p["completed"]) == (4, 3, 2, 1, 1)
        rows = svc.cdrs(hub, 1)
        assert [(r["name"], r["outcome"], r["sip_status"]) for r in rows] == [("王五", "completed", 200),
                                                                             ("赵六", "busy", 486)]
        assert rows[0]["answers"]["comment"]["value"] == "物业服务很好" and rows[0]["phone_masked"] == "138****8001"
        assert rows[0]["transcript"][0] == {"node": "score", "kind": "dtmf", "value": "5"}
        csv = svc.export_csv(hub, 1, unmask=True)  # the old ciphertexts decrypt with the old keys
        assert all(f"1380013800{i}" in csv for i in range(1, 5))
        assert svc.report(hub, 1)["answers"]["score"] == {"5": 1}

        # new writes: the engine's claim skips the old do-not-call entry, finishes, the task completes
        task = svc.running_tasks(hub)[0]
        got = svc.claim_due(hub, task, NOW, 10)
        assert [(c["phone"], c["name"], c["vars"]["备注"]) for c in got] == [("13800138003", "钱七", "三单元")]
        svc.finish_attempt(hub, got[0]["id"], {"started_at": svc.iso(NOW), "outcome": "completed"}, NOW)
        later = datetime(2026, 12, 2, 4, 30, tzinfo=UTC)
        got = svc.claim_due(hub, task, later, 10)
        assert [(c["phone"], c["attempt"]) for c in got] == [("13800138002", 2)]
        r = svc.finish_attempt(hub, got[0]["id"], {"started_at": svc.iso(later), "outcome": "completed"}, later)
        assert r["task_completed"] and svc.report(hub, 1)["outcomes"] == {"completed": 3, "dnc": 1}
        assert [c["id"] for c in svc.cdrs(hub, 1)] == [1, 2, 3, 4]

        tpl = Template.model_validate({**svc.get_template(hub, "sat-xihu")[0].model_dump(), "name": "v2"})
        assert svc.save_template(hub, tpl, "/city/district-a", "ann").version == 2
        tid = svc.create_task(hub, svc.TaskIn(name="new", org="/city/district-a", template_key="sat-xihu"), "ann")
        assert tid == 2 and svc.get_task(hub, tid)["template_version"] == 2
        res = svc.import_contacts(hub, tid, "l.csv", b"phone\n13800138004\n13800138009\n", "ann")
        assert (res["imported"], res["dnc_skipped"]) == (2, 1)
        svc.add_dnc(hub, "13800138009", "/city", "ann")
        assert svc.change_state(hub, tid, "start", "ann") == "running"
    finally:
        hub.close()


def test_a_database_at_legacy_dialer_migration_1_gets_claimed_by(tmp_path: Path) -> None:
    s = legacy_settings(tmp_path)
    c = sqlite3.connect(s.database)
    try:  # what the old code's migration 1 alone made
        c.execute("ALTER TABLE dialer_contacts DROP COLUMN claimed_by")
        c.execute("DELETE FROM schema_migrations WHERE capability = 'dialer' AND version = 2")
        c.commit()
    finally:
        c.close()
    hub = build_hub(s)
    try:
        task = svc.running_tasks(hub)[0]
        got = svc.claim_due(hub, task, NOW, 10, "engine-7")
        # claimed_by works: the claiming engine holds (renews) its lease
        assert len(got) == 1 and svc.renew_leases(hub, "engine-7", [got[0]["id"]], 60) == set()
    finally:
        hub.close()


def test_restore_is_the_old_schema(tmp_path: Path) -> None:
    """Guards the two tests above: the restored file really is the legacy dialer schema (v1 + v2)."""
    c = sqlite3.connect(restore(tmp_path / "hub"))
    try:
        assert c.execute("SELECT version FROM schema_migrations WHERE capability = 'dialer' ORDER BY 1"
                         ).fetchall() == [(1,), (2,)]
    finally:
        c.close()
