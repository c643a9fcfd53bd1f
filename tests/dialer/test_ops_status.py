"""Issue 20, point 6: a task says why it is not dialling, its windows and pacing change while it runs
(PATCH, audited), and the do-not-call list can be listed, searched and removed from, in scope."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.hub import Hub
from central.iam.store import audit
from tests.helpers import auth, token_for

pytestmark = pytest.mark.both_backends

API = "/api/v1/dialer"
A, B = "/city/district-a", "/city/district-b"
MONDAY_10 = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai


def _h(hub: Hub, user: str = "ann", org: str = A) -> dict[str, str]:
    return auth(token_for(hub, user, role="district_admin", org=org))


def _audits(hub: Hub, action: str) -> list[dict[str, Any]]:
    with hub.store.read() as db:
        return db.all(sa.select(audit.c.actor, audit.c.target, audit.c.org, audit.c.detail)
                      .where(audit.c.action == action).order_by(audit.c.seq))


def _running_task(client: TestClient, h: dict[str, str], schedule: dict[str, Any],
                  phones: tuple[str, ...] = ("13800000001", "13800000002")) -> int:
    r = client.post(f"{API}/tasks", headers=h, json={"name": "t", "org": A, "template_key": "notice",
                                                     "schedule": schedule})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    csv_body = "phone,notice\n" + "".join(f"{p},x\n" for p in phones)
    assert client.post(f"{API}/tasks/{tid}/contacts", headers=h,
                       files={"file": ("l.csv", csv_body.encode())}).json()["imported"] == len(phones)
    assert client.post(f"{API}/tasks/{tid}/start", headers=h).status_code == 200
    return tid


def test_status_reason_outside_window_names_the_next_opening(client: TestClient, hub: Hub) -> None:
    h = _h(hub)
    now = datetime.now(UTC)
    hour = (now.hour + 6) % 24  # a window that is certainly closed now
    tid = _running_task(client, h, {"timezone": "UTC",
                                    "windows": [{"start": f"{hour:02d}:00", "end": f"{hour:02d}:30"}]})
    got = client.get(f"{API}/tasks/{tid}", headers=h).json()
    reason = got["state_reason"]
    assert reason["code"] == "outside_window", reason
    expect = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if expect <= now:
        expect += timedelta(days=1)
    assert datetime.fromisoformat(reason["until"]) == expect
    assert f"until {hour:02d}:00" in reason["message"] and "(UTC)" in reason["message"]

    # the same in the task's own zone, with a clock the test sets
    tid2 = _running_task(client, h, {"windows": [{"start": "14:00", "end": "20:00"}], "weekdays": [0, 1, 2, 3, 4]})
    r = svc.state_reason(hub, tid2, MONDAY_10)
    assert r["code"] == "outside_window" and r["until"] == "2025-03-10T06:00:00.000+00:00"
    assert "until 14:00 (Asia/Shanghai)" in r["message"]
    friday_21 = datetime(2025, 3, 14, 13, 0, tzinfo=UTC)  # Friday 21:00 local: next opening is Monday
    r = svc.state_reason(hub, tid2, friday_21)
    assert r["until"] == "2025-03-17T06:00:00.000+00:00" and "Mon 2025-03-17" in r["message"]


def test_status_reason_dnc_retry_and_dialling(client: TestClient, hub: Hub) -> None:
    h = _h(hub)
    tid = _running_task(client, h, {"windows": [{"start": "09:00", "end": "12:00"}],
                                    "retry_delay_s": {"busy": 600}})
    assert svc.state_reason(hub, tid, MONDAY_10)["code"] in ("dialling", "no_engine", "capacity_limited")
    task = next(t for t in svc.running_tasks(hub) if t["id"] == tid)
    first, second = svc.claim_due(hub, task, MONDAY_10, 10)
    for c in (first, second):
        svc.finish_attempt(hub, c["id"], {"started_at": svc.iso(MONDAY_10), "outcome": "busy"}, MONDAY_10)
    r = svc.state_reason(hub, tid, MONDAY_10 + timedelta(seconds=60))
    assert r["code"] == "waiting_retry" and r["until"] == svc.iso(MONDAY_10 + timedelta(seconds=600))
    assert "next at 10:10 (Asia/Shanghai)" in r["message"]
    # every remaining number put on the do-not-call list: that is the reason, not the retry
    for p in ("13800000001", "13800000002"):
        svc.add_dnc(hub, p, "/city", "u")
    r = client.get(f"{API}/tasks/{tid}", headers=h).json()["state_reason"]
    assert r["code"] == "all_dnc" and r["until"] is None and "2 remaining" in r["message"]
    assert client.post(f"{API}/tasks/{tid}/pause", headers=h).status_code == 200
    assert client.get(f"{API}/tasks/{tid}", headers=h).json()["state_reason"]["code"] == "paused"


def test_status_reason_follows_engine_capacity(hub: Hub) -> None:
    """The reason counts the capacity the live engines report (dialer_engines)."""
    tid = svc.create_task(hub, svc.TaskIn(name="t", org=A, template_key="notice", schedule=svc.Schedule(
        windows=[{"start": "09:00", "end": "12:00"}], max_concurrent=10)), "u")
    svc.import_contacts(hub, tid, "l.csv", b"phone\n13800000001\n", "u")
    svc.change_state(hub, tid, "start", "u")
    assert svc.state_reason(hub, tid, MONDAY_10)["code"] == "no_engine"
    row = {"host": "h", "started_at": svc.iso(MONDAY_10), "calls": 0, "trunk": None, "reg_state": "none",
           "reg_status": None, "reg_error": None, "state": "running"}
    svc.report_engine(hub, {**row, "id": "e1", "pid": 1, "capacity": 4})
    r = svc.state_reason(hub, tid, MONDAY_10)
    assert r["code"] == "capacity_limited" and "at most 4" in r["message"]
    for i in range(2, 5):
        svc.report_engine(hub, {**row, "id": f"e{i}", "pid": i, "capacity": 4})
    assert svc.state_reason(hub, tid, MONDAY_10)["code"] == "dialling"


def test_patch_window_of_a_running_task_then_claim_follows_it(client: TestClient, hub: Hub) -> None:
    h = _h(hub)
    tid = _running_task(client, h, {"windows": [{"start": "09:00", "end": "12:00"}], "max_concurrent": 5})
    r = client.patch(f"{API}/tasks/{tid}", headers=h, json={"schedule": {
        "windows": [{"start": "14:00", "end": "18:00"}], "calls_per_second": 0.5, "max_concurrent": 1}})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "running" and got["schedule"]["windows"] == [{"start": "14:00:00", "end": "18:00:00"}]
    assert got["schedule"]["max_concurrent"] == 1 and got["schedule"]["retry_delay_s"]["busy"] == 300  # kept
    assert got["state_reason"]["code"] in ("outside_window", "dialling", "no_engine", "capacity_limited")
    task = next(t for t in svc.running_tasks(hub) if t["id"] == tid)
    assert svc.claim_due(hub, task, MONDAY_10, 10) == []  # 10:00 was inside the old window only
    afternoon = MONDAY_10 + timedelta(hours=5)  # 15:00 local
    assert len(svc.claim_due(hub, task, afternoon, 10)) == 1  # and max_concurrent is now 1
    (row,) = _audits(hub, "dialer.task.update")
    detail = json.loads(row["detail"])["schedule"]
    assert row["actor"] == "ann" and row["target"] == f"task:{tid}" and row["org"] == A
    assert detail["max_concurrent"] == {"from": 5, "to": 1}
    assert detail["windows"]["from"] == [{"start": "09:00:00", "end": "12:00:00"}]
    # validated like creation, naming the field; a finished task cannot change; PUT stays 405
    r = client.patch(f"{API}/tasks/{tid}", headers=h, json={"schedule": {"retry_delay_s": {"busy": 10**12}}})
    assert r.status_code == 422 and "schedule.retry_delay_s.busy" in [e["field"] for e in r.json()["errors"]]
    r = client.patch(f"{API}/tasks/{tid}", headers=h, json={"schedule": {"windows": [{"start": "10:00",
                                                                                       "end": "09:00"}]}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith("schedule.windows")
    assert client.patch(f"{API}/tasks/{tid}", headers=h, json={"schedule": {}}).status_code == 422
    assert client.patch(f"{API}/tasks/{tid}", headers=h, json={"priority": 3}).status_code == 422
    assert client.patch(f"{API}/tasks/{tid}", headers=_h(hub, "bob", B),
                        json={"schedule": {"max_concurrent": 2}}).status_code == 403
    assert client.put(f"{API}/tasks/{tid}", headers=h, json={"schedule": {}}).status_code == 405
    assert client.post(f"{API}/tasks/{tid}/cancel", headers=h).status_code == 200
    r = client.patch(f"{API}/tasks/{tid}", headers=h, json={"schedule": {"max_concurrent": 2}})
    assert r.status_code == 409 and r.json()["field"] == "task_id"
    assert len(_audits(hub, "dialer.task.update")) == 1  # refused changes leave no audit row


def test_dnc_list_search_remove_audited_and_scoped(client: TestClient, hub: Hub) -> None:
    ha, hb = _h(hub), _h(hub, "bob", B)
    city = auth(token_for(hub, "cat", role="city_admin", org="/city"))
    for phone, org, h in (("13800000001", A, ha), ("13800000002", A, ha), ("13900000003", B, hb),
                          ("13700000004", "/city", city)):
        assert client.post(f"{API}/dnc", headers=h, json={"phone": phone, "org": org, "reason": "asked"}
                           ).status_code == 201
    page = client.get(f"{API}/dnc", headers=ha).json()
    assert page["total"] == 3  # its own two and the city-wide one that covers its tasks, not district B's
    assert {i["org"] for i in page["items"]} == {A, "/city"}
    assert {i["phone_masked"] for i in page["items"]} == {"138****0001", "138****0002", "137****0004"}
    assert "13800000001" not in json.dumps(page)  # masked: the store keeps no clear copy
    one = client.get(f"{API}/dnc?limit=1&offset=1", headers=ha).json()
    assert one["total"] == 3 and len(one["items"]) == 1
    assert client.get(f"{API}/dnc?org={B}", headers=ha).status_code == 403
    assert client.get(f"{API}/dnc?limit=0", headers=ha).status_code == 422

    # search by number: exact after normalisation; another district's admin finds nothing
    r = client.post(f"{API}/dnc/search", headers=ha, json={"phone": "+86 １３８-0000-0001"})
    assert r.status_code == 200 and [i["phone_masked"] for i in r.json()["items"]] == ["138****0001"]
    assert client.post(f"{API}/dnc/search", headers=hb, json={"phone": "13800000001"}).json() == {
        "total": 0, "items": []}
    assert client.post(f"{API}/dnc/search", headers=ha, json={"phone": "13800000009"}).json()["total"] == 0
    r = client.post(f"{API}/dnc/search", headers=ha, json={"phone": "abc"})
    assert r.status_code == 422 and r.json()["field"] == "phone"

    # remove: another district's admin gets 404 (out of scope reads as absent), the owner removes it
    r = client.post(f"{API}/dnc/remove", headers=hb, json={"phone": "13800000001", "org": A})
    assert r.status_code == 404
    assert client.post(f"{API}/dnc/remove", headers=ha, json={"phone": "13700000004", "org": "/city"}
                       ).status_code == 404  # a city-wide entry is the city's to remove
    r = client.post(f"{API}/dnc/remove", headers=ha, json={"phone": "138 0000 0001", "org": A, "reason": "consent"})
    assert r.status_code == 200 and r.json()["phone_masked"] == "138****0001" and r.json()["reason"] == "asked"
    assert client.post(f"{API}/dnc/remove", headers=ha, json={"phone": "13800000001", "org": A}
                       ).status_code == 404  # gone
    assert client.post(f"{API}/dnc/search", headers=ha, json={"phone": "13800000001"}).json()["total"] == 0
    rows = _audits(hub, "dialer.dnc.remove")
    assert [(r["actor"], r["target"], r["org"]) for r in rows] == [("ann", "138****0001", A)]
    assert json.loads(rows[0]["detail"])["reason"] == "consent"
    # a number off the list is called again by a task imported afterwards
    tid = svc.create_task(hub, svc.TaskIn(name="t", org=A, template_key="notice"), "u")
    got = svc.import_contacts(hub, tid, "l.csv", b"phone\n13800000001\n13800000002\n", "u")
    assert got["imported"] == 2 and got["dnc_skipped"] == 1
