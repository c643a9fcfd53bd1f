"""Shared work is leased (issue 17 point 3): three real hub processes (every worker, the MQTT bridge) on one
store and one mosquitto. MQTT video alerts are claimed from `video_alerts` with a lease; the hub holding
some is SIGKILLed mid-work and another sends what it held once its lease ran out: every alert is published,
and only those the dead hub held may come twice. Then the video correlator: the hub whose transaction holds
the cursor is SIGKILLed mid-pass; the last one correlates everything, each event into exactly one case.
And a registry upload: its importer process is stopped mid-import (the same file sent meanwhile is refused),
then SIGKILLed; sent again once the lease ran out, the import goes on after the last stored chunk: every row
once, and one report for the whole file."""

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
    # the outbox's lease, which MQTT alerts use too: a takeover within seconds, yet long enough that a live hub
    # publishes and records its batch inside it beside a CPU hog (at 3 s one had its last batch taken over)
    settings.webhooks.lease_s = 8.0
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

            def frozen() -> subprocess.Popen[bytes] | str | None:
                if position() >= end:
                    return "all correlated before a pass was seen"
                n = cursor_holder(hub, procs)
                if n is None:
                    return None
                os.kill(procs[n].pid, signal.SIGSTOP)
                if cursor_holder(hub, procs) == n and position() < end:
                    return procs[n]
                os.kill(procs[n].pid, signal.SIGCONT)  # its pass ended meanwhile: look again
                return None

            found = wait_for(frozen, 120, "a correlation pass")
            assert not isinstance(found, str), found
            victim = found
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
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped one would not see SIGTERM
        stop_processes(procs)
        hub.close()


IMPORTER_CHILD = """
import json, sys
from central.app import build_hub
from central.registry import service as svc
from central.registry.service import importing
from central.settings import Settings
importing.IMPORT_LEASE_S = float(sys.argv[3])
hub = build_hub(Settings(**json.loads(sys.argv[1])))
rows = [(line, raw) for line, raw in json.load(open(sys.argv[2]))]
svc.import_rows(hub, svc.SystemActor("importer", "/city/district-a"), rows, org="/city/district-a", chunk=250)
"""
UPLOAD = 10000
IMPORT_LEASE_S = 6.0


def test_an_upload_whose_importer_dies_goes_on_where_it_stopped(tmp_path: Path) -> None:
    from central.registry import service as svc
    from central.registry.service.common import Conflict
    from central.registry.store.tables import entities, imports
    from tests.helpers import token_for

    settings = make_settings(tmp_path)
    hub = build_hub(settings)
    token_for(hub, "admin-a", role="district_admin", org="/city/district-a")  # the org chain
    rows = [(i, {"type": "place", "region": "330106", "name": f"site {i}"}) for i in range(1, UPLOAD + 1)]
    upload = tmp_path / "upload.json"
    upload.write_text(json.dumps(rows))

    def done() -> int:
        with hub.store.read() as db:
            return int(db.scalar(sa.select(sa.func.coalesce(sa.func.max(imports.c.rows_done), 0))))

    def stored() -> list[str]:
        with hub.store.read() as db:
            return list(db.run(sa.select(entities.c.name).where(entities.c.name.like("site %"))).scalars())

    actor = svc.SystemActor("again", "/city/district-a")
    p = subprocess.Popen([sys.executable, "-c", IMPORTER_CHILD, settings.model_dump_json(), str(upload),
                          str(IMPORT_LEASE_S)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        def stopped_mid_import() -> bool:
            if not 0 < done() <= UPLOAD // 2:
                assert done() < UPLOAD // 2, "the import ran past half before it was seen"
                return False
            p.send_signal(signal.SIGSTOP)
            return True

        wait_for(stopped_mid_import, 120, "an import under way")
        with pytest.raises(Conflict, match="being imported by another request"):  # never twice at once
            svc.import_rows(hub, actor, rows, org="/city/district-a", chunk=250)
        writers = _children(p.pid)  # its writer process (bulkwrite), which may still commit what it was handed
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        # the writer ends once it finds its importer gone (a broken pipe); its last chunk may have renewed the
        # lease after the kill (seen under load), so the lease is read once nothing can renew it any more
        wait_for(lambda: not any(_running(w) for w in writers), 60, "the dead importer's writer to end")
        with hub.store.read() as db:
            until = db.scalar(sa.select(imports.c.lease_until))
        wait_for(lambda: time.time() > until, 60, "the dead importer's lease ran out")
        before = done()
        assert 0 < before < UPLOAD
        report = svc.import_rows(hub, actor, rows, org="/city/district-a", chunk=250)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    names = stored()
    assert len(names) == UPLOAD and len(set(names)) == UPLOAD  # every row once: nothing lost, nothing redone
    assert report.total == UPLOAD and report.created == UPLOAD and not report.errors
    assert sorted(r["row"] for r in report.ids) == list(range(1, UPLOAD + 1))  # one report for the whole file
    with hub.store.read() as db:
        assert db.first(sa.select(imports.c.status, imports.c.rows_done)) == {"status": "done", "rows_done": UPLOAD}
    hub.close()


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


def _running(pid: int) -> bool:
    """Whether `pid` is still a live process (a zombie nobody reaped has ended)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
