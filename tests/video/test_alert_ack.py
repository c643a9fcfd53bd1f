"""An MQTT video alert is `sent` only once the broker has it (its PUBACK), not once paho queued it
(issue 17: an alert published into a dead connection was recorded as sent). Real mosquitto on loopback:
frozen (SIGSTOP: the TCP connection stays up, no PUBACK comes) and stopped (the bridge knows it is
disconnected)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub
from central.bridge.service import Bridge
from central.broker import Broker
from central.video import store as video_store
from central.video.service import ALERT_ACK_S, ALERT_TOPIC
from tests.conftest import make_settings
from tests.helpers import wait_for


def _rows(hub: Any) -> dict[int, tuple[str, int, str | None]]:
    a = video_store.alerts.c
    with hub.store.read() as db:
        return {r["id"]: (r["status"], r["attempts"], r["error"])
                for r in db.all(sa.select(a.id, a.status, a.attempts, a.error).order_by(a.id))}


def test_an_alert_is_sent_only_once_the_broker_has_it(tmp_path: Path, broker: Broker) -> None:
    hub = build_hub(make_settings(tmp_path, broker))
    video = hub.services["video"]
    got: list[int] = []
    subscribed = threading.Semaphore(0)
    listener = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="alert-listener")
    listener.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
    listener.on_connect = lambda cl, *_: cl.subscribe(f"{ALERT_TOPIC}/#", qos=1)
    listener.on_subscribe = lambda *_: subscribed.release()
    listener.on_message = lambda _c, _u, m: got.append(json.loads(m.payload)["n"])
    listener.reconnect_delay_set(min_delay=1, max_delay=2)
    listener.connect("127.0.0.1", broker.cfg.port)
    listener.loop_start()
    bridge = Bridge(hub).start()
    try:
        assert subscribed.acquire(timeout=30) and bridge.wait_connected(30)

        def alert(n: int) -> None:
            with hub.store.tx() as db:
                video_store.insert_alert(db, n, "mqtt", f"{ALERT_TOPIC}/fire", json.dumps({"n": n}),
                                         datetime.now(UTC).isoformat(), time.time())

        # a hung broker: the connection stays up, the PUBACK never comes -> a failed try, not "sent"
        alert(1)
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert video.send_due_alerts() == 1
            assert time.monotonic() - t0 >= ALERT_ACK_S * 0.9  # it waited for the acknowledgement
            status, attempts, error = _rows(hub)[1]
            assert (status, attempts) == ("pending", 1) and "acknowledgement" in (error or ""), error
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        assert video.send_due_alerts(at=time.time() + 60) == 1  # its back-off, skipped ahead
        assert _rows(hub)[1][:2] == ("sent", 2)

        # the broker gone: nothing is claimed, no try used up, until it is back
        broker.stop()
        wait_for(lambda: not bridge.connected, 30, "the bridge to see the broker gone")
        alert(2)
        assert video.send_due_alerts() == 0
        assert _rows(hub)[2][:2] == ("pending", 0)
        broker.start()
        assert subscribed.acquire(timeout=30)  # the listener is back before the alert goes out
        wait_for(lambda: bridge.connected, 30, "the bridge to reconnect")
        assert video.send_due_alerts() == 1
        assert _rows(hub)[2][:2] == ("sent", 1)
        wait_for(lambda: 2 in got, 30, "alert 2 at the listener")
        assert 1 in got  # at least once: the try into the hung broker may have arrived too (the body names it)
    finally:
        bridge.stop()
        listener.loop_stop()
        listener.disconnect()
        hub.close()
