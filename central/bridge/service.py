"""The MQTT bridge: a persistent-session paho client that ingests what devices publish.

Exactly-once into the store: the session is persistent (clean_session=False, so mosquitto queues QoS1
messages while the hub is down) and acks are manual — a message is acknowledged only after the write
transaction holding it has committed. A crash before commit means the broker redelivers; a redelivered
event is stored once because `event_id` (and scan `batch_id`, and each scan's `scan_id`) is the key.

End to end: after that commit the bridge publishes one receipt per device and batch on
`city/v1/{site}/{device}/receipt` naming the ids it stored (re-sends included) and those it refused; the
device keeps each message until a receipt names it, so what a crashed broker lost is sent again.

Bad input never kills the bridge: every payload is validated against the contract; refusals are
counted, logged with their reason and kept in `ingest_rejects`, receipted as refused, then acknowledged
(redelivering a bad payload would not make it good). A payload that passes validation but still fails
the store transaction is isolated by splitting its batch, so the good messages beside it are stored at
once; it is recorded as `store_error` and not receipted, so its device sends it again later.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from central.bridge import store
from central.hub import Hub
from central.media import MediaRef, MediaStore, jpeg_b64, media_of
from central.store import StoreClosed
from protocol import messages, topics

log = logging.getLogger("citybrain.bridge")

BATCH_MAX = 2000
KNOWN_TTL_S = 10.0  # how long a device found active is taken for active without asking the store again
_SERIALS = itertools.count(1)  # bridges made in this process (pool members' client ids)
BATCH_WAIT_S = 0.02


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int


def _transient_error(e: BaseException) -> bool:
    """Store trouble that goes away (a lock, a lost connection, a full disk), as opposed to a bug."""
    return store.is_transient(e)


class Receipts:
    """Per device: ids stored and ids refused in one ingest batch, published once it has committed."""

    def __init__(self) -> None:
        self.by_device: dict[tuple[str, str], tuple[list[str], list[tuple[str, str]]]] = {}

    def _of(self, site: str, device: str) -> tuple[list[str], list[tuple[str, str]]]:
        r = self.by_device.get((site, device))
        if r is None:
            r = self.by_device[(site, device)] = ([], [])
        return r

    def stored(self, site: str, device: str, msg_id: str) -> None:
        self._of(site, device)[0].append(msg_id)

    def refused(self, site: str, device: str, msg_id: str, reason: str) -> None:
        self._of(site, device)[1].append((msg_id, reason[:64]))

    def payloads(self) -> list[tuple[str, bytes]]:
        """(topic, payload) per device, split so that no message holds more than RECEIPT_MAX_IDS ids."""
        out = []
        n = messages.RECEIPT_MAX_IDS
        for (site, device), (stored, refused) in self.by_device.items():
            topic = topics.receipt(site, device)
            for i in range(0, max(len(stored), len(refused)), n):
                r = messages.Receipt.model_construct(  # ids validated on the way in: no second validation
                    stored=stored[i : i + n],
                    refused=[messages.Refused.model_construct(id=k, reason=why) for k, why in refused[i : i + n]],
                )
                out.append((topic, r.model_dump_json().encode()))
        return out


class Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Bridge:
    name = "mqtt-bridge"  # a hub worker (central.hub.Worker): Hub.start(bridge=True) runs it

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.media = media_of(hub)
        self.settings = hub.settings.mqtt
        self.counters: Counter[str] = Counter()
        self._queue: collections.deque[Incoming] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._announcer: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._known: dict[str, float] = {}  # device id -> when last found active
        self._unknown: dict[str, float] = {}  # device id -> when last found unknown
        self._sub_mid: int | None = None
        self._serial = next(_SERIALS)
        self.client = self._make_client()

    # Publisher protocol (hub.publish goes here once the bridge runs)
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        """The writer stores what arrives (readiness: a dead writer would leave messages unreceipted)."""
        return self._writer is not None and self._writer.is_alive()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                confirm: float | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if confirm is None:
            return
        if not self.connected:  # paho may keep it queued for the next connection; the caller tries again
            raise ConnectionError(f"{topic}: the broker is not connected")
        info.wait_for_publish(confirm)  # RuntimeError if paho could not send it
        if not info.is_published():
            raise TimeoutError(f"{topic}: no acknowledgement from the broker within {confirm:g} s")

    @property
    def client_id(self) -> str:
        """The configured id; a pool member's is unique per bridge (host, process, and its number in it)."""
        s = self.settings
        if s.share_group is None:
            return s.client_id
        return f"{s.client_id}-{socket.gethostname()}-{os.getpid()}-{self._serial}"

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=s.share_group is not None,  # see MqttSettings.share_group
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
        group = self.settings.share_group
        share = (lambda t: t) if group is None else (lambda t: f"$share/{group}/{t}")
        _rc, self._sub_mid = client.subscribe(
            [
                # status is retained, and a broker sends no retained message to a shared subscription: every
                # member takes it (writing a device's state twice is harmless); the rest is split
                (topics.SUB_STATUS, 1), (share(topics.SUB_HEARTBEAT), 0), (share(topics.SUB_EVENT), 1),
                (share(topics.SUB_SCAN), 1), (share(topics.SUB_ACK), 1), (share(topics.REGISTRY_PUSH), 1),
            ]
        )
        log.info("bridge %s connected (session present: %s%s)", self.client_id, flags.session_present,
                 "" if group is None else f", shared group {group}")

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
                self._store_isolating(batch)
            except Exception as e:
                if not _transient_error(e):
                    raise  # _store_isolating handles everything else
                if isinstance(e, StoreClosed):
                    log.warning("store closed; %d message(s) left unacknowledged for the next session", len(batch))
                    return
                # The store itself is unavailable (locked, disk full, I/O): keep the batch unacknowledged
                # and retry it, rather than turning accepted messages into rejects.
                log.error("store unavailable (%s); retrying %d message(s) in 1 s", e, len(batch))
                self._queue.extendleft(reversed(batch))
                self._stop.wait(1.0)
                if self._stop.is_set():
                    return  # unacked: the broker redelivers them to the next session
                continue
            for m in batch:
                if m.qos > 0:
                    self.client.ack(m.mid, m.qos)

    def _store_isolating(self, batch: list[Incoming], top: bool = True) -> None:
        """`ingest(batch)`; if that fails other than by the store being unavailable, split the batch in
        halves until the message at fault is alone (about log2(n) extra transactions per bad message), so
        the good ones beside it are stored now. One log line per failed batch and per culprit."""
        try:
            self.ingest(batch)
            return
        except Exception as e:
            if _transient_error(e):
                raise
            if len(batch) == 1:
                m = batch[0]
                detail = f"{type(e).__name__}: {e}"[:500]
                log.debug("store failure on %s", m.topic, exc_info=True)
                try:
                    self._store_rejects([(m.topic, "store_error", detail)])
                except Exception as e1:
                    if _transient_error(e1):
                        raise
                    log.error("could not record the reject of %s: %s", m.topic, e1)
                return
            if top:
                log.warning("batch of %d failed (%s: %s); isolating the message(s) at fault", len(batch),
                            type(e).__name__, str(e)[:200])
        half = len(batch) // 2
        self._store_isolating(batch[:half], top=False)
        self._store_isolating(batch[half:], top=False)

    def _device_known(self, device_id: str) -> bool:
        now = time.monotonic()
        if now - self._known.get(device_id, -KNOWN_TTL_S) < KNOWN_TTL_S:
            return True
        # A miss is looked up (a device provisioned a moment ago must not lose its first messages);
        # a flood of unknown ids costs one lookup per id per second. A hit is trusted for KNOWN_TTL_S only: a
        # device revoked through any hub process is refused by every bridge within that time.
        if now - self._unknown.get(device_id, -10.0) < 1.0:
            return False
        if self.hub.services["devices"].is_active(device_id):
            if len(self._known) > 100_000:
                self._known.clear()
            self._known[device_id] = now
            return True
        if len(self._unknown) > 10_000:
            self._unknown.clear()
        self._unknown[device_id] = now
        return False

    def ingest(self, batch: list[Incoming]) -> None:
        """Validate, store the batch in one transaction, then publish the devices' receipts."""
        now = datetime.now(UTC).isoformat()
        events: list[tuple[str, str, messages.Event]] = []
        raw_events: dict[str, bytes] = {}
        scans: list[tuple[str, str, messages.ScanBatch]] = []
        statuses: list[tuple[str, str]] = []
        hbs: dict[str, messages.Heartbeat] = {}
        acks: list[messages.Ack] = []
        pushes: list[bytes] = []
        rejects: list[tuple[str, str, str]] = []
        receipts = Receipts()
        for m in batch:
            t: topics.DeviceTopic | None = None
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
                    t = None  # nothing is receipted to a device we do not know
                    raise Reject("unknown_device", f"{device_id} is not provisioned (or revoked)")
                if t.channel in ("cmd", "receipt"):
                    continue  # hub -> device channels: not subscribed, but never ingest them
                model = messages.CHANNEL_MODELS[t.channel]
                try:
                    msg = messages.parse_payload(model, m.payload)
                except messages.PayloadError as e:
                    raise Reject(e.reason, e.detail) from None
                if isinstance(msg, messages.Event):
                    if msg.kind != t.kind:
                        raise Reject("kind_mismatch", f"topic kind {t.kind!r} != payload kind {msg.kind!r}")
                    events.append((t.site, t.device, msg))
                    receipts.stored(t.site, t.device, msg.event_id)
                    if msg.snapshot_jpeg_b64 is None:
                        raw_events[msg.event_id] = m.payload  # validated: store as received
                elif isinstance(msg, messages.ScanBatch):
                    scans.append((t.site, t.device, msg))
                    receipts.stored(t.site, t.device, msg.batch_id)
                elif isinstance(msg, messages.Heartbeat):
                    hbs[device_id] = msg
                elif isinstance(msg, messages.Status):
                    statuses.append((device_id, msg.state))
                elif isinstance(msg, messages.Ack):
                    acks.append(msg)
                    receipts.stored(t.site, t.device, msg.cmd_id)
            except Reject as r:
                rejects.append((m.topic, r.reason, r.detail))
                if t is not None and (msg_id := messages.loose_id(t.channel, m.payload)) is not None:
                    receipts.refused(t.site, t.device, msg_id, r.reason)  # final: the device may forget it
        snapshots = write_snapshots(self.media, events)  # durable before the commit that receipts them
        with self.hub.store.tx() as db:
            new_events = store_events(db, events, raw_events, now, snapshots)
            new_scans = self._store_scans(db, scans, now)
            if statuses or hbs or acks:  # devices' own tables, written by the devices service
                self.hub.hooks.emit("devices.reported", db, now, statuses, hbs, acks)
            if rejects:
                store.insert_rejects(db, [(now, *r) for r in rejects])
            if new_events:
                self.hub.hooks.emit("events.ingested", db, new_events)
            if new_scans:
                self.hub.hooks.emit("scans.ingested", db, new_scans)
        # Committed: only now may a device forget these messages.
        for topic, payload in receipts.payloads():
            self.publish(topic, payload, qos=1)
            self.counters["receipts"] += 1
        for payload in pushes:  # registry push runs its own validation and transaction per record
            try:
                self.hub.hooks.emit("mqtt.registry_push", payload)
            except Exception as e:
                self._store_rejects([(topics.REGISTRY_PUSH, "registry_push", f"{type(e).__name__}: {e}")])
        m = self.hub.metrics
        committed = time.time()
        m.observe_ingest("event", len(events), 0, (committed - e.ts.timestamp() for _, _, e in events))
        m.observe_ingest("scan_batch", len(scans), 0)
        m.observe_ingest("heartbeat", len(hbs), 0, (committed - h.ts.timestamp() for h in hbs.values()))
        m.observe_ingest("status", len(statuses), 0)
        m.observe_ingest("ack", len(acks), 0)
        m.observe_ingest("any", 0, len(rejects))
        m.receipts_backlog.set(len(self._queue))
        self.counters["events"] += len(new_events)
        self.counters["duplicates"] += len(events) - len(new_events)
        self.counters["scan_batches"] += len(new_scans)
        self.counters["heartbeats"] += len(hbs)
        self._count_rejects(rejects)

    def _count_rejects(self, rows: list[tuple[str, str, str]]) -> None:
        # One log line per reason and batch: a flood of junk must not flood the log.
        by_reason: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for topic, reason, detail in rows:
            self.counters[f"rejected.{reason}"] += 1
            by_reason[reason].append((topic, detail))
        for reason, items in by_reason.items():
            topic, detail = items[0]
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            log.warning("rejected payload (%s) on %s: %s%s", reason, topic, detail[:300], more)

    def _store_rejects(self, rows: list[tuple[str, str, str]]) -> None:
        now = datetime.now(UTC).isoformat()
        with self.hub.store.tx() as db:
            store.insert_rejects(db, [(now, *r) for r in rows])
        self._count_rejects(rows)

    def _store_scans(
        self, db: Any, scans: list[tuple[str, str, messages.ScanBatch]], now: str
    ) -> list[tuple[str, str, messages.ScanBatch]]:
        """Store batches not stored yet (by batch_id) and, of those, the records not stored yet (by
        scan_id: a terminal may log a record again in another batch). Returns what is new, for the hook."""
        if not scans:
            return []
        seen = store.existing_batches(db, [b.batch_id for _, _, b in scans])
        known = store.existing_scan_ids(db, [r.scan_id for _, _, b in scans if b.batch_id not in seen
                                             for r in b.records])
        new = []
        for site, device, b in scans:
            if b.batch_id in seen:
                continue
            seen.add(b.batch_id)
            records = []
            for r in b.records:
                if r.scan_id not in known:
                    known.add(r.scan_id)
                    records.append(r)
            store.insert_scan_batch(
                db,
                (b.batch_id, site, device, now, len(b.records)),
                [(r.scan_id, b.batch_id, site, device, r.serial, r.code_system, r.dept, r.verdict, r.reason,
                  r.ts.isoformat(), r.location) for r in records],
            )
            if records:
                new.append((site, device, b if len(records) == len(b.records) else
                            b.model_copy(update={"records": records})))
        return new


def write_snapshots(media: MediaStore, events: list[tuple[str, str, messages.Event]]) -> dict[str, MediaRef]:
    """Write the batch's snapshots into the media store, durably, before the transaction that stores their
    events: a receipt (after that commit) then never names an event whose file could still be lost. Keys
    are dated by the event's own time, so a device resending an event (already stored) finds its file there
    and writes nothing. Returns event_id -> reference."""
    items, ids = [], []
    for _site, _device, e in events:
        data = jpeg_b64(e.snapshot_jpeg_b64)
        if data is not None:
            items.append(("snapshots", data, "jpg", e.ts))
            ids.append(e.event_id)
    return dict(zip(ids, media.put_many(items), strict=True)) if items else {}


def store_events(
    db: Any, events: list[tuple[str, str, messages.Event]], raw: dict[str, bytes], now: str,
    snapshots: dict[str, MediaRef],
) -> list[tuple[str, str, messages.Event]]:
    """Insert events not stored yet (by event_id); returns the new ones. `raw` maps event_id to the
    validated bytes as received, stored verbatim when the event has no snapshot; `snapshots` maps event_id
    to its snapshot file (`write_snapshots`, called before the transaction)."""
    if not events:
        return []
    seen = store.existing_event_ids(db, [e.event_id for _, _, e in events])
    new: list[tuple[str, str, messages.Event]] = []
    rows = []
    for site, device, e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)  # the same id twice inside one batch
        ref = snapshots.get(e.event_id)
        body = raw.get(e.event_id) or e.model_dump_json(exclude={"snapshot_jpeg_b64"}).encode()
        rows.append((
            e.event_id, site, device, e.kind, e.ts.isoformat(), now, e.phase, e.incident_id, e.camera, e.zone,
            e.score, e.count, body.decode(), ref.key if ref else None, ref.sha256 if ref else None,
        ))
        new.append((site, device, e))
    store.insert_events(db, rows)
    return new
