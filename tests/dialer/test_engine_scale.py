"""The engines grow with the work (issue 20): `dialer run --workers 1 --max-workers 2` starts with one
engine process (4 calls: the pjsua2 wheel's PJSUA_MAX_CALLS) and, while a running task wants 6 calls at
once, adds a second, so the peer sees more than one process could hold, and never more than the task's
max_concurrent. Real SIP on loopback, SIPp as the callees."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from central.dialer import service as svc
from central.dialer.templates import Template
from central.hub import Hub
from tests.dialer.sipp import Peer, engine, peak, settings_file
from tests.dialer.test_engine_crash import CLOCK, ORG


def _task(hub: Hub, phones: list[str]) -> int:
    """A task whose calls stay up ~40 s: the peer says nothing, so the robot waits out a 20 s question twice
    (no input, one retry) before it says goodbye; the first engine's 4 calls are still up when the second
    engine has started (a fresh interpreter, pjsua2 and the prompts' TTS: tens of seconds when loaded)."""
    tpl = Template.model_validate({"key": "grow", "name": "grow", "language": "en", "start": "q", "nodes": [
        {"id": "q", "kind": "ask", "prompt": "Press one to hear the notice.", "timeout_s": 20, "max_retries": 1,
         "answers": [{"intent": "yes", "dtmf": "1", "next": "bye"}], "on_fail": "bye"},
        {"id": "bye", "kind": "end", "prompt": "Goodbye.", "outcome": "completed"}]})
    svc.save_template(hub, tpl, ORG, "alice")
    sched = svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}], calls_per_second=10, max_concurrent=6,
                         max_attempts=1)
    tid = svc.create_task(hub, svc.TaskIn(name="grow", org=ORG, template_key="grow", schedule=sched), "alice")
    csv = "phone,name\n" + "".join(f"{p},P{i}\n" for i, p in enumerate(phones))
    assert svc.import_contacts(hub, tid, "l.csv", csv.encode(), "alice")["errors"] == []
    svc.change_state(hub, tid, "start", "alice")
    return tid


@pytest.mark.slow
def test_a_supervisor_adds_an_engine_while_a_task_wants_more_calls(hub: Hub, tmp_path: Path) -> None:
    phones = [f"1380000{i:04d}" for i in range(1, 7)]
    tid = _task(hub, phones)
    peer = Peer(tmp_path / "peer", "uas.xml", hold_ms=90000)  # the robot hangs up, not the peer
    settings = settings_file(hub, tmp_path / "s.yaml")
    log = tmp_path / "e.log"
    p = engine(settings, peer.port, *CLOCK, "--heartbeat", "1", "--workers", "1", "--max-workers", "2",
               "--exit-when-idle", "--max-runtime", "150", log=log)
    try:
        assert p.wait(timeout=200) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        peer.stop()
    text = log.read_text()
    assert "the running tasks want 6 calls at once, the live engines hold 4: worker 2 started (2 of at most 2)" \
        in text, text[-3000:]
    cdrs = svc.cdrs(hub, tid)
    assert len(cdrs) == 6 and {c["outcome"] for c in cdrs} == {"completed"}, cdrs
    assert len({c["engine"] for c in cdrs}) == 2  # both processes dialled
    assert len(svc.engines(hub)) == 2
    legs = peer.legs()
    assert sorted(lg.number for lg in legs) == phones  # everyone once, nobody twice
    assert peak(legs, time.time()) == 6  # more than one engine holds, never more than max_concurrent
    assert svc.task_status(hub, tid) == "completed"
