"""Ingest as a pool (issue 17.2): bridges subscribe through `$share/<group>/...` with their own client ids
and clean sessions, so a real mosquitto splits the devices' messages between them; one killed mid-work
(SIGKILL) loses nothing: what was in flight to it is re-sent by the edge's outbox and taken by another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from central.app import build_hub
from central.bridge import store as bridge_store
from central.broker import Broker
from central.hub import Hub
from protocol import messages, topics
from tests.conftest import database_url, make_settings
from tests.helpers import stop_processes, wait_for
from tests.spine.test_bridge_input import Device, rejects
from tests.spine.test_delivery import device

ROOT = Path(__file__).resolve().parents[2]


def stored_ids(hub: Hub) -> list[str]:
    with hub.store.read() as db:
        return list(db.run(sa.select(bridge_store.events.c.event_id)).scalars())


@pytest.fixture
def pool(tmp_path: Path, broker: Broker) -> Iterator[tuple[Hub, Hub]]:
    url = database_url(migrated=True)
    a = build_hub(make_settings(tmp_path / "a", broker, database_url=url, db_path=tmp_path / "hub.db"))
    b = build_hub(make_settings(tmp_path / "b", broker, database_url=url, db_path=tmp_path / "hub.db"))
    for h in (a, b):
        h.settings.mqtt.share_group = "hubs"
        h.settings.mqtt.client_id = "pool"  # the same configured id: each member still gets its own
    yield a, b
    a.close()
    b.close()


def test_two_bridges_split_the_devices_messages_and_store_each_once(pool: tuple[Hub, Hub]) -> None:
    a, b = pool
    for h in (a, b):
        h.start(bridge=True)
        assert h.publisher.wait_connected(30)  # type: ignore[attr-defined]
    ids = {a.publisher.client_id, b.publisher.client_id}  # type: ignore[attr-defined]
    assert len(ids) == 2 and all(i.startswith("pool-") for i in ids)
    dev = Device(a, "cam1")
    try:
        dev.send(topics.status("site1", "cam1"), messages.Status(state="online").model_dump_json())
        sent = [messages.Event(kind="fire") for _ in range(60)]
        for e in sent:
            dev.send(topics.event("site1", "cam1", "fire"), e.model_dump_json())
        wait_for(lambda: dev.stored() >= {e.event_id for e in sent}, 60, "every event receipted")
    finally:
        dev.close()
    got = stored_ids(a)
    assert sorted(got) == sorted(e.event_id for e in sent)  # each stored once
    took = [h.publisher.counters["events"] for h in (a, b)]  # type: ignore[attr-defined]
    assert sum(took) == 60 and min(took) > 0, took  # the broker split them


def test_a_member_killed_mid_work_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    url = database_url(migrated=True)
    settings = make_settings(tmp_path, broker, database_url=url)
    cfg = tmp_path / "hub.yaml"
    data = settings.model_dump(mode="json", exclude_none=True)
    data["mqtt"]["share_group"] = "hubs"
    cfg.write_text(yaml.safe_dump(data))
    hub = build_hub(settings)  # the test's own view of the store, and the device's provisioning
    link = device(hub, tmp_path, "cam1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / f"bridge-{i}.log" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "citybrain.cli", "hub", "bridge", "-c", str(cfg)],
                              env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb")) for log in logs]
    try:
        for p, log in zip(procs, logs, strict=True):  # both subscribed before the device sends
            wait_for(lambda p=p, log=log: "connected" in log.read_text() or p.poll() is not None, 90, "bridge up")
            assert p.poll() is None, log.read_text()[-2000:]
        link.start()
        assert link.wait_connected(30)
        sent = [messages.Event(kind="litter", count=i) for i in range(200)]
        for i, e in enumerate(sent):
            link.publish_event(e)
            if i == 80:
                procs[0].send_signal(signal.SIGKILL)  # mid-work: some of its share is in flight
            time.sleep(0.005)
        assert link.flush(120), f"outbox still holds {link.outbox.depth()}"
        got = stored_ids(hub)
        assert sorted(got) == sorted(e.event_id for e in sent)  # nothing lost, nothing twice
        assert procs[1].poll() is None
    finally:
        link.stop()
        stop_processes(procs)
        hub.close()


def test_a_device_revoked_elsewhere_is_refused_once_its_cache_entry_expires(
        tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge trusts a device it found active for KNOWN_TTL_S only: revoked in the shared store (by any
    process), its messages are refused by every bridge after that, not accepted for ever."""
    from central.bridge import service as bridge_service
    from central.devices import store as devices_store

    monkeypatch.setattr(bridge_service, "KNOWN_TTL_S", 0.5)
    hub = build_hub(make_settings(tmp_path, broker))
    try:
        hub.start(bridge=True)
        assert hub.publisher.wait_connected(30)  # type: ignore[attr-defined]
        dev = Device(hub, "cam1")
        try:
            first = messages.Event(kind="fire")
            dev.send(topics.event("site1", "cam1", "fire"), first.model_dump_json())
            wait_for(lambda: first.event_id in dev.stored(), 30, "first event stored")
            with hub.store.tx() as db:  # as another hub process's revocation would leave it
                db.run(devices_store.devices.update().where(devices_store.devices.c.id == "site1/cam1")
                       .values(revoked=1))
            time.sleep(0.6)
            late = messages.Event(kind="fire")
            dev.send(topics.event("site1", "cam1", "fire"), late.model_dump_json())
            # nothing is receipted to a device the hub does not know: the refusal is in the rejects table
            wait_for(lambda: any(r[1] == "unknown_device" for r in rejects(hub)), 30, "the late event refused")
        finally:
            dev.close()
        assert stored_ids(hub) == [first.event_id]
    finally:
        hub.close()
