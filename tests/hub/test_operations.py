"""Operations (issue 17.4): /metrics in Prometheus format, /readyz that fails when a part is down, a request
id that goes from the answer header into the logs and the audit row. Real mosquitto, real HTTP server."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from central.app import build_hub, create_app
from central.broker import Broker
from central.hub import Hub
from protocol import messages, topics
from tests.conftest import make_settings
from tests.helpers import auth, token_for, wait_for
from tests.spine.test_bridge_input import Device

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(c: TestClient) -> Samples:
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def bridged(tmp_path: Path, broker: Broker) -> Iterator[Hub]:
    h = build_hub(make_settings(tmp_path, broker))
    yield h
    h.close()


def test_http_latency_is_counted_by_route_template(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "root"))
    for eid in ("A1", "B2", "C3"):  # three ids, one route: one series, never one per object
        assert client.get(f"/api/v1/registry/entities/{eid}", headers=h).status_code in (400, 404)
    assert client.get("/no/such/page").status_code == 404
    s = scrape(client)
    assert value(s, "citybrain_http_request_duration_seconds_count", route="/api/v1/registry/entities/{entity_id}",
                 method="GET", status="4xx") == 3
    assert value(s, "citybrain_http_request_duration_seconds_count", route="unmatched", method="GET",
                 status="4xx") == 1
    assert not any(k[0].startswith("citybrain_http") and ("route", "/api/v1/registry/entities/A1") in k[1] for k in s)


def test_ingest_devices_and_queues_over_mosquitto(bridged: Hub) -> None:
    with TestClient(create_app(hub=bridged)) as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, 30, "hub ready with its bridge")
        dev = Device(bridged, "cam1")
        try:
            dev.send(topics.status("site1", "cam1"), messages.Status(state="online").model_dump_json())
            dev.send(topics.heartbeat("site1", "cam1"),
                     messages.Heartbeat(uptime_s=9, queue_depth=7).model_dump_json())
            sent = [messages.Event(kind="fire") for _ in range(5)]
            for e in sent:
                dev.send(topics.event("site1", "cam1", "fire"), e.model_dump_json())
            dev.send(topics.event("site1", "cam1", "fire"), b"{not json")
            wait_for(lambda: dev.stored() >= {e.event_id for e in sent}, 30, "events receipted")

            def settled() -> Samples | None:
                x = scrape(c)
                done = (value(x, "citybrain_devices_online", kind="camera") == 1
                        and value(x, "citybrain_ingest_messages_total", kind="any", result="refused") == 1)
                return x if done else None

            s = wait_for(settled, 30, "figures")
        finally:
            dev.close()
    assert value(s, "citybrain_ingest_messages_total", kind="event", result="stored") == 5
    assert value(s, "citybrain_ingest_lag_seconds_count", kind="event") == 5
    assert 0 <= value(s, "citybrain_ingest_lag_seconds_sum", kind="event") < 60  # type: ignore[operator]
    assert value(s, "citybrain_devices", kind="camera") == 1
    assert value(s, "citybrain_device_outbox_depth", kind="camera") == 7
    assert value(s, "citybrain_receipts_backlog") == 0
    # the five events reached the video correlator's queue; it drains them
    assert value(s, "citybrain_queue_due", kind="video_correlation") is not None
    assert value(s, "citybrain_queue_oldest_lease_age_seconds", kind="webhooks") == 0


def test_verdicts_are_counted(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "root"))
    for text in ("not a city code", "CB1:garbage"):
        assert client.post("/api/v1/codes/verify", json={"text": text}, headers=h).status_code == 200
    s = scrape(client)
    assert sum(v for (n, _), v in s.items() if n == "citybrain_verify_verdicts_total") == 2


def test_readyz_fails_when_the_broker_goes(bridged: Hub, broker: Broker) -> None:
    with TestClient(create_app(hub=bridged)) as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, 30, "ready")
        assert c.get("/healthz").status_code == 200
        broker.stop()
        r = wait_for(lambda: (x := c.get("/readyz")).status_code == 503 and x, 30, "not ready")
        failed = {k["name"]: k for k in r.json()["checks"] if not k["ok"]}
        assert set(failed) == {"broker"}, r.json()
        assert "not connected" in failed["broker"]["detail"]
        assert c.get("/healthz").status_code == 200  # liveness: the process still serves


def test_readyz_fails_on_a_dead_worker_and_on_an_old_schema(client: TestClient, hub: Hub) -> None:
    assert client.get("/readyz").status_code == 200
    w = hub.worker("webhooks-deliver")
    assert w is not None
    w.stop()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert {c["name"]: c["ok"] for c in r.json()["checks"]}["workers"] is False
    assert "webhooks-deliver" in r.text
    w.start()
    assert client.get("/readyz").status_code == 200
    with hub.store.tx() as db:  # a hub whose database is behind its code (a migration not yet run)
        db.run(sa.text("UPDATE alembic_version SET version_num = '0004'"))
    r = client.get("/readyz")
    assert r.status_code == 503
    mig = next(c for c in r.json()["checks"] if c["name"] == "migrations")
    assert not mig["ok"] and "0004" in mig["detail"]


def test_metrics_token(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    h = build_hub(make_settings(tmp_path, security={"metrics_token": token}))
    try:
        with TestClient(create_app(hub=h, start_bridge=False)) as c:
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        h.close()


def test_request_id_in_the_answer_the_json_log_and_the_audit_row(tmp_path: Path) -> None:
    """`hub serve --log-format json` as a real process: a failed login (an audited write) sent with an
    X-Request-ID; the answer echoes it, a JSON log line carries it, the audit row's detail holds it."""
    port = int(wait_for(_free_port, 5))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYBRAIN_DATA_DIR": str(tmp_path / "hub"),
           "CITYBRAIN_MQTT__ENABLED": "false", "CITYBRAIN_PORT": str(port)}
    url = make_settings(tmp_path).database_url
    if url:
        env["CITYBRAIN_DATABASE_URL"] = url
    p = subprocess.Popen([sys.executable, "-m", "citybrain.cli", "hub", "serve", "--no-bridge",
                          "--log-format", "json"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz"), 90, "hub serving")
        rid = "trace-" + secrets.token_hex(8)
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/iam/login", json={"username": "nobody", "password": "x" * 12},
                       headers={"X-Request-ID": rid}, timeout=30)
        assert r.status_code == 401 and r.headers["x-request-id"] == rid
        bad = "a caller's id with spaces; " + "x" * 80  # not a sane token: replaced, never logged or audited
        r2 = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": bad}, timeout=30)
        assert r2.status_code == 200 and len(r2.headers["x-request-id"]) == 32
    finally:
        p.terminate()
        _, err = p.communicate(timeout=60)
    lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == rid]
    assert any(x.get("logger") == "citybrain.http" and x.get("status") == 401
               and x.get("route") == "/api/v1/iam/login" for x in mine), lines[-5:]
    assert all({"ts", "level", "event"} <= set(x) for x in lines)
    h = build_hub(make_settings(tmp_path, database_url=url))
    try:
        with h.store.read() as db:
            rows = db.all(sa.text("SELECT action, detail FROM iam_audit WHERE action = 'login.failed'"))
    finally:
        h.close()
    assert [json.loads(r["detail"]).get("request_id") for r in rows] == [rid]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(u: str) -> bool:
    try:
        return httpx.get(u, timeout=5).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.2)
        return False


def test_the_grafana_dashboard_reads_only_metrics_the_hub_exposes(client: TestClient) -> None:
    """docker/grafana/citybrain-hub.json: every citybrain_* series a panel queries is in a scrape of a hub
    (store-derived families are exposed with zeros on an empty hub, so the check needs no traffic)."""
    import re

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    text = client.get("/metrics").text  # a labelled family with no series yet still has its HELP and TYPE
    exposed = {f.name + x for f in text_string_to_metric_families(text) for x in suffixes.get(f.type, ("",))}
    doc = json.loads((ROOT / "docker" / "grafana" / "citybrain-hub.json").read_text(encoding="utf-8"))
    queried = {m for p in doc["panels"] for t in p["targets"] for m in re.findall(r"citybrain_\w+", t["expr"])}
    assert len(queried) >= 12
    missing = sorted(q for q in queried if q not in exposed)
    assert not missing, missing
