"""Real-time automatic registration: HTTP push with an API-key-like principal and MQTT through a real
mosquitto and the hub bridge; both idempotent on the external key."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub
from central.bridge.service import Bridge
from central.broker import Broker
from central.hub import Hub
from central.registry.store import tables as tb
from protocol import topics
from tests.conftest import make_settings
from tests.helpers import wait_for
from tests.registry.conftest import AUDIT, Api, count, id_card, rows, uscc


def test_http_push_is_idempotent_on_external_key(hub: Hub, admin_a: Api, city: dict[str, str]) -> None:
    rec = {"type": "enterprise", "region": "330106", "name": "Tea House Ltd", "external_key": uscc(7)}
    obj = {"type": "object", "region": "330106", "name": "camera 7", "external_key": "cctv:CAM-7",
           "links": [{"rel": "attached_to", "target": city["building"]},
                     {"rel": "operated_by", "target": city["enterprise"]}]}
    first = admin_a.ok("post", "/push", {"source": "market-bureau", "records": [rec, obj]})
    assert first["created"] == 2 and not first["errors"]
    again = admin_a.ok("post", "/push", {"records": [rec, obj]})
    assert again["created"] == 0 and again["unchanged"] == 2
    assert [i["id"] for i in again["ids"]] == [i["id"] for i in first["ids"]]
    # a changed record updates in place (feed: entity.update); "CAM7" is a different key than "CAM-7"
    upd = admin_a.ok("post", "/push", {"records": [{**rec, "name": "Tea House Co"},
                                                   {**obj, "external_key": "cctv:CAM7"}]})
    assert upd["updated"] == 1 and upd["created"] == 1
    assert admin_a.ok("get", f"/entities/{first['ids'][0]['id']}")["name"] == "Tea House Co"
    # the same key twice in one push: the second is an update of the first, not a duplicate
    p2 = {"type": "person", "region": "330106", "name": "Wang Wu", "external_key": id_card(9)}
    twice = admin_a.ok("post", "/push", {"records": [p2, {**p2, "name": "Wang Wu (renamed)"}]})
    assert twice["created"] == 1 and twice["updated"] == 1
    bad = admin_a.ok("post", "/push", {"records": [{"type": "place", "region": "330106", "name": "no key"},
                                                   {"type": "place", "region": "330106", "name": "k",
                                                    "external_key": "parks:1", "bogus": 1}]})
    assert [e["field"] for e in bad["errors"]] == ["external_key", "bogus"]
    assert admin_a.post("/push", {"records": []}).status_code == 422


def test_mqtt_push_through_real_broker(tmp_path: Path, broker: Broker) -> None:
    hub = build_hub(make_settings(tmp_path, broker))
    bridge = Bridge(hub).start()
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bizsys-1")
    pub.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
    try:
        assert bridge.wait_connected(10)
        pub.connect("127.0.0.1", broker.cfg.port)
        pub.loop_start()
        rec = {"type": "enterprise", "region": "330106", "name": "Lakeside Boats", "external_key": uscc(11),
               "org": "/city/district-a"}
        body = json.dumps({"source": "market", "records": [rec]}).encode()
        no_org = {k: v for k, v in rec.items() if k != "org"} | {"external_key": uscc(12)}
        for payload in (body, body, b"{not json", json.dumps({**rec, "external_key": "91350100M000100Y44"}).encode(),
                        json.dumps(no_org).encode()):
            pub.publish(topics.REGISTRY_PUSH, payload, qos=1).wait_for_publish(5)

        def rejects() -> list[tuple[str, str]]:
            return rows(hub, tb.rejects.c.source, tb.rejects.c.error)  # type: ignore[return-value]

        wait_for(lambda: len(rejects()) >= 3, 15, "three rejects")
        stored = rows(hub, tb.entities.c.id, tb.entities.c.name, tb.entities.c.org)
        assert len(stored) == 1 and stored[0][1:] == ("Lakeside Boats", "/city/district-a")  # sent twice, stored once
        errs = [json.loads(e)["field"] for _, e in rejects()]
        assert sorted(errs) == ["external_key", "org", "payload"]
        assert count(hub, AUDIT, AUDIT.c.actor == "mqtt:registry_push") == 1
    finally:
        pub.loop_stop()
        bridge.stop()
        hub.close()
