"""The README's demo, for real: broker + hub + camera gateway + scan terminal + simulated callee + dialer
engine as processes; the seeded codes are verified offline by the terminal and its scans, heartbeats and a
video case reach the hub; the demo call task completes with a CDR per attempt; Ctrl-C (SIGINT) stops
everything cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.bridge import store as bridge_store
from central.broker import free_port
from central.devices import store as devices_store
from central.dialer import store as dialer_store
from central.store import Store
from central.video import store as video_store
from tests.conftest import database_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    url = database_url()  # the PostgreSQL pass runs the whole demo on PostgreSQL (./run demo --database-url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "citybrain.cli", "hub", "demo", "--dir", str(demo), "--port", str(free_port()),
         "--mqtt-port", str(free_port()), *(["--database-url", url] if url else [])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        db = demo / "hub" / "hub.db"
        deadline = time.monotonic() + 180  # the calls take ~40 s on a quiet machine
        state: dict[str, object] = {}
        while time.monotonic() < deadline:
            time.sleep(1)
            if url is None and not db.exists():
                continue
            store = Store(url or db)  # the demo hub's own database, read beside it (SQLite: WAL)
            try:
                with store.read() as con:
                    scans, devices = bridge_store.scans.c, devices_store.devices.c
                    state = {
                        "scans": {r[0]: r[1] for r in con.run(sa.select(scans.verdict, sa.func.count())
                                                              .group_by(scans.verdict))},
                        "online": con.scalar(sa.select(sa.func.count()).where(devices.status == "online",
                                                                               devices.last_hb_at.is_not(None))),
                        "cases": con.scalar(sa.select(sa.func.count()).select_from(video_store.cases)),
                        # the camera's --test-event proves the path; it must not leave a case behind
                        "test_cases": con.scalar(sa.select(sa.func.count()).where(video_store.cases.c.kind == "test")),
                        **_calls(con, demo),
                    }
            except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # its tables are not there yet
                continue
            finally:
                store.close()
            if (state["scans"] == {"valid": 1, "revoked": 1} and state["online"] == 2 and state["cases"]
                    and state["call_task"] == "completed"):
                break
        assert state.get("scans") == {"valid": 1, "revoked": 1}, state
        assert state["online"] == 2 and state["cases"] and state["test_cases"] == 0, state
        # the simulated callee answered as scripted: busy once then the retry, keypad, speech then keypad
        assert state["call_task"] == "completed", state
        assert state["cdrs"] == {"138****0001": [("completed", 200)], "138****0002": [("completed", 200)],
                                 "138****0003": [("busy", 486), ("completed", 200)]}, state
        callee_log = [json.loads(x) for x in (demo / "dialer" / "callee.jsonl").read_text().splitlines()]
        assert any(e["event"] == "turn" and e["phone"] == "13800000001" and "wav" in e["turn"]
                   for e in callee_log)  # it did speak (the robot's own TTS voice, synthesised at start)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Console:" in out and "demo stopped cleanly" in out
    assert "user 'admin', password 'Demo-" in out  # a first run: the initial password, still unchanged
    task = json.loads((demo / "dialer" / "demo.json").read_text())["task_id"]
    assert f"call task {task} completed: 3/3 contacts done" in out and "138****0003 attempt 1, busy, SIP 486" in out


def _calls(con: object, demo: Path) -> dict[str, object]:
    """The demo call task's status and its CDRs as phone -> [(outcome, SIP status)] in attempt order."""
    ids = demo / "dialer" / "demo.json"
    if not ids.exists():
        return {"call_task": None, "cdrs": {}}
    task = json.loads(ids.read_text())["task_id"]
    t, c, k = dialer_store.tasks.c, dialer_store.cdrs_t.c, dialer_store.contacts.c
    # the status first: each statement sees what is committed when it starts (PostgreSQL, read committed),
    # and the task completes in the transaction of its last CDR; read the other way round, a CDR committed
    # between the two reads was missing beside a task already "completed"
    status = con.scalar(sa.select(t.status).where(t.id == task))  # type: ignore[attr-defined]
    rows = con.run(sa.select(k.phone_masked, c.outcome, c.sip_status)  # type: ignore[attr-defined]
                   .join_from(dialer_store.cdrs_t, dialer_store.contacts, k.id == c.contact_id)
                   .where(c.task_id == task).order_by(c.id))
    cdrs: dict[str, list[tuple[str, int]]] = {}
    for phone, outcome, sip_status in rows:
        cdrs.setdefault(phone, []).append((outcome, sip_status))
    return {"call_task": status, "cdrs": cdrs}
