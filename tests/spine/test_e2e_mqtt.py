"""End to end over a real mosquitto on 127.0.0.1: edge link -> broker (passwords + ACL) -> bridge -> store
-> API; last will; broker and hub restarts mid-stream; ACL refusal; each bad-input class."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub, create_app
from central.bridge import store as bridge_store
from central.bridge.service import Bridge
from central.broker import Broker
from central.hub import Hub
from edge.config import parse_config
from edge.link import Link
from protocol import messages, topics
from tests.conftest import make_settings
from tests.helpers import auth, token_for, wait_for

ROOT = Path(__file__).resolve().parents[2]




def count_events(hub: Hub) -> int:
    with hub.store.read() as db:
        return bridge_store.count_events(db)


@pytest.fixture
def mqtt_hub(tmp_path: Path, broker: Broker) -> Iterator[Hub]:
    hub = build_hub(make_settings(tmp_path, broker))
    yield hub
    hub.close()


def provision(hub: Hub, tmp_path: Path, name: str, kind: str = "camera", site: str = "site1") -> dict[str, Any]:
    _row, cfg = hub.services["devices"].provision(site, kind, name, device=name)
    cfg["outbox"]["path"] = str(tmp_path / f"{name}-outbox.db")
    cfg["heartbeat_s"] = 0.5
    return cfg


def raw_client(cfg: dict[str, Any], client_id: str | None = None) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id or cfg["device"] + "-raw")
    c.username_pw_set(cfg["mqtt"]["username"], cfg["mqtt"]["password"])
    c.connect("127.0.0.1", cfg["mqtt"]["port"])
    c.loop_start()
    return c


def test_edge_event_reaches_api_and_status_flips_offline(tmp_path: Path, broker: Broker, mqtt_hub: Hub) -> None:
    cfg = provision(mqtt_hub, tmp_path, "cam1")
    cfg_path = tmp_path / "cam1.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    app = create_app(hub=mqtt_hub)  # starts the bridge in its lifespan
    with TestClient(app) as client:
        h = auth(token_for(mqtt_hub, "ops", "city_admin", "/city"))
        assert mqtt_hub.publisher.wait_connected(10)  # type: ignore[attr-defined]
        edge = subprocess.Popen(
            [sys.executable, "-m", "citybrain.cli", "edge", "camera", "--config", str(cfg_path), "--test-event"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            events = wait_for(
                lambda: client.get("/api/v1/devices/site1/cam1/events", headers=h).json(), what="event in API"
            )
            assert events[0]["kind"] == "test"
            # The first heartbeat goes out at connect, maybe before the test event left the outbox;
            # a later one reports the drained queue.
            wait_for(
                lambda: (d := client.get("/api/v1/devices/site1/cam1", headers=h).json())["state"] == "online"
                and d["last_heartbeat_at"] and d["queue_depth"] == 0,
                what="online + heartbeat with an empty outbox",
            )
            edge.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will can tell
            edge.wait(10)
            wait_for(
                lambda: client.get("/api/v1/devices/site1/cam1", headers=h).json()["state"] == "offline",
                what="offline via last will",
            )
        finally:
            if edge.poll() is None:
                edge.kill()


def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path, broker: Broker, mqtt_hub: Hub) -> None:
    cfg = provision(mqtt_hub, tmp_path, "cam2")
    bridge = Bridge(mqtt_hub).start()
    link = Link(parse_config(cfg)).start()
    try:
        assert bridge.wait_connected(10) and link.wait_connected(10)
        n = 5000
        for i in range(n):
            link.publish_event(messages.Event(kind="crowd", count=i))
            if i == 1500:
                broker.restart()  # SIGTERM: mosquitto saves its persistent sessions on the way down
        assert link.flush(60), f"outbox still holds {link.outbox.depth()}"
        wait_for(lambda: count_events(mqtt_hub) >= n, 60, "all events stored")
        time.sleep(0.5)
        assert count_events(mqtt_hub) == n
    finally:
        link.stop()
        bridge.stop()


HUB_CHILD = """
import sys, time
from central.app import build_hub
from central.bridge.service import Bridge
from central.settings import Settings
import json
hub = build_hub(Settings(**json.loads(sys.argv[1])))
Bridge(hub).start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_hub_killed_mid_ingest_nothing_lost_nothing_doubled(tmp_path: Path, broker: Broker) -> None:
    settings = make_settings(tmp_path, broker)
    hub = build_hub(settings)
    cfg = provision(hub, tmp_path, "cam3")
    arg = settings.model_dump_json()

    def start_hub() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-c", HUB_CHILD, arg], cwd=ROOT, stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        return p

    proc = start_hub()
    link = Link(parse_config(cfg)).start()
    try:
        assert link.wait_connected(10)
        n = 3000
        for i in range(n):
            link.publish_event(messages.Event(kind="litter", count=i))
        wait_for(lambda: count_events(hub) > 200, 30, "ingest under way")
        os.kill(proc.pid, signal.SIGKILL)  # mid-ingest, no clean shutdown
        proc.wait(10)
        stored_at_kill = count_events(hub)
        # The broker keeps the hub's persistent session queue meanwhile; the edge keeps its copies until
        # the restarted hub confirms them.
        wait_for(lambda: link.sent >= n, 60, "everything sent once")
        assert link.outbox.depth() > 0
        proc = start_hub()
        assert link.flush(60), f"outbox still holds {link.outbox.depth()}"
        wait_for(lambda: count_events(hub) >= n, 60, "catch-up after restart")
        time.sleep(0.5)
        assert count_events(hub) == n, (stored_at_kill, count_events(hub))
    finally:
        link.stop()
        proc.kill()
        hub.close()


def test_acl_refuses_publishing_under_another_device(tmp_path: Path, broker: Broker, mqtt_hub: Hub) -> None:
    a = provision(mqtt_hub, tmp_path, "devA")
    provision(mqtt_hub, tmp_path, "devB")
    seen: list[str] = []
    got = threading.Event()
    watcher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="watch")
    watcher.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]

    def on_msg(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        seen.append(m.topic)
        got.set()

    watcher.on_message = on_msg
    watcher.connect("127.0.0.1", broker.cfg.port)
    watcher.subscribe("city/v1/#", qos=1)
    watcher.loop_start()
    time.sleep(0.3)
    c = raw_client(a)
    ev = messages.Event(kind="fire").model_dump_json()
    c.publish(topics.event("site1", "devB", "fire"), ev, qos=1).wait_for_publish(5)  # spoofing devB
    c.publish(topics.event("site1", "devA", "fire"), ev, qos=1).wait_for_publish(5)  # its own prefix
    assert got.wait(5)
    time.sleep(0.5)
    c.loop_stop()
    watcher.loop_stop()
    assert topics.event("site1", "devA", "fire") in seen
    assert topics.event("site1", "devB", "fire") not in seen


def test_bad_input_classes_rejected_counted_bridge_survives(tmp_path: Path, broker: Broker, mqtt_hub: Hub) -> None:
    cfg = provision(mqtt_hub, tmp_path, "cam9")
    bridge = Bridge(mqtt_hub).start()
    assert bridge.wait_connected(10)
    c = raw_client(cfg)
    t = topics.event("site1", "cam9", "fire")
    good = messages.Event(kind="fire")
    sends = [
        (t, b"{this is not json"),
        (t, json.dumps({**good.model_dump(mode="json"), "schema_version": 42}).encode()),
        (t, json.dumps({"kind": "fire", "score": "very"}).encode()),
        (t, b'{"kind": "fire", "attrs": {"x": "' + b"A" * (300 * 1024) + b'"}}'),
        (topics.event("site1", "cam9", "smoke"), good.model_dump_json().encode()),  # topic/payload kind mismatch
    ]
    for topic, payload in sends:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    # an unprovisioned device (the hub's own credentials can write anywhere)
    hubc = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hubpub")
    hubc.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
    hubc.connect("127.0.0.1", broker.cfg.port)
    hubc.loop_start()
    hubc.publish(topics.event("site1", "ghost", "fire"), good.model_dump_json(), qos=1).wait_for_publish(5)
    c.publish(t, good.model_dump_json(), qos=1).wait_for_publish(5)  # then a good one
    c.publish(t, good.model_dump_json(), qos=1).wait_for_publish(5)  # and its re-send
    try:
        wait_for(lambda: count_events(mqtt_hub) == 1, 15, "the good event")
        expected = {"malformed_json", "schema_version", "schema", "oversize", "kind_mismatch", "unknown_device"}
        def seen() -> set[str]:
            with mqtt_hub.store.read() as db:
                return set(bridge_store.reject_counts(db))

        try:
            wait_for(lambda: seen() >= expected, 15, "all rejects")
        finally:
            assert seen() == expected
        # the re-send may be in a later ingest batch than the good event
        wait_for(lambda: bridge.counters["duplicates"] >= 1, 15, "the re-send seen as a duplicate")
        assert bridge.counters["duplicates"] == 1
        assert bridge._writer is not None and bridge._writer.is_alive()
    finally:
        c.loop_stop()
        hubc.loop_stop()
        bridge.stop()


def test_store_unavailable_batch_is_retried_not_rejected(tmp_path: Path, broker: Broker, mqtt_hub: Hub) -> None:
    import sqlite3

    cfg = provision(mqtt_hub, tmp_path, "cam7")
    failures = {"left": 2}

    def flaky_store(db: Any, events: Any) -> None:  # the write fails like a locked database, twice
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")

    mqtt_hub.hooks.on("events.ingested", flaky_store)
    bridge = Bridge(mqtt_hub).start()
    link = Link(parse_config(cfg)).start()
    try:
        assert bridge.wait_connected(10) and link.wait_connected(10)
        for i in range(50):
            link.publish_event(messages.Event(kind="fire", count=i))
        assert link.flush(30)
        wait_for(lambda: count_events(mqtt_hub) == 50, 30, "all 50 events after the store came back")
        assert failures["left"] == 0
        with mqtt_hub.store.read() as db:
            assert bridge_store.reject_counts(db) == {}
    finally:
        link.stop()
        bridge.stop()
