"""The dialer's store on both backends, without a hub: call-list bulk insert, templates, the claim/finish
protocol the SIP engine runs, reports, and two engines claiming from one task at once."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import standardwebhooks

from central.dialer import service as svc
from central.dialer import store as ds
from central.dialer.templates import builtin_templates
from central.iam.pii import PiiCipher, pii_cipher
from central.settings import MqttSettings, Settings
from central.store import Store
from central.webhooks import store as ws
from central.webhooks.service import WebhooksService
from tests.conftest import database_url

pytestmark = pytest.mark.both_backends

DAY = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai: inside the default window


@dataclass
class MiniHub:
    """What the dialer's engine-side service functions need of a hub: its store and its PII keys."""

    store: Store
    settings: Settings


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[MiniHub]:
    s = Store(database_url() or tmp_path / "d.db")
    s.migrate()
    yield MiniHub(s, Settings(data_dir=tmp_path / "hub", mqtt=MqttSettings(enabled=False)))
    s.close()


def _cipher(hub: MiniHub) -> PiiCipher:
    return pii_cipher(hub)  # type: ignore[arg-type]


def _task(hub: MiniHub, phones: list[str], org: str = "/city/district-a", status: str = "running",
          **schedule: Any) -> int:
    tpl = next(t for t in builtin_templates() if t.key == "notice")
    sched = svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}], **schedule)
    c = _cipher(hub)
    with hub.store.tx() as db:
        tid = ds.insert_task(db, {"name": "t", "org": org, "template_key": tpl.key, "template_version": 1,
                                  "template": tpl.model_dump_json(), "schedule": sched.model_dump_json(),
                                  "status": status, "created_at": svc.iso(DAY)})
        ds.insert_contacts(db, [{
            "task_id": tid, "row_no": i + 2, "phone_enc": c.encrypt(p), "phone_idx": c.blind_index("phone", p),
            "phone_masked": svc.mask_phone(p), "name": f"n{i}", "vars": json.dumps({"notice": f"x{i}"}),
            "priority": 0, "status": "pending", "outcome": None, "attempts": 0, "updated_at": svc.iso(DAY)}
            for i, p in enumerate(phones)])
    return tid


def _running(hub: MiniHub, tid: int) -> dict[str, Any]:
    return next(t for t in svc.running_tasks(hub) if t["id"] == tid)  # type: ignore[arg-type]


def test_bulk_insert_keeps_every_row_encrypted_and_unique_per_task(hub: MiniHub) -> None:
    phones = [f"1380000{i:04d}" for i in range(500)]
    tid = _task(hub, phones)
    c = _cipher(hub)
    with hub.store.read() as db:
        assert ds.status_counts(db, tid) == {"pending": 500}
        assert ds.contact_phone_indexes(db, tid) == {c.blind_index("phone", p) for p in phones}
        rows = ds.export_rows(db, tid)
    assert [r["row_no"] for r in rows] == list(range(2, 502))
    assert all(p not in r["phone_enc"] for p, r in zip(phones, rows, strict=True))
    assert [c.decrypt(r["phone_enc"]) for r in rows[:3]] == phones[:3]
    dup = {"task_id": tid, "row_no": 9, "phone_enc": "x", "phone_idx": c.blind_index("phone", phones[0]),
           "phone_masked": "m", "name": None, "vars": "{}", "priority": 0, "status": "pending", "outcome": None,
           "attempts": 0, "updated_at": svc.iso(DAY)}
    with pytest.raises(sa.exc.IntegrityError), hub.store.tx() as db:  # one number once per task
        ds.insert_contacts(db, [dup])
    other = _task(hub, phones[:1])  # ... but the same number may be in another task
    with hub.store.read() as db:
        assert ds.status_counts(db, tid) == {"pending": 500} and ds.status_counts(db, other) == {"pending": 1}


def test_templates_newest_version_per_key_and_seeding_twice_is_harmless(hub: MiniHub) -> None:
    rows = [{"key": t.key, "version": t.version, "name": t.name, "org": "/city", "language": t.language,
             "body": t.model_dump_json(), "builtin": 1, "created_by": "system", "created_at": "t0"}
            for t in builtin_templates()]
    with hub.store.tx() as db:
        ds.insert_templates_ignore(db, rows)
        ds.insert_templates_ignore(db, rows)  # a second engine process seeding at the same time
        body = rows[0]["body"]
        ds.insert_template(db, {"key": "own", "version": 1, "name": "v1", "org": "/city/a", "language": "zh",
                                "body": body, "created_at": "t1"})
        ds.insert_template(db, {"key": "own", "version": 2, "name": "v2", "org": "/city/a", "language": "en",
                                "body": body, "based_on": "notice@1", "created_at": "t2", "created_by": "ann"})
    with hub.store.read() as db:
        latest = {r["key"]: r for r in ds.latest_templates(db)}
        assert set(latest) == {t.key for t in builtin_templates()} | {"own"}
        assert (latest["own"]["latest_version"], latest["own"]["name"], latest["own"]["language"],
                latest["own"]["builtin"], latest["own"]["based_on"]) == (2, "v2", "en", 0, "notice@1")
        assert ds.get_template(db, "own")["version"] == 2
        assert ds.get_template(db, "own", 1)["created_at"] == "t1"
        assert ds.get_template(db, "nope") is None
        assert [v["version"] for v in ds.template_versions(db, "own")] == [1, 2]
        assert ds.template_owner(db, "own") == {"version": 2, "org": "/city/a", "builtin": 0}
        assert ds.template_owner(db, "notice")["builtin"] == 1
        assert ds.template_owner(db, "nope")["version"] is None


def test_claim_finish_retry_dnc_and_reports(hub: MiniHub) -> None:
    phones = ["13800000001", "13800000002", "13900000003", "13900000004"]
    tid = _task(hub, phones, max_concurrent=2, max_attempts=2,
                retry_delay_s={"busy": 60, "failed": 1800})
    with hub.store.tx() as db:  # a city-wide entry covers the district's task; another district's does not
        ds.upsert_dnc(db, {"phone_idx": _cipher(hub).blind_index("phone", phones[2]), "org": "/city",
                           "phone_masked": "x", "reason": "a", "added_at": "t"})
        ds.upsert_dnc(db, {"phone_idx": _cipher(hub).blind_index("phone", phones[2]), "org": "/city",
                           "phone_masked": "139****0003", "reason": "b", "added_at": "t"})  # an update
        ds.upsert_dnc(db, {"phone_idx": _cipher(hub).blind_index("phone", phones[3]), "org": "/city/district-b",
                           "phone_masked": "139****0004", "reason": "", "added_at": "t"})
        assert sorted(o for _, o in ds.dnc_entries(db)) == ["/city", "/city/district-b"]
        ds.update_task(db, tid, {"webhook_url": "http://h/x", "webhook_secret": "s" * 16})
    task = _running(hub, tid)
    got = svc.claim_due(hub, task, DAY, 10, "e1")  # type: ignore[arg-type]
    assert [c["phone"] for c in got] == phones[:2]  # max_concurrent 2 across the task
    assert svc.claim_due(hub, task, DAY, 10, "e2") == []  # type: ignore[arg-type]  # no free slot
    assert svc.active_calls(hub, tid) == 2  # type: ignore[arg-type]
    r = svc.finish_attempt(hub, got[0]["id"], {"started_at": svc.iso(DAY), "outcome": "busy",  # type: ignore[arg-type]
                                               "sip_status": 486}, DAY)
    assert r == {"task_id": tid, "final": False, "status": "pending", "task_completed": False}
    # e2 claims with a lease that has already run out: e2 died (it never renews it)
    third = svc.claim_due(hub, task, DAY, 10, "e2", lease_s=-1)  # type: ignore[arg-type]
    assert [c["phone"] for c in third] == [phones[3]]  # phones[2] is on the city's list: skipped
    assert svc.release_lost(hub, DAY, "e1") == 1  # type: ignore[arg-type]  # engine_lost, back to pending
    again = svc.claim_due(hub, task, DAY + timedelta(seconds=61), 10, "e3")  # type: ignore[arg-type]
    assert [(c["phone"], c["attempt"]) for c in again] == [(phones[0], 2)]  # busy retry due; 1 free slot
    answers = {"ok": {"intent": "yes", "value": True, "via": "dtmf"}}
    done = {"started_at": svc.iso(DAY), "answered_at": svc.iso(DAY), "outcome": "completed", "answers": answers,
            "transcript": [{"node": "a"}], "duration_s": 1.5}
    svc.finish_attempt(hub, again[0]["id"], done, DAY)  # type: ignore[arg-type]
    r = svc.finish_attempt(hub, got[1]["id"], {"started_at": svc.iso(DAY), "outcome": "failed"}, DAY)  # type: ignore[arg-type]
    assert r["final"] is False  # failed retries after 30 min; max_attempts 2
    last = svc.claim_due(hub, task, DAY + timedelta(hours=1), 10, "e1")  # type: ignore[arg-type]
    # the released attempt still counts: phones[3] is on its second attempt too
    assert sorted((c["phone"], c["attempt"]) for c in last) == [(phones[1], 2), (phones[3], 2)]
    by_phone = {c["phone"]: c["id"] for c in last}
    svc.finish_attempt(hub, by_phone[phones[3]], done, DAY)  # type: ignore[arg-type]
    assert svc.task_status(hub, tid) == "running"  # type: ignore[arg-type]  # phones[1] still calling
    r = svc.finish_attempt(hub, by_phone[phones[1]], {"started_at": svc.iso(DAY), "outcome": "failed"}, DAY)  # type: ignore[arg-type]
    assert r == {"task_id": tid, "final": True, "status": "failed", "task_completed": True}
    assert svc.task_status(hub, tid) == "completed" and not svc.maybe_complete(hub, tid, DAY)  # type: ignore[arg-type]
    # Every final contact and the completion queued their webhook in the outbox, in their own transaction.
    with hub.store.read() as db:
        queued = ws.list_deliveries(db, f"dialer.task:{tid}", None, None, None, 100, None)
    assert [d["event_type"] for d in reversed(queued)] == ["contact.finished"] * 3 + ["task.completed"]

    p = svc.progress(hub, tid)  # type: ignore[arg-type]
    assert (p["total"], p["dialled"], p["answered"], p["completed"], p["failed"], p["skipped"], p["percent"]) == \
        (4, 6, 2, 2, 1, 1, 100.0)
    rep = svc.report(hub, tid)  # type: ignore[arg-type]
    assert rep["outcomes"] == {"completed": 2, "failed": 1, "dnc": 1}
    assert rep["attempt_outcomes"] == {"busy": 1, "completed": 2, "failed": 2, "engine_lost": 1}
    rows = svc.cdrs(hub, tid)  # type: ignore[arg-type]
    assert [(r["phone_masked"], r["attempt"], r["outcome"]) for r in rows] == [
        ("138****0001", 1, "busy"), ("139****0004", 1, "engine_lost"), ("138****0001", 2, "completed"),
        ("138****0002", 1, "failed"), ("139****0004", 2, "completed"), ("138****0002", 2, "failed")]
    assert rows[2]["name"] == "n0" and rows[2]["answers"] == answers and rows[2]["transcript"] == [{"node": "a"}]
    assert rows[2]["duration_s"] == 1.5 and rows[0]["answers"] is None and rows[0]["sip_status"] == 486
    assert phones[0] in svc.export_csv(hub, tid, unmask=True)  # type: ignore[arg-type]
    masked = svc.export_csv(hub, tid)  # type: ignore[arg-type]
    assert "138****0001" in masked and phones[0] not in masked
    assert svc.webhook_target(hub, tid) == ("http://h/x", "s" * 16)  # type: ignore[arg-type]
    assert not svc.any_active_task(hub)  # type: ignore[arg-type]


def test_results_are_delivered_from_the_outbox_signed_per_standard_webhooks(hub: MiniHub) -> None:
    got: list[tuple[dict[str, str], bytes]] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    secret = "s" * 20
    tid = _task(hub, ["13800000001"])
    with hub.store.tx() as db:
        ds.update_task(db, tid, {"webhook_url": f"http://127.0.0.1:{srv.server_port}/hook", "webhook_secret": secret})
    (c,) = svc.claim_due(hub, _running(hub, tid), DAY, 10, "e1")  # type: ignore[arg-type]
    svc.finish_attempt(hub, c["id"], {"started_at": svc.iso(DAY), "outcome": "completed"}, DAY)  # type: ignore[arg-type]
    try:
        out = WebhooksService(hub).deliver_due()  # type: ignore[arg-type]  # what the hub's worker runs
    finally:
        srv.shutdown()
        srv.server_close()
    assert out == {"delivered": 2, "failed": 0, "dead": 0}
    bodies = [standardwebhooks.Webhook(secret.encode()).verify(b, h) for h, b in got]
    assert [b["event"] for b in bodies] == ["contact.finished", "task.completed"]
    assert bodies[0]["task_id"] == tid and bodies[0]["outcome"] == "completed" and bodies[1]["task"]["id"] == tid
    assert not any(k.lower().startswith("x-citybrain") for h, _b in got for k in h)


def test_cancel_and_idle(hub: MiniHub) -> None:
    tid = _task(hub, ["13800000001", "13800000002"], status="paused")
    with hub.store.read() as db:
        assert ds.any_active_task(db) and ds.has_contacts(db, tid) and not ds.has_contacts(db, tid + 1)
    with hub.store.tx() as db:
        ds.cancel_pending(db, tid, "t")
        ds.update_task(db, tid, {"status": "cancelled"})
    with hub.store.read() as db:
        assert ds.outcome_counts(db, tid) == {"cancelled": 2} and not ds.any_active_task(db)
        assert ds.task_status(db, tid) == "cancelled" and ds.task_status(db, tid + 1) is None


def test_two_engines_never_share_a_contact_nor_exceed_max_concurrent(hub: MiniHub) -> None:
    n, cap = 40, 3
    tid = _task(hub, [f"1380000{i:04d}" for i in range(n)], max_concurrent=cap, max_attempts=1)
    task = _running(hub, tid)
    taken: dict[str, list[int]] = {"e1": [], "e2": []}
    errors: list[BaseException] = []
    stop = threading.Event()
    peak = [0]

    def engine(me: str) -> None:
        try:
            idle = 0
            while idle < 50:
                got = svc.claim_due(hub, task, DAY, 2, me)  # type: ignore[arg-type]  # 2 each: 4 > cap together
                if not got:
                    idle += 1
                    time.sleep(0.005)
                    continue
                idle = 0
                taken[me] += [c["id"] for c in got]
                time.sleep(0.01)  # the calls last a while: the other engine claims meanwhile
                for c in got:
                    svc.finish_attempt(hub, c["id"], {"started_at": svc.iso(DAY), "outcome": "completed"}, DAY)  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    def watch() -> None:  # committed calls in progress, as any reader sees them
        while not stop.is_set():
            with hub.store.read() as db:
                peak[0] = max(peak[0], ds.active_calls(db, tid))

    threads = [threading.Thread(target=engine, args=(e,)) for e in taken]
    w = threading.Thread(target=watch)
    w.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    w.join(10)
    assert not errors, errors
    ids = taken["e1"] + taken["e2"]
    assert len(ids) == n and len(set(ids)) == n  # every contact once, none by both engines
    assert taken["e1"] and taken["e2"]
    assert 2 <= peak[0] <= cap
    with hub.store.read() as db:
        assert ds.status_counts(db, tid) == {"done": n}
        assert ds.attempt_outcomes(db, tid) == {"completed": n}
    assert svc.task_status(hub, tid) == "completed"  # type: ignore[arg-type]


def test_concurrent_saves_of_one_template_get_consecutive_versions(hub: MiniHub) -> None:
    body = builtin_templates()[0].model_dump_json()
    errors: list[BaseException] = []

    def save(n: int) -> None:
        try:
            for _ in range(n):
                with hub.store.tx() as db:  # what service.save_template does, without its audit row
                    v = (ds.template_owner(db, "k")["version"] or 0) + 1
                    time.sleep(0.002)  # the other writer reads the same newest version meanwhile, unless serialised
                    ds.insert_template(db, {"key": "k", "version": v, "name": "n", "org": "/city", "language": "zh",
                                            "body": body, "created_at": "t"})
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(10,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with hub.store.read() as db:
        assert [v["version"] for v in ds.template_versions(db, "k")] == list(range(1, 21))


def test_task_statuses_of_several_tasks(hub: MiniHub) -> None:
    a = _task(hub, ["13800000001"])
    b = _task(hub, ["13800000001"], status="cancelled")
    assert svc.task_statuses(hub, {a, b, b + 1}) == {a: "running", b: "cancelled"}  # type: ignore[arg-type]
