"""The edge device's MQTT link: paho-mqtt 2.x client + durable SQLite outbox (store-and-forward).

- QoS1 messages (events, scan batches, acks) go through the outbox first; a row is deleted only when
  the broker acknowledged it, so a crash or a broker outage loses nothing. Ids are made by the edge
  (`event_id`, `batch_id`, `cmd_id`), so a message re-sent after a reconnect is stored once by the hub.
- Heartbeats are QoS0 and not queued: a stale heartbeat is worthless.
- Status is retained `online` on connect, with a retained `offline` last will.
- After every (re)connect everything still in the outbox is sent again from the start: paho may or may
  not resend its own in-flight window, and duplicates are cheap while a loss is not.
"""

from __future__ import annotations

import collections
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import DeviceConfig
from edge.outbox import Outbox
from protocol import messages, topics

log = logging.getLogger("citybrain.edge.link")

MAX_INFLIGHT = 1000


class Link:
    def __init__(self, cfg: DeviceConfig, version: str = "0.1.0") -> None:
        self.cfg = cfg
        self.version = version
        self.site, self.device = cfg.site, cfg.device
        self.outbox = Outbox(cfg.outbox.path, cfg.outbox.max_messages, cfg.outbox.max_bytes, cfg.outbox.on_full)
        self.stats_provider: Callable[[], dict[str, Any]] | None = None
        self.heartbeat_extra: dict[str, Any] = {}
        self._subs: dict[str, Callable[[bytes], None]] = {}
        self._cmd_handlers: dict[str, Callable[[messages.Cmd], tuple[bool, str]]] = {}
        self._acked: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id (sender thread only)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resend = threading.Event()
        self._connected = threading.Event()
        self._hb_now = threading.Event()
        self._started = time.monotonic()
        self._threads: list[threading.Thread] = []
        self.sent = 0
        self.client = self._make_client()

    # ---- public API ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Queue durably, then send when the link is up. Returns the outbox row id."""
        rid = self.outbox.put(topic, payload, qos)
        self._wake.set()
        return rid

    def publish_event(self, event: messages.Event) -> int:
        return self.publish(topics.event(self.site, self.device, event.kind), event.model_dump_json().encode())

    def publish_scan_batch(self, batch: messages.ScanBatch) -> int:
        return self.publish(topics.scan(self.site, self.device), batch.model_dump_json().encode())

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        self._subs[topic] = callback
        if self.connected:
            self.client.subscribe(topic, qos=1)

    def on_command(self, action: str, handler: Callable[[messages.Cmd], tuple[bool, str]]) -> None:
        self._cmd_handlers[action] = handler

    def start(self) -> Link:
        m = self.cfg.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        for target, name in ((self._sender, "outbox-sender"), (self._heartbeats, "heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the outbox is empty (everything acknowledged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.outbox.depth() == 0

    def stop(self, graceful: bool = True) -> None:
        """Graceful: publish `offline` ourselves (the will only fires on an unclean drop)."""
        self._stop.set()
        self._wake.set()
        self._hb_now.set()
        for t in self._threads:
            t.join(timeout=5)
        if graceful and self.connected:
            info = self.client.publish(
                topics.status(self.site, self.device), self._status("offline"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.outbox.close()

    def heartbeat(self) -> messages.Heartbeat:
        extra: dict[str, Any] = dict(self.heartbeat_extra)
        if self.stats_provider is not None:
            try:
                extra.update(self.stats_provider())
            except Exception:  # a broken stats source must not stop heartbeats
                log.exception("stats provider failed")
        known = set(messages.Heartbeat.model_fields)
        fields = {k: v for k, v in extra.items() if k in known}
        rest = {k: v for k, v in extra.items() if k not in known and isinstance(v, (int, float, str))}
        load = os.getloadavg()[0] * 100 / max(os.cpu_count() or 1, 1)
        return messages.Heartbeat(
            uptime_s=time.monotonic() - self._started,
            queue_depth=self.outbox.depth(),
            queue_dropped=self.outbox.dropped,
            cpu_percent=min(load, 100.0),
            extra=rest,
            **fields,
        )

    # ---- internals -------------------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        return messages.Status(state=state, kind=self.cfg.kind, version=self.version).model_dump_json().encode()  # type: ignore[arg-type]

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{self.site}.{self.device}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        c.username_pw_set(m.username, m.password)
        if m.tls:
            c.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        c.will_set(topics.status(self.site, self.device), self._status("offline"), qos=1, retain=True)
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            return
        client.publish(topics.status(self.site, self.device), self._status("online"), qos=1, retain=True)
        client.subscribe(topics.cmd(self.site, self.device), qos=1)
        for t in self._subs:
            client.subscribe(t, qos=1)
        self._resend.set()
        self._connected.set()
        self._hb_now.set()
        self._wake.set()
        log.info("connected to %s:%s", self.cfg.mqtt.host, self.cfg.mqtt.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        log.warning("disconnected (%s); queueing to the outbox", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # Called from paho's network thread with its locks held: only hand the mid over, never block.
        self._acked.append(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.cmd(self.site, self.device):
            self._handle_cmd(msg.payload)
            return
        cb = self._subs.get(msg.topic)
        if cb is None:
            return
        try:
            cb(msg.payload)
        except Exception:
            log.exception("subscriber for %s failed", msg.topic)

    def _handle_cmd(self, raw: bytes) -> None:
        try:
            cmd = messages.parse_payload(messages.Cmd, raw)
        except messages.PayloadError as e:
            log.warning("bad command refused: %s", e)
            return
        assert isinstance(cmd, messages.Cmd)
        handler = self._cmd_handlers.get(cmd.action)
        if cmd.action == "ping":
            ok, detail = True, "pong"
        elif handler is None:
            ok, detail = False, f"action {cmd.action!r} not supported by this device"
        else:
            try:
                ok, detail = handler(cmd)
            except Exception as e:  # report, don't die
                ok, detail = False, f"{type(e).__name__}: {e}"
        ack = messages.Ack(cmd_id=cmd.cmd_id, ok=ok, detail=detail[:1024])
        self.publish(topics.ack(self.site, self.device), ack.model_dump_json().encode())

    def _sender(self) -> None:
        last_id = 0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            done: list[int] = []
            while self._acked:
                rid = self._inflight.pop(self._acked.popleft(), None)
                if rid is not None:
                    done.append(rid)
            if self.connected:
                last_id = self._send_some(last_id, done)
            self.outbox.delete(done)

    def _send_some(self, last_id: int, done: list[int]) -> int:
        if self._resend.is_set():
            self._resend.clear()
            self._inflight.clear()
            last_id = 0
        while self.connected and len(self._inflight) < MAX_INFLIGHT and not self._stop.is_set():
            rows = self.outbox.pending(last_id, limit=min(500, MAX_INFLIGHT - len(self._inflight)))
            if not rows:
                break
            for row in rows:
                info = self.client.publish(row.topic, row.payload, qos=row.qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return last_id  # connection dropped: the resend after reconnect picks this row up
                if row.qos == 0:
                    done.append(row.id)
                else:
                    self._inflight[info.mid] = row.id
                last_id = row.id
                self.sent += 1
        return last_id

    def _heartbeats(self) -> None:
        # One right after each (re)connect, then every heartbeat_s: the hub sees a box come back at once.
        while not self._stop.is_set():
            self._hb_now.wait(self.cfg.heartbeat_s)
            self._hb_now.clear()
            if self._stop.is_set():
                return
            if self.connected:
                hb = self.heartbeat()
                self.client.publish(
                    topics.heartbeat(self.site, self.device), hb.model_dump_json().encode(), qos=0
                )
