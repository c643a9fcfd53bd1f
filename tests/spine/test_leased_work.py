"""Shared work is leased (issue 17 point 3): three real hub processes (every worker, the MQTT bridge) on one
store and one mosquitto. MQTT video alerts are claimed from `video_alerts` with a lease; the hub holding
some is SIGKILLed mid-work and another sends what it held once its lease ran out: every alert is published,
and only those the dead hub held may come twice. Then the video correlator: the hub whose transaction holds
the cursor is SIGKILLed mid-pass; the last one correlates everything, each event into exactly one case."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub
from central.bridge import store as bridge_store
from central.bridge.service import store_events
from central.broker import Broker
from central.hub import Hub
from central.video import store as video_store
from central.video.service import ALERT_TOPIC
from protocol.messages import Event
from tests.conftest import BACKEND, make_settings
from tests.helpers import stop_processes, wait_for

ROOT = Path(__file__).resolve().parents[2]

HUB_CHILD = """
import json, sys, threading
from central.app import build_hub
from central.settings import Settings
hub = build_hub(Settings(**json.loads(sys.argv[1])))
hub.start(bridge=True)
assert hub.publisher.wait_connected(60)
print("ready", flush=True)
threading.Event().wait()
"""

ALERTS = 1500
EVENTS = 4000  # four correlation passes of 1,000
PER_CASE = 4  # events per incident (one camera each): EVENTS / PER_CASE cases, PER_CASE events each

pytestmark = pytest.mark.both_backends


def start_hubs(settings: Any, n: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    data = json.loads(settings.model_dump_json())
    for _ in range(n):
        procs.append(subprocess.Popen([sys.executable, "-c", HUB_CHILD, json.dumps(data)], cwd=ROOT,
                                      stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}))
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready", p.poll()
    return procs


def subscriber(broker: Broker, got: list[bytes]) -> mqtt.Client:
    ready = threading.Event()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="alerts-listener")
    c.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
    c.on_connect = lambda cl, *_: cl.subscribe(f"{ALERT_TOPIC}/#", qos=1)
    c.on_subscribe = lambda *_: ready.set()
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    c.connect("127.0.0.1", broker.cfg.port)
    c.loop_start()
    assert ready.wait(30)
    return c


def alert_rows(hub: Hub) -> list[dict[str, Any]]:
    a = video_store.alerts.c
    with hub.store.read() as db:
        return db.all(sa.select(a.id, a.status, a.lease_owner, a.body).order_by(a.id))


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (from /proc: its fds' socket inodes, /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def cursor_holder(hub: Hub, procs: list[subprocess.Popen[bytes]]) -> int | None:
    """The hub process (its index) whose transaction holds the correlator's cursor: a pass under way
    (PostgreSQL: FOR UPDATE's relation lock lasts as long as the transaction, and a transaction id is
    assigned once it locked the row, which a correlator that skipped the locked row never has). Its
    session is matched to a process by the client's TCP port."""
    with hub.store.read() as db:
        port = db.scalar(sa.text(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.relation = 'video_cursor'::regclass AND l.mode = 'RowShareLock' AND l.granted"
            " AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid() LIMIT 1"))
    if port is None:
        return None
    return next((i for i, p in enumerate(procs) if p.poll() is None and port in local_ports(p.pid)), None)


def test_leased_alerts_and_correlation_survive_a_killed_hub(tmp_path: Path, broker: Broker) -> None:
    settings = make_settings(tmp_path, broker)
    settings.mqtt.share_group = "hubs"  # each hub its own client id (the broker keeps all three)
    settings.webhooks.lease_s = 3.0  # the outbox's lease, which MQTT alerts use too: takeover within seconds
    hub = build_hub(settings)  # the test's own view of the store; never started
    got: list[bytes] = []
    listener = subscriber(broker, got)
    procs = start_hubs(settings, 3)
    try:
        # --- MQTT alerts, as dispatches commit them -------------------------------------------------
        now, at = time.time(), datetime.now(UTC).isoformat()
        with hub.store.tx() as db:
            for i in range(ALERTS):
                video_store.insert_alert(db, i + 1, "mqtt", f"{ALERT_TOPIC}/dept{i % 3}",
                                         json.dumps({"n": i}), at, now)
        owners = {p.pid: p for p in procs}

        def holder() -> int | None:
            for r in alert_rows(hub):
                if r["status"] == "sending" and r["lease_owner"]:
                    pid = int(r["lease_owner"].split(":")[1])
                    if pid in owners:
                        return pid
            return None

        def held_by(pid: int) -> set[int]:
            return {r["id"] for r in alert_rows(hub) if r["status"] == "sending"
                    and r["lease_owner"] and int(r["lease_owner"].split(":")[1]) == pid}

        def frozen_holder() -> tuple[int, set[int]] | None:
            """Stop (SIGSTOP) a hub seen holding alerts; kept stopped only if it still holds some."""
            pid = holder()
            if pid is None:
                return None
            os.kill(pid, signal.SIGSTOP)
            if held := held_by(pid):
                return pid, held
            os.kill(pid, signal.SIGCONT)  # it finished that batch meanwhile: look again
            return None

        victim_pid, held = wait_for(frozen_holder, 60, "a hub holding alert leases")
        victim = owners[victim_pid]
        victim.send_signal(signal.SIGKILL)  # mid-work: its claims are neither sent nor released
        victim.wait(30)
        wait_for(lambda: all(r["status"] == "sent" for r in alert_rows(hub)), 120, "every alert sent")
        wait_for(lambda: len({json.loads(b)["n"] for b in got}) >= ALERTS, 60, "every alert received")
        counts = Counter(json.loads(b)["n"] for b in got)
        assert set(counts) == set(range(ALERTS))  # nothing lost
        twice = {n + 1 for n, k in counts.items() if k > 1}  # alert id = n + 1
        assert twice <= held, (sorted(twice - held)[:10], len(held))  # only a dead hub's claims are repeated
        assert max(counts.values()) <= 2

        # --- correlation over stored events ----------------------------------------------------------
        alive = [p for p in procs if p.poll() is None]
        assert len(alive) == 2
        t0 = datetime.now(UTC) - timedelta(minutes=5)
        items = [("site1", "gw1", Event(kind="fire", camera=f"c{i // PER_CASE}", incident_id=f"inc{i // PER_CASE}",
                                        phase="update", ts=t0 + timedelta(milliseconds=i), score=0.8))
                 for i in range(EVENTS)]
        with hub.store.read() as db:
            start = video_store.cursor_position(db)
        with hub.store.tx() as db:
            store_events(db, items, {}, datetime.now(UTC).isoformat(), {})
        with hub.store.read() as db:
            end = bridge_store.max_seq(db)

        def position() -> int:
            with hub.store.read() as db:
                return video_store.cursor_position(db)

        if BACKEND == "postgresql":  # the hub in the middle of a pass, stopped there, then killed

            def frozen() -> int | None:
                if position() >= end:
                    return -1
                n = cursor_holder(hub, procs)
                if n is None:
                    return None
                os.kill(procs[n].pid, signal.SIGSTOP)
                if cursor_holder(hub, procs) == n and position() < end:
                    return n
                os.kill(procs[n].pid, signal.SIGCONT)
                return None

            n = wait_for(frozen, 120, "a correlation pass")
            assert n >= 0, "all correlated before a pass was seen"
            victim = procs[n]
        else:  # SQLite tells no holder: kill one of the two once the first pass committed
            wait_for(lambda: position() > start, 120, "a first pass")
            victim = alive[0]
        assert victim.poll() is None
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        wait_for(lambda: position() >= end, 120, "every event correlated")
        assert sum(p.poll() is None for p in procs) == 1
        c, e = video_store.cases.c, video_store.case_events.c
        with hub.store.read() as db:
            per_case = db.all(sa.select(c.camera, c.event_count).where(c.kind == "fire"))
            linked = db.scalar(sa.select(sa.func.count()).select_from(video_store.case_events))
            distinct = db.scalar(sa.select(sa.func.count(sa.distinct(e.case_id))))
            created = db.scalar(sa.text("SELECT count(*) FROM iam_audit WHERE action = 'video.case.create'"))
        assert linked == EVENTS and distinct == EVENTS // PER_CASE
        assert len(per_case) == EVENTS // PER_CASE and created == EVENTS // PER_CASE  # a dead pass left nothing
        assert {r["event_count"] for r in per_case} == {PER_CASE}  # no event counted twice
    finally:
        listener.loop_stop()
        listener.disconnect()
        stop_processes(procs)
        hub.close()
