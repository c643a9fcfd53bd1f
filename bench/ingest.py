"""Ingest benchmark: N edge clients publish QoS1 events through mosquitto into the hub store (the hub
publishes its batched receipts after each commit, as in production; these publishers do not wait for them).

Baseline (same run, same publishers): a bare paho subscriber that only counts QoS1 messages.
Last stdout line: {"metric","value","unit","target","baseline","ratio"}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from central.app import build_hub  # noqa: E402
from central.bridge import store as bridge_store  # noqa: E402
from central.bridge.service import Bridge  # noqa: E402
from central.broker import HUB_ACL, Broker, BrokerConfig  # noqa: E402
from central.settings import MqttSettings, Settings  # noqa: E402
from central.store import Store  # noqa: E402
from central.video import store as video_store  # noqa: E402
from protocol import messages, topics  # noqa: E402


def publisher(port: int, user: str, pw: str, site: str, device: str, n: int, go: mp.Event) -> None:  # type: ignore[valid-type]
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{device}-{secrets.token_hex(2)}")
    c.username_pw_set(user, pw)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    topic = topics.event(site, device, "crowd")
    payloads = [messages.Event(kind="crowd", count=i, camera="c1").model_dump_json() for i in range(n)]
    go.wait()  # type: ignore[attr-defined]
    infos = [c.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    c.loop_stop()
    c.disconnect()


def run_publishers(port: int, creds: list[tuple[str, str, str, str]], per: int) -> tuple[list[mp.Process], mp.Event]:  # type: ignore[valid-type]
    go = mp.Event()
    procs = [mp.Process(target=publisher, args=(port, u, p, s, d, per, go)) for (u, p, s, d) in creds]
    for p in procs:
        p.start()
    time.sleep(1.5)  # connected and payloads prepared before the clock starts
    return procs, go


def publish_all(port: int, creds: list[tuple[str, str, str, str]], per: int) -> float:
    procs, go = run_publishers(port, creds, per)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    return time.perf_counter() - t0


def subscribe_once(port: int, hub_pw: str, client_id: str) -> None:
    """Create the persistent session (clean_session=False) so the broker queues for it while it is away."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.username_pw_set("hub", hub_pw)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topics.SUB_EVENT, qos=1)[1]
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()


def bare_drain(port: int, hub_pw: str, total: int) -> float:
    """Baseline: a bare paho subscriber that only counts, draining the queued backlog."""
    count = 0
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count >= total:
            done.set()

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare-counter", clean_session=False)
    c.username_pw_set("hub", hub_pw)
    c.on_message = on_message
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(300)
    t1 = time.perf_counter()
    c.loop_stop()
    c.disconnect()
    return count / (t1 - t0)


def count_stored(store: Store) -> int:
    with store.read() as db:
        return bridge_store.count_events(db)


def correlate(settings: Settings, tmp: Path, store: Store) -> float:
    """Time `citybrain hub video correlate` (a separate process) over every stored event."""
    import subprocess

    import yaml

    cfg = tmp / "hub.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(settings.model_dump_json())))
    with store.read() as db:
        total = bridge_store.max_seq(db)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "citybrain.cli", "hub", "video", "correlate", "-c", str(cfg)],
                         cwd=Path(__file__).resolve().parents[1], stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 600:
            with store.read() as db:
                if video_store.cursor_position(db) >= total:
                    break
            time.sleep(0.05)
        return total / (time.perf_counter() - t0)
    finally:
        p.terminate()
        p.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--events", type=int, default=100_000, help="total events per measurement")
    ap.add_argument("--database-url", default=None,
                    help="an EMPTY database for the hub (postgresql://...); default: a SQLite file in a temp dir")
    args = ap.parse_args()
    per = args.events // args.clients
    total = per * args.clients
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bcfg = BrokerConfig(dir=tmp / "broker")
        bcfg.write()
        hub_pw = secrets.token_urlsafe(12)
        bcfg.add_user("hub", hub_pw, HUB_ACL.format(hub="hub"))
        broker = Broker(bcfg).start()
        settings = Settings(
            data_dir=tmp / "hub",
            database_url=args.database_url,
            inline_consumers=False,  # video correlation runs as its own process, measured below
            mqtt=MqttSettings(port=bcfg.port, username="hub", password=hub_pw, passwd_file=bcfg.passwd,
                              acl_file=bcfg.acl, pid_file=bcfg.pid_file),
        )
        hub = build_hub(settings)
        creds = []
        for i in range(args.clients):
            _row, cfg = hub.services["devices"].provision("bench", "camera", f"cam{i}", device=f"cam{i}")
            creds.append((cfg["mqtt"]["username"], cfg["mqtt"]["password"], "bench", f"cam{i}"))
        time.sleep(0.5)
        try:
            # Both consumers drain the same kind of backlog: events queued by the broker for a persistent
            # session while the consumer was away. This isolates the consumer's rate from the publishers'.
            subscribe_once(bcfg.port, hub_pw, "bare-counter")
            pub_s = publish_all(bcfg.port, creds, per)
            base = bare_drain(bcfg.port, hub_pw, total)
            print(json.dumps({"phase": "baseline", "events_per_s": round(base),
                              "publish_rate": round(total / pub_s)}), flush=True)

            bridge = Bridge(hub).start()
            assert bridge.wait_connected(10)
            time.sleep(0.5)
            bridge.stop()
            publish_all(bcfg.port, creds, per)
            bridge = Bridge(hub)
            t0 = time.perf_counter()
            bridge.start()
            n_stored = 0
            while time.perf_counter() - t0 < 300:
                n_stored = count_stored(hub.store)
                if n_stored >= total:
                    break
                time.sleep(0.01)
            t1 = time.perf_counter()
            time.sleep(1.0)
            n_stored = count_stored(hub.store)
            bridge.stop()
            receipts = bridge.counters.get("receipts", 0)  # one per device and ingest batch, after commit
            # Live: publishers and the hub at the same time (bounded by the publishers on 2 cores).
            bridge = Bridge(hub).start()
            assert bridge.wait_connected(10)
            live_s = publish_all(bcfg.port, creds, per)
            deadline = time.perf_counter() + 300
            while count_stored(hub.store) < 2 * total:
                if time.perf_counter() > deadline:
                    break
                time.sleep(0.01)
            live_stored = count_stored(hub.store) - n_stored
            bridge.stop()
            print(json.dumps({"phase": "live", "events_in": total, "events_stored": live_stored,
                              "publish_seconds": round(live_s, 2), "lost": total - live_stored}), flush=True)
        finally:
            broker.stop()
            corr_rate = correlate(settings, tmp, hub.store)
            print(json.dumps({"phase": "video_correlation", "events_per_s": round(corr_rate)}), flush=True)
        rate = n_stored / (t1 - t0)
        print(json.dumps({"phase": "hub", "events_in": total, "events_stored": n_stored, "lost": total - n_stored,
                          "seconds": round(t1 - t0, 2), "clients": args.clients, "mode": "drain",
                          "receipts": receipts}), flush=True)
        print(json.dumps({
            "metric": "hub_ingest_events_per_s", "value": round(rate), "unit": "events/s", "target": 10000,
            "baseline": round(base), "ratio": round(rate / base, 3), "lost": total - n_stored,
        }))


if __name__ == "__main__":
    main()
