"""The terminal end to end over a real mosquitto: retained trust sync (forged / rolled-back lists
refused), scans from a watched image directory, scan batches through the durable outbox, and scans made
while the broker is down reaching a subscriber once it is back, each exactly once."""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from central.broker import Broker, device_acl
from edge.config import load_config
from edge.link import Link
from edge.scanner.agent import run
from protocol import signing, topics
from protocol.messages import ScanBatch
from tests.helpers import wait_for
from tests.scanner.helpers import City, running_terminal, scanner_config
from tests.scanner.images import frame_with


class HubSide:
    """The hub's view of the broker (hub credentials): publishes retained lists, collects scan batches.
    A persistent session (clean_session=False) so batches sent while it reconnects are queued for it."""

    def __init__(self, broker: Broker) -> None:
        self.batches: queue.Queue[ScanBatch] = queue.Queue()
        self.seen: set[str] = set()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"hub-test-{secrets.token_hex(3)}", clean_session=False)
        self.c.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
        self.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.SUB_SCAN, qos=1)
        self.c.on_message = lambda c, u, m: self.batches.put(ScanBatch.model_validate_json(m.payload))
        self.c.connect("127.0.0.1", broker.cfg.port)
        self.c.loop_start()
        wait_for(self.c.is_connected, what="hub client")

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)

    def records(self, n: int, timeout: float = 20.0) -> list:
        """The next n records of batches not seen before. QoS1 is at-least-once (a batch whose ack was
        lost in the outage is sent again), so dedupe on batch_id exactly as the hub's bridge does."""
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                b = self.batches.get(timeout=0.2)
            except queue.Empty:
                continue
            if b.batch_id not in self.seen:
                self.seen.add(b.batch_id)
                out += b.records
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def hub_side(broker: Broker) -> Iterator[HubSide]:
    h = HubSide(broker)
    yield h
    h.close()


def test_trust_sync_scan_log_and_offline_scans(broker: Broker, hub_side: HubSide, tmp_path: Path) -> None:
    city = City()
    revoked = city.code()
    hub_side.publish_retained(topics.TRUST, city.trust_list(1).model_dump_json().encode())
    hub_side.publish_retained(topics.REVOCATIONS,
                              city.revocations(1, serials=[revoked.serial]).model_dump_json().encode())

    pw = secrets.token_urlsafe(12)
    broker.cfg.add_user("gate1.term1", pw, device_acl("gate1.term1", "gate1", "term1"))
    broker.reload()
    drop = tmp_path / "drop"
    drop.mkdir()
    cfg_path = scanner_config(tmp_path, city, decoder="zxing", source=str(drop), location="gate-1 east",
                              batch_interval_s=0.2)
    raw = json.loads(cfg_path.read_text())
    raw["mqtt"].update(port=broker.cfg.port, password=pw, keepalive_s=5)
    cfg_path.write_text(json.dumps(raw))
    cfg = load_config(cfg_path)

    with running_terminal(cfg) as (link, stats):
        wait_for(lambda: stats().get("revocation_version") == 1 and stats().get("trust_version") == 1,
                 what="retained lists applied")
        # Forged (other signer) and rolled-back lists arrive on the same topics: refused, v1 kept.
        hub_side.publish_retained(topics.REVOCATIONS,
                                  city.revocations(7, signer=signing.generate()).model_dump_json().encode())
        wait_for(lambda: stats().get("revocations_refused") == 1, what="forged list refused")
        hub_side.publish_retained(topics.REVOCATIONS, city.revocations(2).model_dump_json().encode())
        wait_for(lambda: stats().get("revocation_version") == 2, what="v2 applied")
        hub_side.publish_retained(topics.REVOCATIONS,
                                  city.revocations(1, serials=[revoked.serial]).model_dump_json().encode())
        wait_for(lambda: stats().get("revocations_refused") == 2, what="rollback refused")
        assert "rollback" in str(stats()["last_refusal"])
        hb = link.heartbeat()
        assert (hb.trust_version, hb.revocation_version) == (1, 2)
        # v2 un-revoked the serial legitimately; revoke it again in v3.
        hub_side.publish_retained(topics.REVOCATIONS,
                                  city.revocations(3, serials=[revoked.serial]).model_dump_json().encode())
        wait_for(lambda: stats().get("revocation_version") == 3, what="v3 applied")

        online = city.code()
        cv2.imwrite(str(drop / "001.png"), frame_with([online.text], noise=4))
        [rec] = hub_side.records(1)
        assert (rec.serial, rec.verdict, rec.location, rec.dept) == (online.serial, "valid", "gate-1 east", "HEALTH")

        # Broker down: scans go on offline, their log waits in the outbox.
        broker.stop()
        wait_for(lambda: not link.connected, what="link down")
        offline = [city.code(), city.code(attribute="DH1")]
        cv2.imwrite(str(drop / "002.png"), frame_with([offline[0].text, revoked.text], size=(480, 800), box=3))
        cv2.imwrite(str(drop / "003.png"), frame_with([offline[1].text]))
        cv2.imwrite(str(drop / "004.png"), frame_with([offline[1].text], noise=3))  # single-use, second time
        cv2.imwrite(str(drop / "005.png"), frame_with([]))
        wait_for(lambda: link.outbox.depth() >= 1 and stats().get("scans_replayed") == 1, what="offline scans")
        time.sleep(0.5)  # let the last batch leave the agent's buffer for the outbox
        broker.start()
        recs = hub_side.records(4, timeout=30)
        time.sleep(1.0)  # anything more (beyond re-sent copies of known batches) would arrive now
        recs += hub_side.records(1, timeout=0.5)
        got = sorted((r.serial, r.verdict) for r in recs)
        assert got == sorted([(offline[0].serial, "valid"), (revoked.serial, "revoked"),
                              (offline[1].serial, "valid"), (offline[1].serial, "replayed")])
        assert len({r.scan_id for r in recs}) == 4
        # Processed captures are moved aside so a restarted terminal does not log them again.
        assert sorted(p.name for p in (drop / "done").iterdir()) == ["001.png", "002.png", "003.png", "004.png",
                                                                     "005.png"]
        assert not list(drop.glob("*.png"))


def test_citybrain_edge_scanner_process(broker: Broker, hub_side: HubSide, tmp_path: Path) -> None:
    """`citybrain edge scanner --config FILE` as a real process: syncs the retained lists, scans a dropped
    image, logs it to the hub side, and stops cleanly on SIGTERM."""
    import signal
    import subprocess
    import sys

    city = City()
    hub_side.publish_retained(topics.TRUST, city.trust_list(1).model_dump_json().encode())
    hub_side.publish_retained(topics.REVOCATIONS, city.revocations(1).model_dump_json().encode())
    pw = secrets.token_urlsafe(12)
    broker.cfg.add_user("gate1.term1", pw, device_acl("gate1.term1", "gate1", "term1"))
    broker.reload()
    drop = tmp_path / "drop"
    drop.mkdir()
    cfg_path = scanner_config(tmp_path, city, source=str(drop), batch_interval_s=0.2)
    raw = json.loads(cfg_path.read_text())
    raw["mqtt"].update(port=broker.cfg.port, password=pw)
    cfg_path.write_text(json.dumps(raw))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "citybrain.cli", "edge", "scanner", "--config", str(cfg_path)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "scanner" / "trust.json").exists() or proc.poll() is not None,
                 timeout=30, what="trust list persisted by the agent process")
        assert proc.poll() is None
        # A zero-byte PNG first (it used to end the process with OpenCV's `!buf.empty()`): its own verdict,
        # and the terminal goes on to verify the next image.
        (drop / "0-empty.png").write_bytes(b"")
        [rec] = hub_side.records(1, timeout=20)
        assert rec.verdict == "unreadable" and "0-empty.png" in rec.reason and "empty" in rec.reason
        assert proc.poll() is None
        code = city.code()
        cv2.imwrite(str(drop / "a.png"), frame_with([code.text]))
        [rec] = hub_side.records(1, timeout=20)
        assert (rec.serial, rec.verdict) == (code.serial, "valid")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out


def test_unprovisioned_root_key_reported_not_crashed(tmp_path: Path) -> None:
    city = City()
    cfg_path = scanner_config(tmp_path, city)
    raw = json.loads(cfg_path.read_text())
    del raw["scanner"]["city_root_key"]
    cfg_path.write_text(json.dumps(raw))
    cfg = load_config(cfg_path)
    link = Link(cfg)  # never started: no broker needed to see what the heartbeat would say
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg, link, stop), daemon=True)
    t.start()
    try:
        wait_for(lambda: "scanner_error" in link.heartbeat_extra, timeout=5, what="error in heartbeat")
        assert "scanner.city_root_key" in link.heartbeat().extra["scanner_error"]  # type: ignore[operator]
        assert t.is_alive()
    finally:
        stop.set()
        t.join(5)
        link.outbox.close()


def test_video_source_logs_each_code_once_per_window(tmp_path: Path) -> None:
    """A camera-like source (video file through OpenCV) with a code held in view for many frames, then an
    inverted (dark-mode screen) code: each logged once, straight into the outbox with no broker at all."""
    city = City()
    held, dark = city.code(), city.code()
    video = tmp_path / "cam.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    frames = [frame_with([held.text], noise=3)] * 8 + [frame_with([], noise=3)] * 2
    frames += [cv2.bitwise_not(frame_with([dark.text], noise=3))] * 4
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    w.release()
    from edge.scanner.trust_store import TrustStore

    store = TrustStore(city.root.public, tmp_path / "scanner")
    store.apply(city.trust_list(1))
    store.apply(city.revocations(1))
    store.close()
    cfg_path = scanner_config(tmp_path, city, decoder="zxing", source=str(video), repeat_window_s=60,
                              batch_interval_s=0.1)
    cfg = load_config(cfg_path)
    link = Link(cfg)  # not started: the broker is unreachable for this whole test
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg, link, stop), daemon=True)
    t.start()

    def queued() -> list:
        return [r for row in link.outbox.pending(0, 100) for r in ScanBatch.model_validate_json(row.payload).records]

    try:
        wait_for(lambda: len(queued()) >= 2, what="both scans in the outbox")
        time.sleep(0.3)  # the rest of the clip plays: nothing more may be logged
    finally:
        stop.set()
        t.join(10)
    assert {r.topic for r in link.outbox.pending(0, 100)} == {topics.scan("gate1", "term1")}
    recs = queued()
    link.outbox.close()
    assert sorted((r.serial, r.verdict) for r in recs) == sorted([(held.serial, "valid"), (dark.serial, "valid")])


def test_bad_images_in_the_watch_folder_do_not_stop_the_terminal(tmp_path: Path) -> None:
    """Zero-byte, truncated and non-image files dropped among good captures: each gets an `unreadable`
    record with its reason, the good ones are verified, all are moved aside, and the agent keeps running."""
    from edge.scanner.trust_store import TrustStore
    from tests.scanner.test_decode import bad_images

    city = City()
    store = TrustStore(city.root.public, tmp_path / "scanner")
    store.apply(city.trust_list(1))
    store.apply(city.revocations(1))
    store.close()
    drop = tmp_path / "drop"
    drop.mkdir()
    cfg = load_config(scanner_config(tmp_path, city, source=str(drop), batch_interval_s=0.1))
    link = Link(cfg)  # not started: records wait in the outbox
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg, link, stop), daemon=True)
    before, after = city.code(), city.code()
    cv2.imwrite(str(drop / "a-before.png"), frame_with([before.text]))
    bad = bad_images(drop, frame_with([before.text]))
    t.start()

    def queued() -> list:
        return [r for row in link.outbox.pending(0, 100) for r in ScanBatch.model_validate_json(row.payload).records]

    try:
        wait_for(lambda: len(queued()) >= 4, timeout=30, what="first scans in the outbox")
        cv2.imwrite(str(drop / "z-after.png"), frame_with([after.text]))  # dropped after the bad ones
        wait_for(lambda: len(queued()) >= 5, timeout=30, what="the later image verified too")
        assert t.is_alive()
    finally:
        stop.set()
        t.join(10)
    recs = queued()
    link.outbox.close()
    assert sorted((r.serial, r.verdict) for r in recs if r.serial) == sorted(
        [(before.serial, "valid"), (after.serial, "valid")])
    unreadable = sorted(r.reason for r in recs if r.verdict == "unreadable")
    assert len(unreadable) == 3
    for name, why in bad.items():
        assert any(name in r and why in r for r in unreadable), (name, unreadable)
    assert sorted(p.name for p in (drop / "done").iterdir()) == sorted(["a-before.png", "z-after.png", *bad])
