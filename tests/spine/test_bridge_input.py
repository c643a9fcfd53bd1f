"""MQTT bad input (issue 14.6): each bad payload is refused with its reason and never holds back or drops a
good one in the same batch; no traceback spam. Scan batches are idempotent down to each record."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub
from central.bridge import store as bridge_store
from central.broker import Broker
from central.hub import Hub
from protocol import messages, topics
from tests.conftest import make_settings
from tests.helpers import wait_for


@pytest.fixture
def hub(tmp_path: Path, broker: Broker) -> Iterator[Hub]:
    h = build_hub(make_settings(tmp_path, broker))
    yield h
    h.close()


class Device:
    """A device's raw MQTT client (its own credentials) that also collects its receipts."""

    def __init__(self, hub: Hub, name: str, kind: str = "camera") -> None:
        _row, self.cfg = hub.services["devices"].provision("site1", kind, name, device=name)
        self.name = name
        self.receipts: list[messages.Receipt] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{name}-raw")
        self.c.username_pw_set(self.cfg["mqtt"]["username"], self.cfg["mqtt"]["password"])
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", self.cfg["mqtt"]["port"])
        self.c.loop_start()
        self.c.subscribe(topics.receipt("site1", name), qos=1)[1]

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.receipts.append(messages.Receipt.model_validate_json(m.payload))

    def send(self, topic: str, payload: bytes | str) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def stored(self) -> set[str]:
        with self._lock:
            return {i for r in self.receipts for i in r.stored}

    def refused(self) -> dict[str, str]:
        with self._lock:
            return {f.id: f.reason for r in self.receipts for f in r.refused}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def backlog_then_start(hub: Hub, sends: list[tuple[str, bytes | str]], dev: Device) -> None:
    """Queue `sends` for the hub's persistent session while its bridge is down, then start it: the
    bridge takes them in as one backlog (one ingest batch as far as it can)."""
    hub.start(bridge=True)
    assert hub.publisher.wait_connected(30)  # type: ignore[attr-defined]
    hub.stop()
    for topic, payload in sends:
        dev.send(topic, payload)
    hub.start(bridge=True)


def rejects(hub: Hub) -> list[tuple[str, str, str]]:
    r = bridge_store.ingest_rejects.c
    with hub.store.read() as db:
        return [tuple(x) for x in db.run(sa.select(r.topic, r.reason, r.detail).order_by(r.id))]


def stored_events(hub: Hub) -> set[str]:
    with hub.store.read() as db:
        return set(bridge_store.event_ids(db))


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("citybrain.bridge") and r.exc_info]


def test_bad_payloads_refused_good_ones_beside_them_stored(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    dev = Device(hub, "cam1")
    t = topics.event("site1", "cam1", "fire")

    def ev(**over: Any) -> tuple[str, str]:
        e = messages.Event(kind="fire")
        return e.event_id, json.dumps({**e.model_dump(mode="json"), **over})

    good = [ev(), ev()]
    bad = {
        "schema_version": ev(schema_version=True),  # a bool is no version number
        "count": ev(count=True),
        "count ": ev(count=2**64),  # beyond SQLite's INTEGER: used to fail the whole batch
        "score": ev(score="0.5"),  # a string is no number on the wire
    }
    inf_box = messages.Event(kind="fire")
    inf_raw = inf_box.model_dump_json().replace('"boxes":[]', '"boxes":[{"x":1e309,"y":0,"w":1,"h":1}]')
    hb_raw = json.dumps({"uptime_s": 1, "queue_depth": 2**64})
    sends: list[tuple[str, bytes | str]] = [(t, good[0][1])]
    sends += [(t, raw) for _id, raw in bad.values()]
    sends += [(t, inf_raw), (t, good[1][1])]
    try:
        backlog_then_start(hub, sends, dev)
        assert hub.publisher.wait_connected(30)  # type: ignore[attr-defined]
        dev.send(topics.heartbeat("site1", "cam1"), hb_raw)  # QoS0: not queued for an absent hub
        wait_for(lambda: len(rejects(hub)) >= 6, 30, "six rejects")
        wait_for(lambda: len(dev.refused()) >= 5 and len(dev.stored()) >= 2, 30, "receipts")
        assert stored_events(hub) == {good[0][0], good[1][0]}
        got = sorted((reason, detail.split(":")[0]) for _topic, reason, detail in rejects(hub))
        assert got == sorted([("schema_version", "unsupported schema_version"), ("schema", "count"),
                              ("schema", "count"), ("schema", "score"), ("schema", "boxes.0.x"),
                              ("schema", "queue_depth")])
        assert dev.stored() == {good[0][0], good[1][0]}
        assert dev.refused() == {bad["schema_version"][0]: "schema_version", bad["count"][0]: "schema",
                                 bad["count "][0]: "schema", bad["score"][0]: "schema", inf_box.event_id: "schema"}
        assert not tracebacks(caplog)
    finally:
        dev.close()


def test_a_message_the_store_cannot_take_is_isolated(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    """A payload that validates but fails inside the store transaction (here a store hook that cannot
    handle it) is found by splitting its batch: the others are stored and receipted at once, it is
    recorded as store_error, not receipted (its device will send it again), logged without a traceback."""
    caplog.set_level(logging.INFO)

    def picky(db: Any, events: list[tuple[str, str, messages.Event]]) -> None:
        if any(e.count == 13 for _s, _d, e in events):
            raise ValueError("count 13 is unlucky")

    hub.hooks.on("events.ingested", picky)
    dev = Device(hub, "cam2")
    events = [messages.Event(kind="crowd", count=i) for i in range(60)]
    t = topics.event("site1", "cam2", "crowd")
    try:
        backlog_then_start(hub, [(t, e.model_dump_json()) for e in events], dev)
        wait_for(lambda: len(dev.stored()) >= 59, 30, "59 receipted")
        wait_for(lambda: rejects(hub), 30, "the reject")
        unlucky = events[13].event_id
        assert stored_events(hub) == {e.event_id for e in events} - {unlucky}
        assert [(r[1], r[2]) for r in rejects(hub)] == [("store_error", "ValueError: count 13 is unlucky")]
        assert unlucky not in dev.stored() and not dev.refused()
        assert not tracebacks(caplog)
        bridge_lines = [r for r in caplog.records if r.name == "citybrain.bridge" and r.levelno >= logging.WARNING
                        and "disconnected" not in r.getMessage()]
        assert len(bridge_lines) <= 2 * 3, [r.getMessage() for r in bridge_lines]  # per failed batch: 2 lines
    finally:
        dev.close()


def test_scan_batches_and_records_stored_once(hub: Hub) -> None:
    seen: list[str] = []
    hub.hooks.on("scans.ingested", lambda db, batches: seen.extend(r.scan_id for _s, _d, b in batches
                                                                    for r in b.records))
    hub.start(bridge=True)
    assert hub.publisher.wait_connected(30)  # type: ignore[attr-defined]
    dev = Device(hub, "term1", kind="scanner")
    r1, r2, r3 = (messages.ScanRecord(verdict="valid", serial=f"SN{i}") for i in range(3))
    a = messages.ScanBatch(records=[r1, r2])
    b = messages.ScanBatch(records=[r2, r3])  # a terminal that logged r2 again in its next batch
    t = topics.scan("site1", "term1")
    try:
        for batch in (a, a, b, b):
            dev.send(t, batch.model_dump_json())
        wait_for(lambda: dev.stored() >= {a.batch_id, b.batch_id} and len(seen) >= 3, 30, "both batches")
        wait_for(lambda: sum(len(r.stored) for r in dev.receipts) >= 4, 30, "every copy receipted")
        assert sorted(seen) == sorted([r1.scan_id, r2.scan_id, r3.scan_id])
        with hub.store.read() as db:
            rows = list(db.run(sa.select(bridge_store.scans.c.scan_id)).scalars())
            n = db.scalar(sa.select(sa.func.count()).select_from(bridge_store.scan_batches))
        assert sorted(rows) == sorted(seen)
        assert n == 2
    finally:
        dev.close()
