"""The MQTT bridge: a persistent-session paho client that ingests what devices publish.

Exactly-once into the store: the session is persistent (clean_session=False, so mosquitto queues QoS1
messages while the hub is down) and acks are manual — a message is acknowledged only after the write
transaction holding it has committed. A crash before commit means the broker redelivers; a redelivered
event is stored once because `event_id` (and scan `batch_id`) is the primary key.

Bad input never kills the bridge: every payload is validated against the contract; refusals are
counted, logged with their reason and kept in `ingest_rejects`, then acknowledged (redelivering a bad
payload would not make it good).
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from central.bridge import store
from central.devices import store as devices_store
from central.hub import Hub
from protocol import messages, topics

log = logging.getLogger("citybrain.bridge")

BATCH_MAX = 2000
BATCH_WAIT_S = 0.02


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int


def _transient(e: sqlite3.OperationalError) -> bool:
    """Store trouble that goes away (a lock, a full or failing disk), as opposed to a bug in our SQL."""
    msg = str(e).lower()
    return any(w in msg for w in ("locked", "busy", "disk", "full", "i/o", "unable to open"))


class Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Bridge:
    name = "mqtt-bridge"  # a hub worker (central.hub.Worker): Hub.start(bridge=True) runs it

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings.mqtt
        self.counters: Counter[str] = Counter()
        self._queue: collections.deque[Incoming] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._announcer: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._known: set[str] = set()
        self._unknown: dict[str, float] = {}  # device id -> when last found unknown
        self._sub_mid: int | None = None
        self.client = self._make_client()

    # Publisher protocol (hub.publish goes here once the bridge runs)
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        c.username_pw_set(s.username, s.password)
        if s.ca_file is not None and s.tls_port is not None:
            c.tls_set(ca_certs=str(s.ca_file))
        c.max_inflight_messages_set(1000)
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def start(self) -> Bridge:
        s = self.settings
        port = s.tls_port if (s.ca_file is not None and s.tls_port is not None) else s.port
        self._writer = threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True)
        self._writer.start()
        self.client.connect_async(s.host, port, keepalive=30)
        self.client.loop_start()
        self.hub.publisher = self
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join(timeout=timeout)
        self.client.disconnect()
        self.client.loop_stop()
        if self._announcer is not None and self._announcer is not threading.current_thread():
            self._announcer.join(timeout=timeout)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the hub: %s", reason)
            return
        _rc, self._sub_mid = client.subscribe(
            [
                (topics.SUB_STATUS, 1), (topics.SUB_HEARTBEAT, 0), (topics.SUB_EVENT, 1),
                (topics.SUB_SCAN, 1), (topics.SUB_ACK, 1), (topics.REGISTRY_PUSH, 1),
            ]
        )
        log.info("bridge connected (session present: %s)", flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        # "Connected" means subscribed: before the SUBACK a device's message could slip past the hub.
        if mid != self._sub_mid:
            return
        self._connected.set()
        self._announcer = threading.Thread(target=self._announce_connected, name="bridge-connected", daemon=True)
        self._announcer.start()

    def _announce_connected(self) -> None:
        # Off the network thread: hook handlers may touch the store and publish.
        try:
            self.hub.hooks.emit("bridge.connected")
        except Exception:
            log.exception("bridge.connected hook failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        log.warning("bridge disconnected: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.append(Incoming(msg.topic, msg.payload, msg.mid, msg.qos))
        if len(self._queue) >= BATCH_MAX:
            self._wake.set()

    # ---- the writer: validate, store in one transaction, then ack ----------------------------------
    def _write_loop(self) -> None:
        while not self._stop.is_set() or self._queue:
            if not self._queue:
                self._wake.wait(BATCH_WAIT_S)
                self._wake.clear()
                continue
            batch: list[Incoming] = []
            while self._queue and len(batch) < BATCH_MAX:
                batch.append(self._queue.popleft())
            try:
                self.ingest(batch)
            except Exception as e:
                if isinstance(e, sqlite3.OperationalError) and _transient(e):
                    # The store itself is unavailable (locked, disk full, I/O): keep the batch
                    # unacknowledged and retry it, rather than turning accepted messages into rejects.
                    log.error("store unavailable (%s); retrying %d message(s) in 1 s", e, len(batch))
                    self._queue.extendleft(reversed(batch))
                    self._stop.wait(1.0)
                    if self._stop.is_set():
                        return  # unacked: the broker redelivers them to the next session
                    continue
                # Never die: store message by message, reject what still fails.
                log.exception("batch ingest failed; retrying one by one")
                for m in batch:
                    try:
                        self.ingest([m])
                    except Exception as e1:
                        try:
                            self._store_rejects([(m.topic, "store_error", f"{type(e1).__name__}: {e1}")])
                        except Exception:
                            log.exception("could not even record the reject of %s", m.topic)
            for m in batch:
                if m.qos > 0:
                    self.client.ack(m.mid, m.qos)

    def _device_known(self, device_id: str) -> bool:
        if device_id in self._known:
            return True
        # A miss is looked up (a device provisioned a moment ago must not lose its first messages);
        # a flood of unknown ids costs one lookup per id per second.
        now = time.monotonic()
        if now - self._unknown.get(device_id, -10.0) < 1.0:
            return False
        row = devices_store.get(self.hub.store.db, device_id)
        if row is not None and not row.get("revoked"):
            self._known.add(device_id)
            return True
        if len(self._unknown) > 10_000:
            self._unknown.clear()
        self._unknown[device_id] = now
        return False

    def ingest(self, batch: list[Incoming]) -> None:
        now = datetime.now(UTC).isoformat()
        events: list[tuple[str, str, messages.Event]] = []
        raw_events: dict[str, bytes] = {}
        scans: list[tuple[str, str, messages.ScanBatch]] = []
        statuses: list[tuple[str, str]] = []
        hbs: dict[str, messages.Heartbeat] = {}
        acks: list[messages.Ack] = []
        pushes: list[bytes] = []
        rejects: list[tuple[str, str, str]] = []
        for m in batch:
            try:
                if m.topic == topics.REGISTRY_PUSH:
                    if len(m.payload) > messages.MAX_PAYLOAD_BYTES:
                        raise Reject("oversize", f"{len(m.payload)} bytes")
                    pushes.append(m.payload)
                    continue
                try:
                    t = topics.parse(m.topic)
                except ValueError as e:
                    raise Reject("bad_topic", str(e)) from None
                device_id = f"{t.site}/{t.device}"
                if not self._device_known(device_id):
                    raise Reject("unknown_device", f"{device_id} is not provisioned (or revoked)")
                model = messages.CHANNEL_MODELS[t.channel]
                if t.channel == "cmd":
                    continue  # our own commands echo back through the wildcard? not subscribed; ignore
                try:
                    msg = messages.parse_payload(model, m.payload)
                except messages.PayloadError as e:
                    raise Reject(e.reason, e.detail) from None
                if isinstance(msg, messages.Event):
                    if msg.kind != t.kind:
                        raise Reject("kind_mismatch", f"topic kind {t.kind!r} != payload kind {msg.kind!r}")
                    events.append((t.site, t.device, msg))
                    if msg.snapshot_jpeg_b64 is None:
                        raw_events[msg.event_id] = m.payload  # validated: store as received
                elif isinstance(msg, messages.ScanBatch):
                    scans.append((t.site, t.device, msg))
                elif isinstance(msg, messages.Heartbeat):
                    hbs[device_id] = msg
                elif isinstance(msg, messages.Status):
                    statuses.append((device_id, msg.state))
                elif isinstance(msg, messages.Ack):
                    acks.append(msg)
            except Reject as r:
                rejects.append((m.topic, r.reason, r.detail))
        with self.hub.store.tx() as db:
            new_events = store_events(db, events, raw_events, now)
            new_scans = self._store_scans(db, scans, now)
            for device_id, state in statuses:
                devices_store.set_status(db, device_id, state, now)
            for device_id, hb in hbs.items():
                devices_store.set_heartbeat(db, device_id, now, hb.model_dump_json(), hb.queue_depth, hb.queue_dropped)
            for a in acks:
                devices_store.ack_command(db, a.cmd_id, now, a.ok, a.detail)
            if rejects:
                store.insert_rejects(db, [(now, *r) for r in rejects])
            if new_events:
                self.hub.hooks.emit("events.ingested", db, new_events)
            if new_scans:
                self.hub.hooks.emit("scans.ingested", db, new_scans)
        for payload in pushes:  # registry push runs its own validation and transaction per record
            try:
                self.hub.hooks.emit("mqtt.registry_push", payload)
            except Exception as e:
                self._store_rejects([(topics.REGISTRY_PUSH, "registry_push", f"{type(e).__name__}: {e}")])
        self.counters["events"] += len(new_events)
        self.counters["duplicates"] += len(events) - len(new_events)
        self.counters["scan_batches"] += len(new_scans)
        self.counters["heartbeats"] += len(hbs)
        for _, reason, detail in rejects:
            self.counters[f"rejected.{reason}"] += 1
            log.warning("rejected payload (%s): %s", reason, detail)

    def _store_rejects(self, rows: list[tuple[str, str, str]]) -> None:
        now = datetime.now(UTC).isoformat()
        with self.hub.store.tx() as db:
            store.insert_rejects(db, [(now, *r) for r in rows])
        for _, reason, detail in rows:
            self.counters[f"rejected.{reason}"] += 1
            log.warning("rejected payload (%s): %s", reason, detail)

    def _store_scans(
        self, db: Any, scans: list[tuple[str, str, messages.ScanBatch]], now: str
    ) -> list[tuple[str, str, messages.ScanBatch]]:
        if not scans:
            return []
        seen = store.existing_batches(db, [b.batch_id for _, _, b in scans])
        new = []
        for site, device, b in scans:
            if b.batch_id in seen:
                continue
            seen.add(b.batch_id)
            store.insert_scan_batch(
                db,
                (b.batch_id, site, device, now, len(b.records)),
                [(r.scan_id, b.batch_id, site, device, r.serial, r.code_system, r.dept, r.verdict, r.reason,
                  r.ts.isoformat(), r.location) for r in b.records],
            )
            new.append((site, device, b))
        return new


def store_events(
    db: Any, events: list[tuple[str, str, messages.Event]], raw: dict[str, bytes], now: str
) -> list[tuple[str, str, messages.Event]]:
    """Insert events not stored yet (by event_id); returns the new ones. `raw` maps event_id to the
    validated bytes as received, stored verbatim when the event has no snapshot."""
    if not events:
        return []
    seen = store.existing_event_ids(db, [e.event_id for _, _, e in events])
    new: list[tuple[str, str, messages.Event]] = []
    rows = []
    for site, device, e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)  # the same id twice inside one batch
        snapshot = None
        if e.snapshot_jpeg_b64:
            try:
                snapshot = base64.b64decode(e.snapshot_jpeg_b64, validate=True)
            except (binascii.Error, ValueError):
                snapshot = None
        body = raw.get(e.event_id) or e.model_dump_json(exclude={"snapshot_jpeg_b64"}).encode()
        rows.append((
            e.event_id, site, device, e.kind, e.ts.isoformat(), now, e.phase, e.incident_id, e.camera, e.zone,
            e.score, e.count, body.decode(), snapshot,
        ))
        new.append((site, device, e))
    store.insert_events(db, rows)
    return new
