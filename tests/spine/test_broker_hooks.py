"""The broker hooks EMQX 5 calls (`mqtt.auth_backend: hooks`), against the request and answer shapes of
EMQX's documentation (access-control/authn/http, access-control/authz/http): POST, JSON body rendered from
${username} ${password} ${clientid} ${peerhost} (authn) and ${username} ${clientid} ${peerhost} ${action}
${topic} (authz), the shared secret in a header; answer 200 with {"result": "allow"|"deny"} (+ is_superuser).

And that the hook and a real mosquitto, given the ACL file the hub wrote, decide subscriptions alike, and
that a device mosquitto knows from its password file is known to the hook after the hub starts."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from central.app import build_hub, create_app
from central.broker import Broker
from central.devices import store as devices_store
from central.devices.brokerauth import verify_password
from central.hub import Hub
from central.iam.audit import fetch_rows
from central.settings import MqttSettings
from tests.conftest import make_settings

AUTHN = "/api/v1/devices/mqtt/authn"
AUTHZ = "/api/v1/devices/mqtt/authz"
SECRET = secrets.token_urlsafe(24)
HUB_PW = secrets.token_urlsafe(16)
H = {"Authorization": f"Bearer {SECRET}"}


class World:
    def __init__(self, hub: Hub, client: TestClient, passwords: dict[str, str], files: list[Path]) -> None:
        self.hub, self.client, self.pw, self.files = hub, client, passwords, files

    def authn(self, username: str, password: str, headers: dict[str, str] | None = H) -> Any:
        # what EMQX posts for body {username = "${username}", password = "${password}", clientid = ..., peerhost = ...}
        return self.client.post(AUTHN, headers=headers, json={
            "username": username, "password": password, "clientid": f"{username}-c1", "peerhost": "10.0.0.7"})

    def authz(self, username: str, action: str, topic: str, headers: dict[str, str] | None = H) -> Any:
        return self.client.post(AUTHZ, headers=headers, json={
            "username": username, "clientid": f"{username}-c1", "peerhost": "10.0.0.7", "action": action,
            "topic": topic})

    def allowed(self, username: str, action: str, topic: str) -> bool:
        r = self.authz(username, action, topic)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")  # EMQX reads no other type
        assert set(r.json()) == {"result"} and r.json()["result"] in ("allow", "deny")
        return bool(r.json()["result"] == "allow")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, postgres_server: object) -> Iterator[World]:
    """One hooks hub for the module (cheap checks share it); two devices provisioned the normal way."""
    tmp = tmp_path_factory.mktemp("hooks")
    settings = make_settings(tmp)
    # The mosquitto files are set too: the hooks backend must leave them unwritten.
    files = [tmp / "passwd", tmp / "acl"]
    settings.mqtt = MqttSettings(enabled=False, username="hub", password=HUB_PW, auth_backend="hooks",
                                 hook_secret=SECRET, passwd_file=files[0], acl_file=files[1])
    hub = build_hub(settings)
    passwords = {}
    for device in ("cam-1", "cam-2", "old-1"):
        _row, cfg = hub.services["devices"].provision("gate", "camera", device, device=device)
        passwords[cfg["mqtt"]["username"]] = cfg["mqtt"]["password"]
    with hub.store.tx() as db:  # old-1 is revoked
        db.run(sa.update(devices_store.devices).where(devices_store.devices.c.id == "gate/old-1").values(revoked=1))
    try:
        yield World(hub, TestClient(create_app(hub=hub, start_bridge=False)), passwords, files)
    finally:
        hub.close()


def test_provisioning_writes_no_broker_file_and_stores_a_hash(world: World) -> None:
    assert not any(f.exists() for f in world.files)
    with world.hub.store.read() as db:
        row = devices_store.get(db, "gate/cam-1")
    assert row is not None and row["password_hash"].startswith("$7$")
    assert world.pw["gate.cam-1"] not in row["password_hash"]
    assert verify_password(world.pw["gate.cam-1"], row["password_hash"])


def test_authn_answers(world: World) -> None:
    r = world.authn("gate.cam-1", world.pw["gate.cam-1"])
    assert r.status_code == 200 and r.json() == {"result": "allow", "is_superuser": False}
    assert r.headers["content-type"].startswith("application/json")
    denied = [
        ("gate.cam-1", "wrong-" + world.pw["gate.cam-1"]),  # wrong password
        ("gate.cam-1", world.pw["gate.cam-2"]),  # another device's password
        ("gate.cam-1", ""),  # a client that sent none (EMQX renders ${password} as "")
        ("gate.nobody", world.pw["gate.cam-1"]),  # unknown user
        ("nodot", "x"),
        ("", ""),
        ("gate.old-1", world.pw["gate.old-1"]),  # revoked: its right password no longer lets it in
        ("hub", "wrong"),
    ]
    for username, password in denied:
        r = world.authn(username, password)
        assert r.status_code == 200 and r.json() == {"result": "deny", "is_superuser": False}, username
    # the hub's own user (every hub node and bridge member), held to its rules: no superuser
    assert world.authn("hub", HUB_PW).json() == {"result": "allow", "is_superuser": False}


def test_authz_applies_the_mosquitto_rules(world: World) -> None:
    own = "city/v1/gate/cam-1"
    for action, topic in [("publish", f"{own}/event/fire"), ("publish", f"{own}/hb"), ("publish", f"{own}/status"),
                          ("publish", f"{own}/scan"), ("publish", f"{own}/ack"), ("subscribe", f"{own}/cmd"),
                          ("subscribe", f"{own}/receipt"), ("subscribe", "city/v1/trust"),
                          ("subscribe", "city/v1/revocations")]:
        assert world.allowed("gate.cam-1", action, topic), (action, topic)
    for action, topic in [
        ("publish", "city/v1/gate/cam-2/event/fire"),  # another device's prefix
        ("subscribe", "city/v1/gate/cam-2/cmd"),
        ("publish", f"{own}/cmd"),  # the hub's direction, not the device's
        ("subscribe", f"{own}/event/fire"),
        ("publish", "city/v1/trust"),  # read-only list
        ("publish", f"{own}/event/+"),  # a wildcard is no topic to publish to
        ("subscribe", f"{own}/#"),  # wider than what it may read
        ("subscribe", "city/v1/#"),
        ("subscribe", "#"),
        ("subscribe", "$share/g/city/v1/+/+/event/+"),
        ("publish", "other/topic"),
    ]:
        assert not world.allowed("gate.cam-1", action, topic), (action, topic)
    assert not world.allowed("gate.old-1", "publish", "city/v1/gate/old-1/event/fire")  # revoked
    assert not world.allowed("gate.nobody", "publish", "city/v1/gate/nobody/event/fire")
    # the hub: readwrite city/v1/#, including the pool's shared subscription (judged by its real filter)
    for action, topic in [("subscribe", "$share/citybrain/city/v1/+/+/event/+"), ("subscribe", "city/v1/+/+/status"),
                          ("publish", "city/v1/gate/cam-1/cmd"), ("publish", "city/v1/trust")]:
        assert world.allowed("hub", action, topic), (action, topic)
    assert not world.allowed("hub", "subscribe", "$SYS/#")
    assert not world.allowed("hub", "publish", "elsewhere/x")


def test_secret_is_required(world: World) -> None:
    for headers in (None, {"Authorization": "Bearer wrong-secret-wrong-secret"}, {"Authorization": SECRET},
                    {"X-Other": SECRET}):
        r = world.authn("gate.cam-1", world.pw["gate.cam-1"], headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "authorization", headers
        assert "result" not in r.json()
        r = world.authz("hub", "publish", "city/v1/trust", headers=headers)
        assert r.status_code == 401, headers


def test_bad_bodies_name_the_field(world: World) -> None:
    c = world.client
    cases = [
        (AUTHN, {"password": "x"}, "username"),
        (AUTHN, {"username": "gate.cam-1"}, "password"),
        (AUTHN, {"username": 5, "password": "x"}, "username"),
        (AUTHZ, {"username": "hub", "action": "publish"}, "topic"),
        (AUTHZ, {"username": "hub", "action": "all", "topic": "city/v1/x"}, "action"),
        (AUTHZ, {"username": "hub", "action": "publish", "topic": ""}, "topic"),
    ]
    for url, body, field in cases:
        r = c.post(url, headers=H, json=body)
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    for raw in (b"", b"[1]", b"not json"):
        r = c.post(AUTHN, headers={**H, "Content-Type": "application/json"}, content=raw)
        assert r.status_code == 400, (raw, r.text)


def test_hooks_refuse_everything_without_a_secret(tmp_path: Path) -> None:
    """The default (mosquitto) hub: the endpoints exist but no call passes, whatever it sends."""
    hub = build_hub(make_settings(tmp_path))
    try:
        c = TestClient(create_app(hub=hub, start_bridge=False))
        for headers in (None, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert c.post(AUTHN, headers=headers, json={"username": "hub", "password": ""}).status_code == 401
    finally:
        hub.close()


class Probe:
    """A real MQTT 5 client: SUBACK per filter, and the topics of what the broker delivers."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.granted: dict[str, bool] = {}
        self.received: list[str] = []
        self._mids: dict[int, str] = {}
        self._cv = threading.Condition()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"probe-{secrets.token_hex(3)}", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.connected: bool | None = None  # the broker's CONNACK: accepted or refused
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.wait(lambda: self.connected is not None, "CONNACK")

    def _on_connect(self, cl: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        with self._cv:
            if self.connected is None:
                self.connected = not rc.is_failure
            self._cv.notify_all()

    def _on_subscribe(self, cl: Any, u: Any, mid: int, codes: list[Any], props: Properties | None) -> None:
        with self._cv:
            self.granted[self._mids[mid]] = not codes[0].is_failure
            self._cv.notify_all()

    def _on_message(self, cl: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self._cv:
            self.received.append(m.topic)
            self._cv.notify_all()

    def wait(self, cond: Any, what: str) -> None:
        with self._cv:
            assert self._cv.wait_for(cond, 30), what

    def subscribe(self, filters: list[str]) -> dict[str, bool]:
        for f in filters:
            with self._cv:  # the SUBACK may come before subscribe() returns: hold the lock until mid is known
                _rc, mid = self.c.subscribe(f, qos=1)
                self._mids[mid] = f
        self.wait(lambda: all(f in self.granted for f in filters), "every SUBACK")
        return {f: self.granted[f] for f in filters}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_mosquitto_and_the_hook_agree(tmp_path: Path, broker: Broker) -> None:
    """The mosquitto backend provisions a device that connects for real; mosquitto (reading the ACL file the
    hub wrote) and the hook let it receive the same messages; and a device whose hash only mosquitto's
    password file held (provisioned before 0008) is known to the hook once the hub has started."""
    settings = make_settings(tmp_path, broker)
    settings.mqtt.hook_secret = SECRET  # hooks answer beside the mosquitto backend (a city moving to EMQX)
    hub = build_hub(settings)
    probe = None
    try:
        assert hub.services["devices"].broker_auth.__class__.__name__ == "MosquittoFiles"
        _row, cfg = hub.services["devices"].provision("site1", "camera", "cam-a", device="cam-a")
        user, pw = cfg["mqtt"]["username"], cfg["mqtt"]["password"]
        c = TestClient(create_app(hub=hub, start_bridge=False))

        def hook(f: str) -> bool:
            return bool(c.post(AUTHZ, headers=H, json={"username": user, "action": "subscribe", "topic": f,
                                                       "clientid": "x", "peerhost": "127.0.0.1"}).json()["result"]
                        == "allow")

        own = "city/v1/site1/cam-a"
        # EMQX asks once per SUBSCRIBE, so the hook refuses a filter wider than the read rules (EMQX would
        # deliver all it matches). mosquitto grants any filter (its SUBACK says nothing) and drops each
        # message the read rules do not allow: what arrives is what the hook lets a device read.
        wild = ["#", "city/v1/#", f"{own}/#", "city/v1/+/cam-a/cmd", "city/v1/site1/+/cmd", "$share/g/city/v1/#"]
        assert not any(hook(f) for f in wild)
        probe = Probe(broker.cfg.port, user, pw)
        assert probe.connected
        assert probe.subscribe(["#"]) == {"#": True}
        published = ["city/v1/site1/cam-b/cmd", f"{own}/event/fire", f"{own}/hb", f"{own}/status",
                     "city/v1/alerts/video/fire", "city/v1/trust", "city/v1/site1/cam-b/receipt", f"{own}/receipt",
                     "city/v1/revocations", "city/v1/registry/push", f"{own}/cmd"]
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hub-pub")
        pub.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
        pub.connect("127.0.0.1", broker.cfg.port)
        pub.loop_start()
        try:
            for t in published:  # own/cmd last: once it is in, every earlier one was delivered or dropped
                pub.publish(t, b"{}", qos=1).wait_for_publish(20)
            probe.wait(lambda: f"{own}/cmd" in probe.received, "own command delivered")
        finally:
            pub.disconnect()
            pub.loop_stop()
        readable = {t for t in published if hook(t)}
        assert set(probe.received) == readable
        assert readable == {f"{own}/cmd", f"{own}/receipt", "city/v1/trust", "city/v1/revocations"}  # not vacuous

        # As before migration 0008: the row has no hash, only mosquitto's password file does.
        with hub.store.tx() as db:
            devices_store.set_password_hash(db, "site1/cam-a", None)
        assert c.post(AUTHN, headers=H, json={"username": user, "password": pw}).json()["result"] == "deny"
        hub.services["devices"].refresh_broker_acl()  # what hub start runs (hook hub.started)
        with hub.store.read() as db:
            adopted = [r for r in fetch_rows(db) if r[3] == "devices.password_hash_adopted"]
        assert [(r[4], r[5]) for r in adopted] == [("site1/cam-a", "/city")]  # audited with the write
        assert c.post(AUTHN, headers=H, json={"username": user, "password": pw}).json()["result"] == "allow"
        assert c.post(AUTHN, headers=H, json={"username": user, "password": pw + "x"}).json()["result"] == "deny"

        # remove_device: gone from both files, and mosquitto (reloaded) refuses the next CONNECT
        hub.services["devices"].broker_auth.remove_device(user)
        assert f"{user}:" not in broker.cfg.passwd.read_text()
        assert f"user {user}\n" not in broker.cfg.acl.read_text() and "user hub\n" in broker.cfg.acl.read_text()
        probe.close()
        probe = None
        gone = None
        try:
            # SIGHUP is asynchronous: connect until mosquitto has re-read its files (each try is one CONNACK)
            for _ in range(200):
                gone = Probe(broker.cfg.port, user, pw)
                refused = gone.connected is False
                gone.close()
                if refused:
                    break
            assert refused, "the removed device still got in"
        finally:
            if gone is not None:
                gone.close()
    finally:
        if probe is not None:
            probe.close()
        hub.close()
