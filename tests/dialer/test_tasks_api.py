from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openpyxl
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.dialer import store as dstore
from central.hub import Hub
from tests.helpers import auth, token_for

ASSETS = Path(__file__).parent / "assets"
API = "/api/v1/dialer"


def test_schedule_window_local_time_and_weekdays() -> None:
    s = svc.Schedule(timezone="Asia/Shanghai", windows=[{"start": "09:00", "end": "12:00"},
                                                        {"start": "14:00", "end": "20:00"}], weekdays=[0, 1, 2, 3, 4])
    monday_0859_local = datetime(2025, 3, 10, 0, 59, tzinfo=UTC)  # 08:59 in Shanghai
    assert not s.open_at(monday_0859_local)
    assert s.open_at(monday_0859_local + timedelta(minutes=1))
    assert not s.open_at(datetime(2025, 3, 10, 4, 30, tzinfo=UTC))  # 12:30 lunch gap
    assert s.open_at(datetime(2025, 3, 10, 6, 0, tzinfo=UTC))  # 14:00
    assert not s.open_at(datetime(2025, 3, 15, 2, 0, tzinfo=UTC))  # Saturday 10:00


def test_claim_respects_window_priority_dnc_and_retry(hub: Hub) -> None:
    tid = svc.create_task(hub, svc.TaskIn(name="t", org="/city", template_key="notice", schedule=svc.Schedule(
        windows=[{"start": "09:00", "end": "12:00"}], max_attempts=2, retry_delay_s={"busy": 60})), "u")
    data = "phone,name,priority,notice\n13800000001,A,0,x\n13800000002,B,5,y\n13900000003,C,0,z\n"
    svc.import_contacts(hub, tid, "l.csv", data.encode(), "u")
    svc.change_state(hub, tid, "start", "u")
    task = svc.running_tasks(hub)[0]
    night = datetime(2025, 3, 10, 14, 0, tzinfo=UTC)  # 22:00 local
    assert svc.claim_due(hub, task, night, 10) == []
    svc.add_dnc(hub, "13900000003", "/city", "u")  # after import: skipped at claim time
    day = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)
    got = svc.claim_due(hub, task, day, 10)
    assert [c["phone"] for c in got] == ["13800000002", "13800000001"]  # priority first
    assert got[0]["vars"]["notice"] == "y" and got[0]["vars"]["name"] == "B"
    r = svc.finish_attempt(hub, got[0]["id"], {"started_at": svc.iso(day), "outcome": "busy", "sip_status": 486},
                           day)
    assert r == {"task_id": tid, "final": False, "status": "pending", "task_completed": False}
    assert svc.claim_due(hub, task, day + timedelta(seconds=30), 10) == []  # retry delay not over
    again = svc.claim_due(hub, task, day + timedelta(seconds=61), 10)
    assert [c["attempt"] for c in again] == [2]
    svc.finish_attempt(hub, got[1]["id"], {"started_at": svc.iso(day), "outcome": "completed"}, day)
    r = svc.finish_attempt(hub, again[0]["id"], {"started_at": svc.iso(day), "outcome": "busy"}, day)
    assert r["final"] and r["status"] == "failed" and r["task_completed"]
    assert svc.report(hub, tid)["outcomes"] == {"busy": 1, "completed": 1, "dnc": 1}


def test_api_templates_tasks_import_and_state(client: TestClient, hub: Hub) -> None:
    admin = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    other = auth(token_for(hub, "bob", role="district_admin", org="/city/district-b"))
    keys = {t["key"] for t in client.get(f"{API}/templates", headers=admin).json()}
    assert {"return-visit", "satisfaction", "notice", "questionnaire", "epidemic-screening"} <= keys

    # copy-and-customise within scope; a new save is version 2; YAML round trip
    r = client.post(f"{API}/templates/satisfaction/copy", headers=admin,
                    json={"new_key": "sat-a", "org": "/city/district-a"})
    assert r.status_code == 201 and r.json()["version"] == 1
    assert client.post(f"{API}/templates/satisfaction/copy", headers=admin,
                       json={"new_key": "sat-x", "org": "/city/district-b"}).status_code == 403
    y = client.get(f"{API}/templates/sat-a/yaml", headers=admin).text
    r = client.post(f"{API}/templates/import?org=/city/district-a", headers={**admin,
                    "Content-Type": "application/yaml"}, content=y.replace("满意度调查", "满意度调查 v2"))
    assert r.status_code == 201 and r.json()["version"] == 2
    t = client.get(f"{API}/templates/sat-a", headers=admin).json()
    assert [v["version"] for v in t["versions"]] == [1, 2] and t["based_on"] is None
    assert client.get(f"{API}/templates/sat-a?version=1", headers=admin).json()["based_on"] == "satisfaction@1"
    assert client.get(f"{API}/templates/sat-a", headers=other).status_code == 404
    bad = client.post(f"{API}/templates/import?org=/city/district-a",
                      headers={**admin, "Content-Type": "application/yaml"}, content="key: x1\nname: n\nstart: a\n")
    assert bad.status_code == 422 and any(e["field"] == "nodes" for e in bad.json()["errors"])

    # task: bad input names the field
    r = client.post(f"{API}/tasks", headers=admin, json={"name": "t", "org": "/city/district-a",
                    "template_key": "sat-a", "schedule": {"max_concurrent": 0}})
    assert r.status_code == 422 and "max_concurrent" in r.text
    r = client.post(f"{API}/tasks", headers=admin, json={"name": "t", "org": "/city/district-a",
                    "template_key": "sat-a", "template_version": 1})
    assert r.status_code == 201
    tid = r.json()["id"]
    assert client.get(f"{API}/tasks/{tid}", headers=other).status_code == 403
    assert client.post(f"{API}/tasks/{tid}/start", headers=admin).status_code == 409  # no contacts yet

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["姓名", "手机号"])
    ws.append(["王", "+86 138 0013 8000"])
    ws.append(["李", "12345"])
    ws.append(["赵", "13800138000"])
    ws.append(["钱", "021-12345678"])
    buf = io.BytesIO()
    wb.save(buf)
    r = client.post(f"{API}/tasks/{tid}/contacts", headers=admin,
                    files={"file": ("list.xlsx", buf.getvalue(), "application/octet-stream")})
    body = r.json()
    assert r.status_code == 200 and body["imported"] == 2
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(3, "手机号"), (4, "手机号")]
    assert "duplicate of row 2" in body["errors"][1]["error"]
    with hub.store.read() as db:
        raw = db.all(sa.select(dstore.contacts.c.phone_enc, dstore.contacts.c.phone_masked)
                     .order_by(dstore.contacts.c.id))
    assert len(raw) == 2 and all("13800138000" not in r["phone_enc"] for r in raw)  # PII encrypted
    assert raw[0]["phone_masked"] == "138****8000"
    r = client.post(f"{API}/tasks/{tid}/contacts", headers=admin, files={"file": ("x.csv", b"foo,bar\n1,2\n")})
    assert r.status_code == 400 and r.json()["field"] == "file"

    for action, status in [("start", "running"), ("pause", "paused"), ("resume", "running"),
                           ("cancel", "cancelled")]:
        r = client.post(f"{API}/tasks/{tid}/{action}", headers=admin)
        assert r.status_code == 200 and r.json()["status"] == status
    assert client.post(f"{API}/tasks/{tid}/resume", headers=admin).status_code == 409
    p = client.get(f"{API}/tasks/{tid}/progress", headers=admin).json()
    assert p["total"] == 2 and p["skipped"] == 2 and p["status"] == "cancelled"
    csv_text = client.get(f"{API}/tasks/{tid}/export.csv", headers=admin).text
    assert csv_text.splitlines()[0] == "row,phone,name,status,outcome,attempts,score,comment,reason"
    assert "138****8000" in csv_text and "13800138000" not in csv_text
    assert client.post(f"{API}/dnc", headers=admin, json={"phone": "abc", "org": "/city/district-a"}
                       ).json()["field"] == "phone"
    assert client.get(f"{API}/tasks/999/report", headers=admin).status_code == 404


def test_api_answers_of_a_called_task(client: TestClient, hub: Hub) -> None:
    """The read routes after a real dialog's CDR (answers and transcript as central.dialer.dialog makes
    them): every key the services return is one the response models declare (strict in the suite)."""
    from central.dialer.dialog import Dialog
    from central.dialer.templates import builtin_templates

    admin = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    r = client.post(f"{API}/tasks", headers=admin, json={
        "name": "t", "org": "/city/district-a", "template_key": "satisfaction", "priority": 3,
        "webhook_url": "https://example.org/hook", "webhook_secret": "s" * 16,
        "schedule": {"windows": [{"start": "09:00", "end": "12:00"}], "max_attempts": 2}})
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["template"] is None and task["schedule"]["windows"] == [{"start": "09:00:00", "end": "12:00:00"}]
    assert "webhook_secret" not in task and task["started_at"] is None
    tid = task["id"]
    r = client.post(f"{API}/tasks/{tid}/contacts", headers=admin,
                    files={"file": ("l.csv", b"phone,name\n13800000001,A\n13800000002,B\n")})
    assert r.json() == {"imported": 2, "dnc_skipped": 0, "errors": []}
    assert client.post(f"{API}/tasks/{tid}/start", headers=admin).json() == {"task_id": tid, "status": "running"}

    day = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
    running = next(t for t in svc.running_tasks(hub) if t["id"] == tid)
    first, second = svc.claim_due(hub, running, day, 10)
    tpl = next(t for t in builtin_templates() if t.key == "satisfaction")
    dialog = Dialog(tpl)
    dialog.start()
    dialog.feed("dtmf", "4")
    dialog.feed("asr", "服务很好")
    svc.finish_attempt(hub, first["id"], {
        "engine": "engine-1", "started_at": svc.iso(day), "answered_at": svc.iso(day), "ended_at": svc.iso(day),
        "sip_status": 200, "outcome": dialog.outcome, "answers": dialog.answers, "asr_text": "服务很好",
        "transcript": dialog.transcript, "recording": None, "duration_s": 12.5}, day)
    svc.finish_attempt(hub, second["id"], {"started_at": svc.iso(day), "outcome": "busy", "sip_status": 486}, day)

    cdrs = client.get(f"{API}/tasks/{tid}/cdrs", headers=admin).json()
    assert [c["outcome"] for c in cdrs] == ["completed", "busy"]
    assert cdrs[0]["answers"]["score"] == {"intent": "score", "value": 4, "text": "", "dtmf": "4", "via": "dtmf"}
    assert cdrs[0]["transcript"][0] == {"node": "score", "kind": "dtmf", "value": "4"}
    assert cdrs[1]["answers"] is None and cdrs[1]["phone_masked"] == "138****0002"
    rep = client.get(f"{API}/tasks/{tid}/report", headers=admin).json()
    assert rep["answers"]["score"] == {"4": 1} and rep["attempt_outcomes"] == {"busy": 1, "completed": 1}
    got = client.get(f"{API}/tasks/{tid}", headers=admin).json()
    assert got["progress"]["dialled"] == 2 and got["started_at"] is not None
    assert [t["id"] for t in client.get(f"{API}/tasks", headers=admin).json()] == [tid]
    assert client.post(f"{API}/dnc", headers=admin, json={"phone": "13800000009", "org": "/city/district-a"}
                       ).json() == {"ok": True}


def test_task_creation_warns_when_the_live_engines_hold_fewer_calls(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))

    def create(n: int) -> list[str]:
        r = client.post(f"{API}/tasks", headers=h, json={
            "name": f"c{n}", "org": "/city/district-a", "template_key": "notice",
            "schedule": {"max_concurrent": n}})
        assert r.status_code == 201, r.text
        return [w for w in r.json()["warnings"] if w.startswith("schedule.max_concurrent")]

    assert create(10) == []  # no engine running: nothing to compare with (the engine warns when it starts)
    row = {"host": "h", "started_at": "2025-03-10T01:00:00+00:00", "calls": 0, "trunk": None,
           "reg_state": "none", "reg_status": None, "reg_error": None}
    svc.report_engine(hub, {**row, "id": "a", "pid": 1, "state": "running", "capacity": 4})
    svc.report_engine(hub, {**row, "id": "b", "pid": 2, "state": "stopped", "capacity": 4})  # not counted
    (w,) = create(10)
    assert "hold 4 together" in w and "--max-workers" in w
    assert create(4) == []
    svc.report_engine(hub, {**row, "id": "b", "pid": 2, "state": "running", "capacity": 4})
    assert create(8) == [] and len(create(9)) == 1
