"""The README's demo, for real: broker + hub + camera gateway + scan terminal as processes; the seeded
codes are verified offline by the terminal and its scans, heartbeats and a video case reach the hub;
Ctrl-C (SIGINT) stops everything cleanly."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from central.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "citybrain.cli", "hub", "demo", "--dir", str(demo), "--port", str(free_port()),
         "--mqtt-port", str(free_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        db = demo / "hub" / "hub.db"
        deadline = time.monotonic() + 90
        state: dict[str, object] = {}
        while time.monotonic() < deadline:
            time.sleep(1)
            if not db.exists():
                continue
            con = sqlite3.connect(db, timeout=10)
            try:
                state = {
                    "scans": dict(con.execute("SELECT verdict, COUNT(*) FROM scans GROUP BY verdict").fetchall()),
                    "online": con.execute("SELECT COUNT(*) FROM devices WHERE status='online'"
                                          " AND last_hb_at IS NOT NULL").fetchone()[0],
                    "cases": con.execute("SELECT COUNT(*) FROM video_cases").fetchone()[0],
                }
            except sqlite3.OperationalError:
                continue
            finally:
                con.close()
            if state["scans"] == {"valid": 1, "revoked": 1} and state["online"] == 2 and state["cases"]:
                break
        assert state.get("scans") == {"valid": 1, "revoked": 1}, state
        assert state["online"] == 2 and state["cases"], state
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Console:" in out and "demo stopped cleanly" in out
