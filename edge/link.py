"""The edge device's MQTT link: paho-mqtt 2.x client + durable SQLite outbox (store-and-forward).

- QoS1 messages (events, scan batches, acks) go through the outbox first. Delivery is end to end: a row
  is deleted only when the hub's receipt on `.../receipt` names its id (the hub publishes it after its
  store transaction committed), never on the broker's PUBACK alone, which mosquitto may lose in a crash
  (it saves to disk every few seconds). Ids are made by the edge (`event_id`, `batch_id`, `cmd_id`), so a
  message sent twice is stored once by the hub.
- Resent: everything unconfirmed after every (re)connect (from the start: paho may or may not resend its
  own in-flight window, and duplicates are cheap while a loss is not), and, while connected, what the hub
  has not confirmed within `resend_after_s` (doubling up to `resend_max_s` while nothing comes back, so
  a hub that is down for hours does not fill the broker with copies).
- If the broker refuses the receipt subscription in its SUBACK (a device ACL written before receipts
  existed), the link says so and falls back to deleting rows on the broker's PUBACK. mosquitto 2.0 grants
  a denied subscription silently instead: such a device gets no receipts, keeps everything and re-sends it
  with backoff (the hub stores each message once) until its ACL is rewritten by re-provisioning.
- Heartbeats are QoS0 and not queued: a stale heartbeat is worthless.
- Status is retained `online` on connect, with a retained `offline` last will.
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
from edge.outbox import Outbox, Row
from protocol import messages, topics

log = logging.getLogger("citybrain.edge.link")

MAX_INFLIGHT = 1000
RESEND_AFTER_S = 60.0
RESEND_MAX_S = 900.0
OVERDUE_PER_PASS = 5000


def receipt_id_of(topic: str, payload: bytes) -> str | None:
    """The id the hub will confirm this message by (None for channels the hub does not receipt)."""
    try:
        channel = topics.parse(topic).channel
    except ValueError:
        return None
    return messages.loose_id(channel, payload)


class Link:
    def __init__(self, cfg: DeviceConfig, version: str = "0.1.0", resend_after_s: float = RESEND_AFTER_S,
                 resend_max_s: float = RESEND_MAX_S) -> None:
        self.cfg = cfg
        self.version = version
        self.site, self.device = cfg.site, cfg.device
        self.outbox = Outbox(cfg.outbox.path, cfg.outbox.max_messages, cfg.outbox.max_bytes, cfg.outbox.on_full,
                             derive_receipt_id=receipt_id_of)
        self._cmd_topic = topics.cmd(self.site, self.device)
        self._receipt_topic = topics.receipt(self.site, self.device)
        self.stats_provider: Callable[[], dict[str, Any]] | None = None
        self.heartbeat_extra: dict[str, Any] = {}
        self._subs: dict[str, Callable[[bytes], None]] = {}
        self._cmd_handlers: dict[str, Callable[[messages.Cmd], tuple[bool, str]]] = {}
        self._acked: collections.deque[int] = collections.deque()
        self._receipts: collections.deque[list[str]] = collections.deque()  # ids the hub confirmed
        # Sender thread only: paho mid -> (outbox row id, waits for a receipt); and row id -> when last sent
        # of rows sent but not confirmed yet, in send order (so the overdue ones are at the front).
        self._inflight: dict[int, tuple[int, bool]] = {}
        self._unconfirmed: dict[int, float] = {}
        self.resend_after_s = resend_after_s
        self.resend_max_s = resend_max_s
        self._resend_wait = resend_after_s
        self._backoff_at = float("-inf")
        self._receipt_sub: int | None = None
        self.receipts = True  # False once the broker refused the receipt subscription: PUBACK settles rows
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resend = threading.Event()
        self._connected = threading.Event()
        self._hb_now = threading.Event()
        self._started = time.monotonic()
        self._threads: list[threading.Thread] = []
        self.sent = 0
        self.resent = 0  # sent again because the hub had not confirmed them in time
        self.confirmed = 0
        self.refused = 0  # confirmed as refused by the hub (bad payload): logged, then forgotten
        self.client = self._make_client()

    # ---- public API ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, qos: int = 1, receipt_id: str | None = None) -> int:
        """Queue durably, then send when the link is up. Returns the outbox row id. A message on a channel
        the hub receipts (event, scan, ack) stays queued until the hub confirms its id (`receipt_id`, read
        from the payload when not given)."""
        if receipt_id is None and qos > 0:
            receipt_id = receipt_id_of(topic, payload)
        if receipt_id is not None and len(payload) > messages.MAX_PAYLOAD_BYTES:
            # The hub refuses it unread, so no receipt could ever name it: settle it on the PUBACK (the
            # hub still records the refusal, which is how an operator learns of it).
            log.warning("%s: %d bytes > %d, the hub will refuse it", topic, len(payload), messages.MAX_PAYLOAD_BYTES)
            receipt_id = None
        rid = self.outbox.put(topic, payload, qos, receipt_id)
        self._wake.set()
        return rid

    def publish_event(self, event: messages.Event) -> int:
        return self.publish(topics.event(self.site, self.device, event.kind), event.model_dump_json().encode(),
                            receipt_id=event.event_id)

    def publish_scan_batch(self, batch: messages.ScanBatch) -> int:
        return self.publish(topics.scan(self.site, self.device), batch.model_dump_json().encode(),
                            receipt_id=batch.batch_id)

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
        """Wait until the outbox is empty: everything confirmed by the hub (or PUBACKed, for messages that
        need no receipt)."""
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
        c.on_subscribe = self._on_subscribe
        return c

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            return
        client.publish(topics.status(self.site, self.device), self._status("online"), qos=1, retain=True)
        client.subscribe(self._cmd_topic, qos=1)
        # Before anything is (re)sent on this connection, so the broker routes the hub's receipts to us.
        self._receipt_sub = client.subscribe(self._receipt_topic, qos=1)[1]
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

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid != self._receipt_sub or not reasons or not reasons[0].is_failure or not self.receipts:
            return
        log.warning("broker refused %s (device ACL older than receipts? re-provision the device): rows are "
                    "settled on the broker's PUBACK, which a broker crash can lose", self._receipt_topic)
        self.receipts = False
        self._resend.set()  # rows already PUBACKed were waiting for a receipt: send them once more
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._receipt_topic:
            self._handle_receipt(msg.payload)
            return
        if msg.topic == self._cmd_topic:
            self._handle_cmd(msg.payload)
            return
        cb = self._subs.get(msg.topic)
        if cb is None:
            return
        try:
            cb(msg.payload)
        except Exception:
            log.exception("subscriber for %s failed", msg.topic)

    def _handle_receipt(self, raw: bytes) -> None:
        # Network thread: parse and hand the ids to the sender, which owns the outbox bookkeeping.
        try:
            r = messages.parse_payload(messages.Receipt, raw)
        except messages.PayloadError as e:
            log.warning("bad receipt ignored: %s", e)
            return
        assert isinstance(r, messages.Receipt)
        for f in r.refused:
            log.warning("hub refused message %s (%s); dropping it from the outbox", f.id, f.reason)
        self.refused += len(r.refused)
        self._receipts.append([*r.stored, *(f.id for f in r.refused)])
        self._wake.set()

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
        self.publish(topics.ack(self.site, self.device), ack.model_dump_json().encode(), receipt_id=ack.cmd_id)

    def _sender(self) -> None:
        cursor = 0  # highest row id sent on this connection
        next_check = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            done: list[int] = []  # rows settled by a PUBACK (no receipt expected)
            while self._acked:
                entry = self._inflight.pop(self._acked.popleft(), None)
                if entry is not None and not (entry[1] and self.receipts):
                    done.append(entry[0])
            if self._receipts:
                ids: list[str] = []
                while self._receipts:
                    ids += self._receipts.popleft()
                gone = self.outbox.confirm(ids)
                for rid in gone:
                    self._unconfirmed.pop(rid, None)
                self.confirmed += len(gone)
                self._resend_wait = self.resend_after_s  # the hub answers: back to the short timeout
            if self.connected:
                cursor = self._send_some(cursor, done)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + min(1.0, self.resend_after_s / 4)
                    self._resend_overdue(now, done)
            self.outbox.delete(done)
            for rid in done:
                self._unconfirmed.pop(rid, None)

    def _send(self, row: Row, done: list[int]) -> bool:
        info = self.client.publish(row.topic, row.payload, qos=row.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False  # connection dropped: the resend after reconnect picks this row up
        waits = row.receipt_id is not None and self.receipts
        if row.qos > 0:
            self._inflight[info.mid] = (row.id, waits)
        elif not waits:
            done.append(row.id)
        if waits:
            self._unconfirmed.pop(row.id, None)  # re-inserted last: the dict stays in send order
            self._unconfirmed[row.id] = time.monotonic()
        self.sent += 1
        return True

    def _send_some(self, cursor: int, done: list[int]) -> int:
        if self._resend.is_set():
            self._resend.clear()
            self._inflight.clear()
            self._unconfirmed.clear()
            cursor = 0
        while self.connected and len(self._inflight) < MAX_INFLIGHT and not self._stop.is_set():
            rows = self.outbox.pending(cursor, limit=min(500, MAX_INFLIGHT - len(self._inflight)))
            if not rows:
                break
            for row in rows:
                if not self._send(row, done):
                    return cursor
                cursor = row.id
        return cursor

    def _resend_overdue(self, now: float, done: list[int]) -> None:
        """Send again what the hub has not confirmed within the current timeout (the broker may have lost
        it, or the hub's session); the timeout doubles while no receipt at all comes back."""
        due = now - self._resend_wait
        overdue: list[int] = []
        for rid, sent_at in self._unconfirmed.items():
            if sent_at > due or len(overdue) >= OVERDUE_PER_PASS:
                break
            overdue.append(rid)
        if not overdue:
            return
        rows = self.outbox.get(overdue)
        present = {r.id for r in rows}
        for rid in overdue:
            if rid not in present:  # confirmed through an earlier copy, or dropped by the bounds
                self._unconfirmed.pop(rid, None)
        n = 0
        for row in rows:
            if len(self._inflight) >= MAX_INFLIGHT or not self._send(row, done):
                break  # the rest stay overdue for the next pass
            n += 1
        if not n:
            return
        self.resent += n
        log.info("resent %d message(s) the hub had not confirmed within %.0f s", n, self._resend_wait)
        if now - self._backoff_at >= self._resend_wait:
            self._backoff_at = now
            self._resend_wait = min(self._resend_wait * 2, self.resend_max_s)

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
