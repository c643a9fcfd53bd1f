"""The devices and bridge answers over HTTP, in strict response mode (tests/conftest.py): each key the
services return must be declared by its response model, and keys a route leaves out stay out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from central.app import build_hub, create_app
from central.bridge import store as bridge_store
from central.devices import store as devices_store
from central.hub import Hub
from central.settings import MqttSettings
from edge.config import DeviceConfig
from protocol.messages import Heartbeat
from tests.conftest import make_settings
from tests.helpers import auth, token_for

API = "/api/v1"


def test_provision_list_command_and_bridge_answers(hub: Hub, client: TestClient) -> None:
    h = auth(token_for(hub, "root", "city_admin", "/city"))
    r = client.post(f"{API}/devices", headers=h, json={"site": "gate", "kind": "scanner", "name": "Gate scanner",
                                                       "device": "scan-1"})
    assert r.status_code == 201, r.text
    scanner = r.json()
    assert scanner["device"]["state"] == "offline" and scanner["device"]["heartbeat"] is None
    assert set(scanner["config"]["scanner"]["city_root_key"]) == {"alg", "kid", "pub"}
    assert "ca_file" not in scanner["config"]["mqtt"]  # no TLS offered: absent, not null
    DeviceConfig.model_validate(scanner["config"])  # what the edge reads

    r = client.post(f"{API}/devices", headers=h, json={"site": "gate", "kind": "camera", "name": "Gate camera",
                                                       "device": "cam-1"})
    assert r.status_code == 201, r.text
    assert "scanner" not in r.json()["config"]
    hb = Heartbeat(uptime_s=5, queue_depth=2, queue_dropped=1)
    with hub.store.tx() as db:
        devices_store.set_heartbeat(db, "gate/cam-1", datetime.now(UTC).isoformat(), hb.model_dump_json(), 2, 1)
        bridge_store.insert_rejects(db, [("2030-01-01T00:00:00Z", "city/v1/gate/cam-1/event/fire", "schema", "bad")])

    listed = client.get(f"{API}/devices", headers=h).json()
    assert [d["id"] for d in listed] == ["gate/cam-1", "gate/scan-1"]
    cam = client.get(f"{API}/devices/gate/cam-1", headers=h).json()
    assert cam["queue_depth"] == 2 and cam["heartbeat"]["uptime_s"] == 5
    assert client.get(f"{API}/devices/gate/cam-1/events", headers=h).json() == []
    r = client.post(f"{API}/devices/gate/cam-1/commands", headers=h, json={"action": "ping"})
    assert r.status_code == 202 and set(r.json()) == {"cmd_id"}

    stats = client.get(f"{API}/bridge/stats", headers=h).json()  # city-wide: with this process's counters
    assert stats["rejected_by_reason"] == {"schema": 1} and "since_start" in stats
    rejects = client.get(f"{API}/bridge/rejects", headers=h).json()
    assert [(x["topic"], x["reason"]) for x in rejects] == [("city/v1/gate/cam-1/event/fire", "schema")]
    scoped = auth(token_for(hub, "op", "street_operator", "/city/district-a"))
    r = client.get(f"{API}/bridge/stats", headers=scoped)
    assert r.status_code == 200 and "since_start" not in r.json() and r.json()["events_stored"] == 0


def test_a_tls_config_names_the_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    settings = make_settings(tmp_path)
    settings.mqtt = MqttSettings(enabled=False, tls_port=18883, ca_file=ca)
    hub = build_hub(settings)
    try:
        with TestClient(create_app(hub=hub, start_bridge=False)) as c:
            r = c.post(f"{API}/devices", headers=auth(token_for(hub, "root")),
                       json={"site": "s", "kind": "camera", "name": "C", "device": "c-1"})
        assert r.status_code == 201, r.text
        mqtt = r.json()["config"]["mqtt"]
        assert mqtt["tls"] is True and mqtt["port"] == 18883 and mqtt["ca_file"] == str(ca)
    finally:
        hub.close()
