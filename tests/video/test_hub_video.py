"""Hub side: correlation of real Event objects (through the bridge's hook), the disposal workflow and its
scope over the API, alert push over a real HTTP webhook (HMAC) and MQTT (hub.publish), stats, heat map."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
import standardwebhooks
from fastapi.testclient import TestClient

from central.hub import Hub
from central.settings import Settings, WebhooksSettings
from central.video import store as video_store
from central.video.service import service_of
from central.webhooks import service as webhooks
from protocol.messages import Event
from tests.helpers import auth, token_for

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
JPEG = cv2.imencode(".jpg", np.full((40, 60, 3), 128, np.uint8))[1].tobytes()


def ev(kind: str = "fire", camera: str = "cam1", phase: str = "start", incident: str | None = "inc-1",
       dt: float = 0, **kw: Any) -> Event:
    return Event(kind=kind, camera=camera, phase=phase, incident_id=incident, ts=T0 + timedelta(seconds=dt),
                 score=0.8, count=kw.pop("count", 1), snapshot_jpeg_b64=base64.b64encode(JPEG).decode(), **kw)


def ingest(hub: Hub, *items: tuple[str, str, Event]) -> None:
    """As in production: the bridge stores the events (once per event_id), the correlator consumes them."""
    from central.bridge.service import store_events, write_snapshots
    from central.media import media_of

    snaps = write_snapshots(media_of(hub), list(items))  # before the transaction, as the bridge does
    with hub.store.tx() as db:
        store_events(db, list(items), {}, datetime.now(UTC).isoformat(), snaps)
    service_of(hub).process_pending()


def cases(hub: Hub) -> list[tuple]:
    c = video_store.cases.c
    with hub.store.read() as db:
        return [tuple(r) for r in db.run(sa.select(c.id, c.kind, c.camera, c.event_count, c.cameras, c.live, c.org)
                                         .order_by(c.id))]


_audit = sa.table("iam_audit", sa.column("seq"), sa.column("action"), sa.column("target"))  # iam's table


def audit_actions(hub: Hub, **where: str) -> list[str]:
    with hub.store.read() as db:
        return list(db.run(sa.select(_audit.c.action).where(*(_audit.c[k] == v for k, v in where.items()))
                           .order_by(_audit.c.seq)).scalars())


def test_one_incident_is_one_case(hub: Hub) -> None:
    ingest(hub, ("s1", "gw1", ev(phase="start")), ("s1", "gw1", ev(phase="update", dt=60)))
    ingest(hub, ("s1", "gw1", ev(phase="end", dt=120)))
    ingest(hub, ("s1", "gw1", ev(phase="end", dt=120).model_copy(update={"event_id": "dupdupdup1"})))
    e = ev(phase="update", dt=60)
    ingest(hub, ("s1", "gw1", e), ("s1", "gw1", e))  # a re-delivered event is counted once
    rows = cases(hub)
    assert len(rows) == 1
    assert rows[0][3] == 5 and rows[0][6] == "/city"
    # Same kind on an adjacent camera within the window joins the case; a far camera does not.
    svc = service_of(hub)
    svc.set_camera("s1", "gw1", "cam1", 30.0, 120.0, ["gw2/camB"], actor="test")
    ingest(hub, ("s1", "gw2", ev(camera="camB", incident="other-1", dt=200)))
    ingest(hub, ("s1", "gw3", ev(camera="camZ", incident="other-2", dt=200)))
    ingest(hub, ("s1", "gw1", ev(kind="smoke", incident="smoke-1", dt=200)))  # other kind: own case
    ingest(hub, ("s1", "gw2", ev(camera="camB", incident="late-1", dt=200 + 3600)))  # outside window
    rows = cases(hub)
    assert [(r[1], json.loads(r[4])) for r in rows] == [
        ("fire", ["gw1/cam1", "gw2/camB"]), ("fire", ["gw3/camZ"]), ("smoke", ["gw1/cam1"]), ("fire", ["gw2/camB"])]
    assert len(audit_actions(hub, action="video.case.create")) == 4


def test_a_devices_test_event_is_stored_but_opens_no_case(hub: Hub) -> None:
    """`edge camera --test-event` proves the path to the store; it is no incident (the demo sends one)."""
    from central.bridge import store as bridge_store

    t = Event(kind="test", attrs={"note": "test event from citybrain edge"})
    ingest(hub, ("s1", "gw1", t), ("s1", "gw1", ev()))
    with hub.store.read() as db:
        assert bridge_store.max_seq(db) == 2  # both stored
    assert [r[1] for r in cases(hub)] == ["fire"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background webhook sender: the test delivers from the outbox itself, at the point it chooses."""
    return settings.model_copy(update={"webhooks": WebhooksSettings(worker=False)})


class _Hook(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Any:
    _Hook.got = []
    srv = HTTPServer(("127.0.0.1", 0), _Hook)  # port 0: a free port
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_port}/alerts", _Hook.got
    srv.shutdown()


def test_workflow_scope_alerts_over_api(hub: Hub, client: TestClient, webhook: Any) -> None:
    url, got = webhook
    admin = auth(token_for(hub, "root", role="city_admin", org="/city"))
    op_a = auth(token_for(hub, "op_a", role="street_operator", org="/city/district-a"))
    op_b = auth(token_for(hub, "op_b", role="street_operator", org="/city/district-b"))
    r = client.put("/api/v1/video/sites/s1", json={"org_path": "/city/district-a"}, headers=admin)
    assert r.status_code == 200, r.text
    assert client.put("/api/v1/video/sites/s9", json={"org_path": "/city/district-a"}, headers=op_a).status_code == 404
    secret = "s" * 32
    r = client.post("/api/v1/video/routes", headers=admin, json={
        "org_prefix": "/city/district-a", "kind": "fire", "department": "fire-brigade", "webhook_url": url,
        "webhook_secret": secret, "ack_sla_min": 10})
    assert r.status_code == 201, r.text
    client.post("/api/v1/video/routes", headers=admin, json={"org_prefix": "/city", "department": "city-mgmt"})
    client.put("/api/v1/video/cameras/s1/gw1/cam1", headers=admin, json={"lat": 30.001, "lon": 120.001})

    ingest(hub, ("s1", "gw1", ev()), ("s2", "gw5", ev(kind="litter", incident="x")))
    lst = client.get("/api/v1/video/cases", headers=op_a).json()
    assert lst["total"] == 1  # s2 maps to /city: outside district-a
    case = lst["items"][0]
    cid = case["id"]
    assert case["org"] == "/city/district-a" and case["status"] == "new" and case["lat"] == 30.001
    assert client.get("/api/v1/video/cases", headers=op_b).json()["total"] == 0
    assert client.get("/api/v1/video/cases", headers=admin).json()["total"] == 2
    snap = client.get(case["snapshot_url"], headers=op_a)
    assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg" and snap.content == JPEG
    assert client.get(case["snapshot_url"], headers=op_b).status_code == 404
    assert client.get("/api/v1/video/cases/999/snapshot", headers=admin).status_code == 404
    assert client.get("/api/v1/video/cases").status_code == 401
    # The JPEG is a file of the media store; gone or changed on disk, the API says so (410), never a 500
    from central.media import media_of

    with hub.store.read() as db:
        key = db.scalar(sa.select(video_store.cases.c.snapshot_key).where(video_store.cases.c.id == cid))
    path = media_of(hub).path(key)
    assert path.read_bytes() == JPEG
    path.write_bytes(JPEG[:-1] + b"\x00")
    r = client.get(case["snapshot_url"], headers=op_a)
    assert r.status_code == 410 and "missing or damaged" in r.json()["detail"]
    path.unlink()
    assert client.get(case["snapshot_url"], headers=op_a).status_code == 410
    path.write_bytes(JPEG)

    # Wrong order and bad input are 409/422 naming the field; another district cannot act.
    r = client.post(f"/api/v1/video/cases/{cid}/dispatch", json={}, headers=op_a)
    assert r.status_code == 409 and "status" in r.json()["detail"]
    r = client.post(f"/api/v1/video/cases/{cid}/review", json={"verdict": "maybe"}, headers=op_a)
    assert r.status_code == 422 and "verdict" in r.text
    assert client.post(f"/api/v1/video/cases/{cid}/review", json={"verdict": "confirmed"},
                       headers=op_b).status_code == 404
    r = client.post(f"/api/v1/video/cases/{cid}/review", json={"verdict": "confirmed", "reason": "flames seen"},
                    headers=op_a)
    assert r.status_code == 200 and r.json()["status"] == "reviewed"
    r = client.post(f"/api/v1/video/cases/{cid}/dispatch", json={}, headers=op_a)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["status"] == "dispatched" and d["department"] == "fire-brigade" and not d["overdue"]
    service_of(hub).wait_alerts()  # MQTT
    assert got == []  # the webhook is a durable delivery in the outbox, not sent from this process's memory
    other = Hub(hub.settings)  # another process (or this hub after a restart) on the same database sends it
    try:
        assert webhooks.WebhooksService(other).deliver_due()["delivered"] == 1
    finally:
        other.close()
    # Webhook: Standard Webhooks signing; the route's own secret (not whsec_) is the key as UTF-8 bytes.
    assert len(got) == 1
    headers, body = got[0]
    assert standardwebhooks.Webhook(secret.encode()).verify(body, headers)["case"]["id"] == cid
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= {k.lower() for k in headers}
    # MQTT: published through hub.publish (MQTT disabled in this hub: the LoggingPublisher keeps it).
    sent = [(t, json.loads(p)) for t, p, _, _ in hub.publisher.sent if "alerts/video" in t]
    assert sent and sent[0][0] == "city/v1/alerts/video/fire-brigade" and sent[0][1]["case"]["id"] == cid
    detail = client.get(f"/api/v1/video/cases/{cid}", headers=op_a).json()
    assert {a["channel"]: a["status"] for a in detail["alerts"]} == {"mqtt": "sent", "webhook": "sent"}

    assert client.post(f"/api/v1/video/cases/{cid}/acknowledge", headers=op_a).json()["status"] == "acknowledged"
    r = client.post(f"/api/v1/video/cases/{cid}/resolve", json={"note": "extinguished"}, headers=op_a)
    assert r.json()["status"] == "resolved" and r.json()["due_at"] is None
    detail = client.get(f"/api/v1/video/cases/{cid}", headers=op_a).json()
    assert [h["action"] for h in detail["history"]] == [
        "video.case.create", "video.case.review", "video.case.dispatch", "video.case.acknowledge",
        "video.case.resolve"]
    actions = audit_actions(hub, target=f"video_case:{cid}")
    assert actions == [h["action"] for h in detail["history"]]

    # False positive: dismissed, reason kept as feedback for that camera + rule.
    other = client.get("/api/v1/video/cases?kind=litter", headers=admin).json()["items"][0]["id"]
    r = client.post(f"/api/v1/video/cases/{other}/review", json={"verdict": "false_positive"}, headers=admin)
    assert r.status_code == 400 and "reason" in r.json()["detail"]
    r = client.post(f"/api/v1/video/cases/{other}/review", json={"verdict": "false_positive",
                                                                  "reason": "shadow of a tree"}, headers=admin)
    assert r.json()["status"] == "dismissed"
    fb = client.get("/api/v1/video/feedback", headers=admin).json()
    lit = next(f for f in fb if f["kind"] == "litter")
    assert lit["false_positive"] == 1 and lit["reasons"][0]["reason"] == "shadow of a tree"
    assert all(f["kind"] != "litter" for f in client.get("/api/v1/video/feedback", headers=op_a).json())

    st = client.get("/api/v1/video/stats", headers=admin).json()
    assert st["by_kind"] == {"fire": 1, "litter": 1} and st["by_area"] == {"/city": 1, "/city/district-a": 1}
    assert st["by_hour"] == {"2025-05-01T08": 2} and st["false_positive_rate"] == 0.5
    hm = client.get("/api/v1/video/heatmap?cell_deg=0.01", headers=admin).json()
    assert hm["cells"] == [{"cell": "3000:12000", "lat": 30.005, "lon": 120.005, "count": 1}]
    assert client.get("/api/v1/video/heatmap?cell_deg=0", headers=admin).status_code == 422


def test_sla_overdue_flag(hub: Hub, client: TestClient) -> None:
    admin = auth(token_for(hub, "root", role="city_admin", org="/city"))
    ingest(hub, ("s1", "gw1", ev()))
    cid = client.get("/api/v1/video/cases", headers=admin).json()["items"][0]["id"]
    client.post(f"/api/v1/video/cases/{cid}/review", json={"verdict": "confirmed"}, headers=admin)
    r = client.post(f"/api/v1/video/cases/{cid}/dispatch", json={}, headers=admin)
    assert r.status_code == 409 and "department" in r.json()["detail"]  # no route matches, none named
    r = client.post(f"/api/v1/video/cases/{cid}/dispatch", json={"department": "street-team"}, headers=admin)
    assert r.json()["overdue"] is False
    with hub.store.tx() as db:  # the SLA deadline passes
        video_store.update_case(db, cid, due_at="2000-01-01T00:00:00+00:00")
    assert client.get(f"/api/v1/video/cases/{cid}", headers=admin).json()["overdue"] is True
    assert [c["id"] for c in client.get("/api/v1/video/cases?overdue=true", headers=admin).json()["items"]] == [cid]
    assert client.get("/api/v1/video/cases?status=bogus", headers=admin).status_code == 400


def test_correlator_as_its_own_process(tmp_path: Any) -> None:
    """`citybrain hub video correlate` (the hub's correlator worker alone in a process) turns events stored by
    a hub with inline_consumers off into cases, and stops cleanly on SIGTERM."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from central.app import build_hub
    from central.bridge.service import store_events
    from tests.conftest import make_settings
    from tests.helpers import wait_for

    settings = make_settings(tmp_path, inline_consumers=False)
    hub = build_hub(settings)
    assert hub.worker("video-correlator") is None  # not in this process
    from central.bridge.service import write_snapshots
    from central.media import media_of

    items = [("site1", "gw1", ev())]
    snaps = write_snapshots(media_of(hub), items)
    with hub.store.tx() as db:
        store_events(db, items, {}, datetime.now(UTC).isoformat(), snaps)
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(settings.model_dump_json())))
    root = Path(__file__).resolve().parents[2]
    p = subprocess.Popen([sys.executable, "-m", "citybrain.cli", "hub", "video", "correlate", "-c", str(cfg)],
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: cases(hub), 60, "a case from the correlator process")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
        hub.close()
