"""Engines that die are not a problem (issue 20), over real SIP on loopback with SIPp as the callees:
an engine process SIGKILLed with calls up costs only those calls. Its leases run out, a second engine
releases each lost attempt with an `engine_lost` CDR and re-dials it once (never beyond max_attempts),
and the peer never has two legs up for one number (the peer ends a dead engine's leg as a trunk's session
timer would, before the lease runs out). Two engines started at once with default ids get different ids,
dial nobody twice, and together never exceed max_concurrent at the peer."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from central.dialer import service as svc
from central.dialer import store as ds
from central.dialer.templates import Template
from central.hub import Hub
from tests.dialer.sipp import Peer, engine, overlapping_legs_per_number, peak, settings_file, wait_for

ORG = "/city/district-a"
CLOCK = ("--clock-start", "2025-03-10T09:00:05+08:00")


def _task(hub: Hub, key: str, notice: str, phones: list[str], **schedule: object) -> int:
    tpl = Template.model_validate({"key": key, "name": key, "language": "en", "start": "notice", "nodes": [
        {"id": "notice", "kind": "say", "prompt": notice, "next": "bye"},
        {"id": "bye", "kind": "end", "prompt": "Goodbye.", "outcome": "completed"}]})
    svc.save_template(hub, tpl, ORG, "alice")
    sched = svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}], calls_per_second=10,
                         retry_delay_s={"busy": 1}, **schedule)
    tid = svc.create_task(hub, svc.TaskIn(name=key, org=ORG, template_key=key, schedule=sched), "alice")
    csv = "phone,name\n" + "".join(f"{p},P{i}\n" for i, p in enumerate(phones))
    assert svc.import_contacts(hub, tid, "l.csv", csv.encode(), "alice")["errors"] == []
    svc.change_state(hub, tid, "start", "alice")
    return tid


@pytest.mark.slow
def test_sigkill_with_calls_up_costs_only_those_calls(hub: Hub, tmp_path: Path) -> None:
    phones = ["13800000001", "13800000002", "13800000003"]
    tid = _task(hub, "crash", "This is a recorded notice from the city about the water supply in your "
                "district tomorrow, please listen to the end.", phones, max_concurrent=3, max_attempts=2)
    with hub.store.tx() as db:  # the third contact already used an attempt: the lost one is its last
        db.run(ds.contacts.update().where(ds.contacts.c.task_id == tid, ds.contacts.c.row_no == 4)
               .values(attempts=1))
    peer = Peer(tmp_path / "peer", "uas.xml", hold_ms=9000)  # ends a leg nobody hangs up after 9 s
    settings = settings_file(hub, tmp_path / "s.yaml")
    # session timers off here (PJSIP's minimum is 90 s): the peer's own 9 s teardown stands in for them
    fast = ("--lease", "14", "--heartbeat", "1", "--session-expires", "0", *CLOCK)
    a = engine(settings, peer.port, *fast, "--max-runtime", "120", log=tmp_path / "a.log")
    b = None
    try:
        def up() -> bool:
            with hub.store.read() as db:
                calling = ds.status_counts(db, tid).get("calling", 0)
            return calling == 3 and sum(1 for lg in peer.legs() if lg.end is None) == 3
        wait_for(up, 60, "engine A to have 3 calls up at the peer")
        a_id = next(e["id"] for e in svc.engines(hub) if e["pid"] == a.pid)
        os.kill(a.pid, signal.SIGKILL)  # no BYE, no CDR, no cleanup: its leases just stop being renewed
        a.wait(timeout=10)
        b = engine(settings, peer.port, *fast, "--engine-id", "engine-b", "--exit-when-idle", "--max-runtime",
                   "90", log=tmp_path / "b.log")
        assert b.wait(timeout=120) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        peer.stop()

    cdrs = svc.cdrs(hub, tid)
    print([(c["phone_masked"], c["attempt"], c["engine"], c["outcome"], c["reason"]) for c in cdrs])
    by: dict[str, list[tuple[int, str, str]]] = {}
    for c in cdrs:
        by.setdefault(c["phone_masked"], []).append((c["attempt"], c["engine"], c["outcome"]))
    assert by["138****0001"] == [(1, a_id, "engine_lost"), (2, "engine-b", "completed")]
    assert by["138****0002"] == [(1, a_id, "engine_lost"), (2, "engine-b", "completed")]
    assert by["138****0003"] == [(2, a_id, "engine_lost")]  # its last attempt: not re-dialled
    assert all("engine_lost" not in c["outcome"] or "released by engine-b" in c["reason"] for c in cdrs)
    with hub.store.read() as db:
        rows = {r["phone_masked"]: r for r in ds.export_rows(db, tid)}
    assert {k: (r["status"], r["outcome"], r["attempts"]) for k, r in rows.items()} == {
        "138****0001": ("done", "completed", 2), "138****0002": ("done", "completed", 2),
        "138****0003": ("failed", "engine_lost", 2)}
    assert svc.task_status(hub, tid) == "completed"
    legs = peer.legs()
    assert sorted(lg.number for lg in legs) == [phones[0], phones[0], phones[1], phones[1], phones[2]]
    assert all(lg.end is not None for lg in legs)  # the dead engine's legs ended too (by the peer)
    assert set(overlapping_legs_per_number(legs, time.time()).values()) == {1}  # never two legs at once
    assert not next(e for e in svc.engines(hub, stale_s=5) if e["id"] == a_id)["live"]


@pytest.mark.slow
def test_two_engines_with_default_ids_share_a_task_without_overlap(hub: Hub, tmp_path: Path) -> None:
    phones = [f"1380000{i:04d}" for i in range(1, 9)]
    tid = _task(hub, "pair", "Hello, this is the city calling about tomorrow.", phones, max_concurrent=3,
                max_attempts=1)
    peer = Peer(tmp_path / "peer", "uas.xml", hold_ms=30000)
    settings = settings_file(hub, tmp_path / "s.yaml")
    procs = [engine(settings, peer.port, *CLOCK, "--heartbeat", "1", "--exit-when-idle", "--max-runtime", "90",
                    log=tmp_path / f"e{i}.log") for i in range(2)]  # the same work_dir, no --engine-id
    try:
        for i, p in enumerate(procs):
            assert p.wait(timeout=120) == 0, (tmp_path / f"e{i}.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        peer.stop()
    ids = {e["id"] for e in svc.engines(hub)}
    assert len(ids) == 2  # two engines, two ids (each generated once and kept in its work_dir slot)
    cdrs = svc.cdrs(hub, tid)
    assert len(cdrs) == 8 and {c["outcome"] for c in cdrs} == {"completed"}
    assert {c["engine"] for c in cdrs} <= ids
    legs = peer.legs()
    assert sorted(lg.number for lg in legs) == phones  # everyone once, nobody twice
    assert 2 <= peak(legs, time.time()) <= 3  # max_concurrent held across both engines, counted at the peer
