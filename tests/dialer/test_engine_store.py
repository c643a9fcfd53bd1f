"""The engine's side of the store on both backends (issue 20): claim leases, releasing a dead engine's
contacts once (engine_lost), the engines table and its capacity, retry rules per outcome with absurd
delays clamped, and a contact whose finish fails closed as failed instead of stopping the engine."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from central.dialer import service as svc
from central.dialer import store as ds
from tests.dialer.test_store import DAY, MiniHub, _running, _task
from tests.dialer.test_store import hub as hub  # noqa: F401  the same store-only hub fixture, both backends

pytestmark = pytest.mark.both_backends


def _cdr(outcome: str, engine: str | None = None, **kw: object) -> dict[str, object]:
    return {"started_at": svc.iso(DAY), "outcome": outcome, **({"engine": engine} if engine else {}), **kw}


def test_a_dead_engines_contacts_are_released_once_and_never_beyond_max_attempts(hub: MiniHub) -> None:
    tid = _task(hub, ["13800000001", "13800000002"], max_concurrent=5, max_attempts=3)
    task = _running(hub, tid)
    live = svc.claim_due(hub, task, DAY, 1, "live", lease_s=60)  # type: ignore[arg-type]
    assert svc.release_lost(hub, DAY, "other") == 0  # type: ignore[arg-type]  # a held lease is not touched
    assert svc.renew_leases(hub, "live", [live[0]["id"]], 60) == set()  # type: ignore[arg-type]
    assert svc.renew_leases(hub, "intruder", [live[0]["id"]], 60) == {live[0]["id"]}  # type: ignore[arg-type]
    dead = svc.claim_due(hub, task, DAY, 1, "dead", lease_s=-1)  # type: ignore[arg-type]  # never renewed
    assert svc.release_lost(hub, DAY, "live") == 1  # type: ignore[arg-type]
    assert svc.release_lost(hub, DAY, "live") == 0  # type: ignore[arg-type]  # released once
    again = svc.claim_due(hub, task, DAY, 5, "dead2", lease_s=-1)  # type: ignore[arg-type]
    assert [(c["id"], c["attempt"]) for c in again] == [(dead[0]["id"], 2)]  # at once: the lost one counts
    assert svc.release_lost(hub, DAY, "live") == 1  # type: ignore[arg-type]  # lost again: no third dial
    assert svc.claim_due(hub, task, DAY + timedelta(days=1), 5, "x") == []  # type: ignore[arg-type]
    # the second engine finishing late (it was only slow): its CDR is a fact, the contact stays as it is
    r = svc.finish_attempt(hub, again[0]["id"], _cdr("completed", "dead2"), DAY)  # type: ignore[arg-type]
    assert r["status"] == "failed" and r["final"]
    rows = [(c["attempt"], c["engine"], c["outcome"]) for c in svc.cdrs(hub, tid)]  # type: ignore[arg-type]
    assert rows == [(1, "dead", "engine_lost"), (2, "dead2", "engine_lost"), (2, "dead2", "completed")]
    with hub.store.read() as db:
        assert ds.outcome_counts(db, tid) == {"calling": 1, "engine_lost": 1}
    # an engine_lost on the last attempt is final at once
    tid2 = _task(hub, ["13800000009"], max_attempts=1)
    svc.claim_due(hub, _running(hub, tid2), DAY, 1, "d", lease_s=-1)  # type: ignore[arg-type]
    assert svc.release_lost(hub, DAY, "live") == 1  # type: ignore[arg-type]
    with hub.store.read() as db:
        assert ds.status_counts(db, tid2) == {"failed": 1}
    assert svc.task_status(hub, tid2) == "completed"  # type: ignore[arg-type]


def test_retry_rules_per_outcome_and_absurd_delays_are_clamped(hub: MiniHub) -> None:
    # the API refuses an absurd delay and a never-retried outcome as a key (test_ops_settings); the engine
    # still clamps what a schedule it is handed says (a store written by hand, an older release)
    with pytest.raises(ValueError):
        svc.Schedule(retry_delay_s={"prompt_failed": 1})
    tid = _task(hub, [f"1380000000{i}" for i in range(1, 6)], max_concurrent=5, max_attempts=3,
                retry_delay_s={"busy": 60, "early_hangup": 60})
    absurd = svc.Schedule.model_construct(retry_delay_s={"busy": 10**15, "no_answer": float("inf")})
    assert svc.retry_delay(absurd, "busy") == svc.retry_delay(absurd, "no_answer") == svc.MAX_RETRY_DELAY_S
    got = svc.claim_due(hub, _running(hub, tid), DAY, 5, "e")  # type: ignore[arg-type]
    ids = [c["id"] for c in got]
    res = [svc.finish_attempt(hub, i, _cdr(o, "e", reason="r"), DAY)  # type: ignore[arg-type]
           for i, o in zip(ids, ("busy", "early_hangup", "prompt_failed", "audio_missing", "no_input"),
                           strict=True)]
    assert [(r["status"], r["final"]) for r in res] == [
        ("pending", False), ("pending", False), ("failed", True), ("failed", True), ("done", True)]
    with hub.store.read() as db:
        rows = db.all(ds.contacts.select().where(ds.contacts.c.task_id == tid).order_by(ds.contacts.c.id))
    assert rows[0]["next_at"] == svc.iso(DAY + timedelta(seconds=60))
    assert rows[1]["next_at"] == svc.iso(DAY + timedelta(seconds=60))
    assert [r["reason"] for r in rows] == ["r"] * 5


def test_a_finish_that_fails_closes_the_contact_with_the_reason(hub: MiniHub) -> None:
    tid = _task(hub, ["13800000001"])
    (c,) = svc.claim_due(hub, _running(hub, tid), DAY, 1, "e")  # type: ignore[arg-type]
    with hub.store.tx() as db:  # a schedule stored before validation got stricter, no longer parseable
        ds.update_task(db, tid, {"schedule": json.dumps({"max_attempts": "many"})})
    with pytest.raises(ValueError):
        svc.finish_attempt(hub, c["id"], _cdr("busy", "e"), DAY)  # type: ignore[arg-type]
    svc.fail_contact(hub, c["id"], _cdr("busy", "e", reason="not finished: bad schedule"), DAY)  # type: ignore[arg-type]
    with hub.store.read() as db:
        assert ds.status_counts(db, tid) == {"failed": 1}
        assert ds.export_rows(db, tid)[0]["reason"] == "not finished: bad schedule"
    assert svc.running_tasks(hub) == []  # type: ignore[arg-type]  # and the engine skips such a task


def test_engines_report_capacity_and_an_id_in_use_is_refused(hub: MiniHub) -> None:
    row = {"host": "h", "started_at": svc.iso(DAY), "calls": 0, "trunk": None, "reg_state": "none",
           "reg_status": None, "reg_error": None}
    svc.report_engine(hub, {**row, "id": "a", "pid": 1, "state": "running", "capacity": 4})  # type: ignore[arg-type]
    svc.report_engine(hub, {**row, "id": "b", "pid": 2, "state": "running", "capacity": 4})  # type: ignore[arg-type]
    svc.report_engine(hub, {**row, "id": "c", "pid": 3, "state": "stopped", "capacity": 0})  # type: ignore[arg-type]
    assert svc.engine_capacity(hub) == 8  # type: ignore[arg-type]
    svc.report_engine(hub, {**row, "id": "b", "pid": 2, "state": "running", "capacity": 4, "calls": 3})  # type: ignore[arg-type]
    assert {e["id"]: (e["live"], e["calls"]) for e in svc.engines(hub)} == {  # type: ignore[arg-type]
        "a": (True, 0), "b": (True, 3), "c": (False, 0)}
    with pytest.raises(svc.DialerError) as e:
        svc.claim_engine_id(hub, "a", "h", 99)  # type: ignore[arg-type]  # a live engine of another process
    assert e.value.status == 409
    svc.claim_engine_id(hub, "a", "h", 1)  # type: ignore[arg-type]  # itself (a re-report) is fine
    svc.claim_engine_id(hub, "c", "h", 99)  # type: ignore[arg-type]  # a stopped one's id may be reused
    with hub.store.tx() as db:  # a's heartbeat is old: it died
        db.run(ds.engines_t.update().where(ds.engines_t.c.id == "a").values(heartbeat_at=0))
    assert svc.engine_capacity(hub) == 4  # type: ignore[arg-type]
    svc.claim_engine_id(hub, "a", "h2", 5)  # type: ignore[arg-type]


def test_claims_of_several_engines_count_and_claim_in_one_transaction(hub: MiniHub) -> None:
    """Six claimers at once, each asking for more than the task's free slots: the calls in progress never
    exceed max_concurrent (the count is read inside the claim's serialised transaction)."""
    tid = _task(hub, [f"1380000{i:04d}" for i in range(30)], max_concurrent=4, max_attempts=1)
    task = _running(hub, tid)
    held: list[int] = []
    over: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(me: str) -> None:
        try:
            for _ in range(15):
                got = svc.claim_due(hub, task, DAY, 3, me)  # type: ignore[arg-type]
                with lock:
                    held.extend(c["id"] for c in got)
                    with hub.store.read() as db:
                        n = ds.active_calls(db, tid)
                    if n > 4:
                        over.append(n)
                for c in got:
                    svc.finish_attempt(hub, c["id"], _cdr("completed", me), DAY)  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=claimer, args=(f"e{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not over and len(held) == len(set(held)) == 30
