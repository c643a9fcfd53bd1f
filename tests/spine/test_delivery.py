"""End-to-end delivery (issue 14.4): the edge keeps each message until the hub's receipt names it, so a
broker SIGKILLed in any phase (hub up, hub down, during the resend) loses nothing, and the hub stores
each event exactly once. The broker here saves to disk only hourly, so a kill loses everything it held
in memory, as mosquitto does with whatever it acknowledged since its last autosave."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub
from central.bridge import store as bridge_store
from central.broker import Broker, BrokerConfig
from central.hub import Hub
from edge.config import parse_config
from edge.link import Link
from edge.outbox import Outbox, OutboxFull
from protocol import messages, topics
from tests.conftest import make_settings, running_broker
from tests.helpers import wait_for


class RarelySavingConfig(BrokerConfig):
    inflight: int | None = None  # mosquitto's own default is 20 messages in flight per client

    def write(self) -> Path:
        conf = super().write()
        text = conf.read_text().replace("autosave_interval 5", "autosave_interval 3600")
        if self.inflight is not None:
            text = text.replace("max_inflight_messages 0", f"max_inflight_messages {self.inflight}")
        conf.write_text(text)
        return conf


def _fragile(tmp_path: Path, inflight: int | None = None) -> Iterator[Broker]:
    cfg = RarelySavingConfig(dir=tmp_path / "fragile-broker")
    cfg.inflight = inflight
    yield from running_broker(cfg)


@pytest.fixture
def fragile(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto that keeps its state in memory (autosave hourly): a SIGKILL loses all of it."""
    yield from _fragile(tmp_path)


@pytest.fixture
def fragile_windowed(tmp_path: Path) -> Iterator[Broker]:
    """The same with mosquitto's default window of 20 messages in flight: a hub that commits before it
    acknowledges then leaves a backlog queued in the broker even while it keeps up."""
    yield from _fragile(tmp_path, inflight=20)


def crash(broker: Broker) -> None:
    """SIGKILL the broker and start a fresh process on the same port and data directory."""
    broker.stop(kill=True)
    broker.start()


def make_hub(tmp_path: Path, broker: Broker) -> Hub:
    return build_hub(make_settings(tmp_path, broker))


def device(hub: Hub, tmp_path: Path, name: str, **link_kw: Any) -> Link:
    _row, cfg = hub.services["devices"].provision("site1", "camera", name, device=name)
    cfg["outbox"]["path"] = str(tmp_path / f"{name}-outbox.db")
    cfg["heartbeat_s"] = 5
    # Short resend timeouts: a broker that lost the hub's session drops what the edge re-sends at once.
    return Link(parse_config(cfg), **{"resend_after_s": 1.0, "resend_max_s": 2.0, **link_kw})


def start_bridge(hub: Hub) -> None:
    hub.start(bridge=True)
    assert hub.publisher.wait_connected(30)  # type: ignore[attr-defined]


def stored_ids(hub: Hub) -> list[str]:
    with hub.store.read() as db:
        return bridge_store.event_ids(db)


def broker_acked_all(link: Link, n: int) -> None:
    wait_for(lambda: link.sent >= n and not link._inflight, 60, f"the broker's PUBACK for all {n} messages")


def publish(link: Link, n: int, kind: str = "crowd") -> list[str]:
    events = [messages.Event(kind=kind, count=i) for i in range(n)]
    for e in events:
        link.publish_event(e)
    return [e.event_id for e in events]


def assert_exactly_once(hub: Hub, expected: list[str]) -> None:
    wait_for(lambda: len(stored_ids(hub)) >= len(expected), 60, f"{len(expected)} events stored")
    got = stored_ids(hub)
    assert len(got) == len(expected) and set(got) == set(expected)


def test_broker_killed_while_hub_down_loses_nothing(tmp_path: Path, fragile: Broker) -> None:
    hub = make_hub(tmp_path, fragile)
    start_bridge(hub)
    hub.stop()  # the hub's persistent session now queues for it
    link = device(hub, tmp_path, "cam1").start()
    try:
        assert link.wait_connected(30)
        ids = publish(link, 300)
        broker_acked_all(link, 300)
        assert link.outbox.depth() == 300  # acknowledged by the broker, not yet by the hub: kept
        crash(fragile)  # the broker's queue for the hub is gone, and so is the hub's session
        wait_for(lambda: link.connected, 60, "reconnected")
        start_bridge(hub)
        assert link.flush(60), f"outbox still holds {link.outbox.depth()}"
        assert_exactly_once(hub, ids)
        assert link.confirmed == 300
    finally:
        link.stop()
        hub.close()


def test_broker_killed_while_hub_up_loses_nothing(tmp_path: Path, fragile_windowed: Broker) -> None:
    """The hub is up but slower than the edge (its store hook takes 50 ms a batch), so the broker holds a
    backlog for it when it is killed mid-stream."""
    fragile = fragile_windowed
    hub = make_hub(tmp_path, fragile)
    hub.hooks.on("events.ingested", lambda db, events: time.sleep(0.05))
    start_bridge(hub)
    link = device(hub, tmp_path, "cam2").start()
    try:
        assert link.wait_connected(30)
        ids = publish(link, 1000)
        broker_acked_all(link, 1000)
        assert 0 < len(stored_ids(hub)) < 1000
        crash(fragile)  # some stored, some queued by the broker for the hub, some in the hub's hands
        ids += publish(link, 200)
        assert link.flush(90), f"outbox still holds {link.outbox.depth()}"
        assert_exactly_once(hub, ids)
    finally:
        link.stop()
        hub.close()


def test_broker_killed_during_resend_loses_nothing(tmp_path: Path, fragile: Broker) -> None:
    hub = make_hub(tmp_path, fragile)
    start_bridge(hub)
    hub.stop()
    link = device(hub, tmp_path, "cam3").start()
    try:
        assert link.wait_connected(30)
        ids = publish(link, 1000)
        broker_acked_all(link, 1000)
        crash(fragile)
        wait_for(lambda: link.sent > 1000, 60, "the resend after reconnect begins")
        crash(fragile)  # again, while the edge re-sends
        wait_for(lambda: link.connected, 60, "reconnected")
        start_bridge(hub)
        assert link.flush(90), f"outbox still holds {link.outbox.depth()}"
        assert_exactly_once(hub, ids)
    finally:
        link.stop()
        hub.close()


def test_unconfirmed_is_resent_while_connected(tmp_path: Path, fragile: Broker) -> None:
    """No disconnect at all: the broker took the events while no hub had a session (so it dropped them);
    the edge sends them again once their receipt is overdue, and the hub, now up, stores them."""
    hub = make_hub(tmp_path, fragile)
    link = device(hub, tmp_path, "cam4").start()
    drops: list[str] = []
    link.client.on_disconnect = lambda *a: drops.append("drop")  # type: ignore[assignment]
    try:
        assert link.wait_connected(30)
        ids = publish(link, 200)
        broker_acked_all(link, 200)
        start_bridge(hub)
        assert link.flush(60), f"outbox still holds {link.outbox.depth()}"
        assert_exactly_once(hub, ids)
        assert link.resent >= 200 and not drops
    finally:
        link.stop()
        hub.close()


def test_receipts_are_batched_and_follow_the_commit(tmp_path: Path, broker: Broker) -> None:
    hub = make_hub(tmp_path, broker)
    start_bridge(hub)
    hub.stop()  # a backlog for the hub's session: ingested in batches when it is back
    link = device(hub, tmp_path, "cam5").start()
    receipts: list[messages.Receipt] = []
    not_yet_stored: list[str] = []
    lock = threading.Lock()

    def on_receipt(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        r = messages.Receipt.model_validate_json(m.payload)
        with lock:
            have = set(stored_ids(hub))
            not_yet_stored.extend(i for i in r.stored if i not in have)
            receipts.append(r)

    watcher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="receipt-watch")
    watcher.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
    watcher.on_message = on_receipt
    watcher.connect("127.0.0.1", broker.cfg.port)
    watcher.subscribe(topics.receipt("site1", "cam5"), qos=1)
    watcher.loop_start()
    try:
        assert link.wait_connected(30)
        n = 1000
        ids = publish(link, n)
        broker_acked_all(link, n)
        start_bridge(hub)
        assert link.flush(60), f"outbox still holds {link.outbox.depth()}"
        assert_exactly_once(hub, ids)
        wait_for(lambda: sum(len(r.stored) for r in receipts) >= n, 30, "every id receipted")
        with lock:
            # Every id is receipted; one the edge re-sent before its receipt came (a busy machine) may be
            # receipted twice, which is right: the hub confirms a re-send it already stored.
            named = [i for r in receipts for i in r.stored]
            assert set(named) == set(ids), set(ids) ^ set(named)
            assert len(receipts) <= n // 4, f"{len(receipts)} receipts for {n} events: not batched"
            assert not not_yet_stored, "a receipt named an event before its transaction committed"
    finally:
        watcher.loop_stop()
        link.stop()
        hub.close()


def test_refused_message_is_receipted_and_forgotten(tmp_path: Path, broker: Broker) -> None:
    """A payload the hub will never take (here: a schema version it does not speak) is refused with its
    reason in the receipt, so the device stops re-sending it; a good one beside it is stored."""
    hub = make_hub(tmp_path, broker)
    start_bridge(hub)
    link = device(hub, tmp_path, "cam6").start()
    try:
        assert link.wait_connected(30)
        bad = messages.Event(kind="fire")
        raw = bad.model_dump_json().replace('"schema_version":1', '"schema_version":2').encode()
        link.publish(topics.event("site1", "cam6", "fire"), raw)
        good = publish(link, 1, kind="fire")
        assert link.flush(60), f"outbox still holds {link.outbox.depth()}"
        assert link.refused == 1 and stored_ids(hub) == good
        with hub.store.read() as db:
            reasons = [r["reason"] for r in bridge_store.rejects(db)]
        assert reasons == ["schema_version"]
    finally:
        link.stop()
        hub.close()


def test_outbox_keeps_unconfirmed_within_its_bounds(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_messages=10, on_full="reject_new")
    for i in range(10):
        ob.put("t", b"x", receipt_id=f"id{i:08d}")
    ob.delete([])  # PUBACKs settle nothing that waits for a receipt
    with pytest.raises(OutboxFull):
        ob.put("t", b"x", receipt_id="id-too-many")
    gone = ob.confirm(["id00000002", "id00000005", "unknown-id", "id00000002"])
    assert len(gone) == 2 and ob.depth() == 8
    ob.put("t", b"x", receipt_id="id-fits-now")
    ob.close()
    ob = Outbox(tmp_path / "o.db", max_messages=10, on_full="reject_new")  # survives a restart
    assert ob.depth() == 9 and {r.receipt_id for r in ob.pending(0)} >= {"id00000000", "id-fits-now"}
    ob.close()


def test_outbox_of_an_older_build_waits_for_receipts_too(tmp_path: Path) -> None:
    """Rows queued by a build that deleted on PUBACK get their receipt id when the file is upgraded."""
    import sqlite3

    from edge.link import receipt_id_of

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
               " payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL)")
    ev = messages.Event(kind="fire")
    batch = messages.ScanBatch(records=[messages.ScanRecord(verdict="valid")])
    rows = [(topics.event("s", "d", "fire"), ev.model_dump_json().encode()),
            (topics.scan("s", "d"), batch.model_dump_json().encode()),
            ("city/v1/s/d/other", b"{}")]
    db.executemany("INSERT INTO outbox (topic, payload, qos, created) VALUES (?, ?, 1, 0)", rows)
    db.commit()
    db.close()
    ob = Outbox(path, derive_receipt_id=receipt_id_of)
    assert [r.receipt_id for r in ob.pending(0)] == [ev.event_id, batch.batch_id, None]
    assert ob.confirm([ev.event_id]) and ob.depth() == 2
    ob.close()
