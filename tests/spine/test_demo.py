"""The README's demo, for real: broker + hub + camera gateway + scan terminal as processes; the seeded
codes are verified offline by the terminal and its scans, heartbeats and a video case reach the hub;
Ctrl-C (SIGINT) stops everything cleanly."""

from __future__ import annotations

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
        deadline = time.monotonic() + 90
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
                    }
            except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # its tables are not there yet
                continue
            finally:
                store.close()
            if state["scans"] == {"valid": 1, "revoked": 1} and state["online"] == 2 and state["cases"]:
                break
        assert state.get("scans") == {"valid": 1, "revoked": 1}, state
        assert state["online"] == 2 and state["cases"] and state["test_cases"] == 0, state
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Console:" in out and "demo stopped cleanly" in out
    assert "user 'admin', password 'Demo-" in out  # a first run: the initial password, still unchanged
