"""Shared fixtures: a real mosquitto on 127.0.0.1 (own port, password file + ACL), a migrated hub on a
temporary SQLite file, and a FastAPI TestClient over it."""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.broker import HUB_ACL, Broker, BrokerConfig
from central.hub import Hub
from central.settings import MqttSettings, Settings

BRIDGE_THREADS = {"bridge-writer", "bridge-connected"}


@pytest.fixture(autouse=True)
def hubs_stop_with_their_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No hub worker outlives the test that started it: a hub a test left running is stopped here, and a
    worker thread still alive after its hub stopped fails the test (it would outlive its store)."""
    made: weakref.WeakSet[Hub] = weakref.WeakSet()
    init = Hub.__init__

    def recording_init(self: Hub, *a: object, **kw: object) -> None:
        init(self, *a, **kw)  # type: ignore[arg-type]
        made.add(self)

    monkeypatch.setattr(Hub, "__init__", recording_init)
    yield
    names = set(BRIDGE_THREADS)
    for h in list(made):
        names |= {w.name for w in h.workers} | {"mqtt-bridge"}
        if h.running:
            h.stop()
    deadline = time.monotonic() + 5
    while (left := [t.name for t in threading.enumerate() if t.name in names]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"hub worker threads outlived their hub: {left}"


def running_broker(cfg: BrokerConfig) -> Iterator[Broker]:
    """Write `cfg`, add a `hub` user (password in broker.hub_password), run mosquitto until the caller is done."""
    cfg.write()
    hub_password = secrets.token_urlsafe(16)
    cfg.add_user("hub", hub_password, HUB_ACL.format(hub="hub"))
    b = Broker(cfg).start()
    b.hub_password = hub_password  # type: ignore[attr-defined]
    yield b
    b.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto with a `hub` user (password in broker.hub_password) and an empty device ACL."""
    yield from running_broker(BrokerConfig(dir=tmp_path / "broker"))


def make_settings(tmp_path: Path, broker: Broker | None = None, **overrides: object) -> Settings:
    mqtt = MqttSettings(enabled=False)
    if broker is not None:
        mqtt = MqttSettings(
            enabled=True,
            port=broker.cfg.port,
            username="hub",
            password=broker.hub_password,  # type: ignore[attr-defined]
            passwd_file=broker.cfg.passwd,
            acl_file=broker.cfg.acl,
            pid_file=broker.cfg.pid_file,
            client_id=f"hub-{secrets.token_hex(3)}",
        )
    return Settings(data_dir=tmp_path / "hub", mqtt=mqtt, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def hub(settings: Settings) -> Iterator[Hub]:
    from central.app import build_hub

    h = build_hub(settings)
    yield h
    h.close()


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    from central.app import create_app

    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        yield c
