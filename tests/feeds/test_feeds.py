"""The four change feeds (docs/FEEDS.md), each through its HTTP route and the example consumer: a consumer
that crashes mid-page and resumes from its saved cursor while a writer keeps changing things sees every
change exactly once, in order; a district's consumer sees only its district; a bad cursor is a 422 naming
`after`; and each change is also pushed on a real mosquitto."""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub, create_app
from central.broker import Broker
from central.dialer import service as dialer_svc
from central.dialer import store as dialer_store
from central.dialer.templates import builtin_templates
from central.feeds import service as feeds
from central.hub import Hub
from central.iam.pii import pii_cipher
from central.registry import service as registry_svc
from protocol import topics
from protocol.messages import Event, ScanBatch, ScanRecord
from tests.conftest import make_settings
from tests.helpers import auth, token_for, wait_for

pytestmark = pytest.mark.both_backends

CAPS = ("registry", "codes", "video", "dialer")
DAY = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai: inside the dialer's window
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "feed_consumer.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("feed_consumer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


consumer = _example()


# ---- writers: each call makes one or more real changes of its capability inside `org` ---------------------

Writer = Callable[[int], None]


def registry_writer(hub: Hub, client: TestClient, org: str) -> Writer:
    actor = registry_svc.SystemActor("writer", org)

    def write(i: int) -> None:
        e = registry_svc.register(hub, actor, {"type": "place", "region": "330106", "name": f"kiosk {i}"})
        if i % 3 == 0:  # an update is a change too
            registry_svc.update(hub, actor, e["id"], registry_svc.EntityPatch(name=f"kiosk {i} renamed"))
    return write


def codes_writer(hub: Hub, client: TestClient, org: str) -> Writer:
    dept = "D" + org.rsplit("/", 1)[-1].replace("-", "").upper()[:20]
    r = client.post("/api/v1/codes/departments", headers=auth(token_for(hub, "codesadmin")),
                    json={"id": dept, "name": dept, "org": org})
    assert r.status_code == 201, r.text
    svc = hub.services["codes"]

    def write(i: int) -> None:  # a terminal's batch of scans of codes this hub never issued (forgeries)
        batch = ScanBatch(records=[ScanRecord(serial=f"X{i}N{n}", dept=dept, verdict="bad-signature")
                                   for n in range(1 + i % 2)])
        with hub.store.tx() as db:
            svc.ingest_scans(db, [("site1", "term1", batch)])
    return write


def video_writer(hub: Hub, client: TestClient, org: str) -> Writer:
    svc = hub.services["video"]
    site = "s" + org.rsplit("/", 1)[-1]
    svc.set_site(site, org, "tester")

    def write(i: int) -> None:  # a new case on its own camera, then (every other one) its review
        with hub.store.tx() as db:
            case_id = svc.ingest(db, site, f"cam{i}", Event(kind="litter", incident_id=f"inc{i}"))
        if i % 2 == 0 and case_id is not None:
            svc.review(case_id, "confirmed", "", "tester")
    return write


def dialer_writer(hub: Hub, client: TestClient, org: str, n: int = 400) -> Writer:
    tpl = next(t for t in builtin_templates() if t.key == "notice")
    sched = dialer_svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}], max_concurrent=n)
    c = pii_cipher(hub)
    phones = [f"1380{abs(hash(org)) % 1000:03d}{i:04d}" for i in range(n)]
    with hub.store.tx() as db:
        tid = dialer_store.insert_task(db, {
            "name": "t", "org": org, "template_key": tpl.key, "template_version": 1, "template": tpl.model_dump_json(),
            "schedule": sched.model_dump_json(), "status": "running", "created_at": dialer_svc.iso(DAY)})
        dialer_store.insert_contacts(db, [{
            "task_id": tid, "row_no": i + 2, "phone_enc": c.encrypt(p), "phone_idx": c.blind_index("phone", p),
            "phone_masked": dialer_svc.mask_phone(p), "name": f"n{i}", "vars": json.dumps({"notice": "x"}),
            "priority": 0, "status": "pending", "outcome": None, "attempts": 0, "updated_at": dialer_svc.iso(DAY)}
            for i, p in enumerate(phones)])
    task = next(t for t in dialer_svc.running_tasks(hub) if t["id"] == tid)

    def write(i: int) -> None:  # one finished call (busy ones come back: retries are results too)
        [contact] = dialer_svc.claim_due(hub, task, DAY, 1)
        dialer_svc.finish_attempt(hub, contact["id"], {
            "started_at": dialer_svc.iso(DAY), "outcome": "completed" if i % 4 else "busy",
            "sip_status": 200 if i % 4 else 486, "answers": {"ok": {"value": True}}}, DAY)
    return write


WRITERS: dict[str, Callable[[Hub, TestClient, str], Writer]] = {
    "registry": registry_writer, "codes": codes_writer, "video": video_writer, "dialer": dialer_writer}


def all_rows(hub: Hub, cap: str) -> list[dict[str, Any]]:
    with hub.store.read() as db:
        return feeds.sources()[cap].page(db, 0, ["/"], 10**6)


class Crash(Exception):
    pass


@pytest.mark.parametrize("cap", CAPS)
def test_crashing_consumer_resumes_with_no_gap_and_no_duplicate(cap: str, hub: Hub, client: TestClient,
                                                                tmp_path: Path) -> None:
    write = WRITERS[cap](hub, client, "/city/district-a")
    headers = auth(token_for(hub, "bigdata", role="city_admin", org="/city"))
    cursor_file = tmp_path / f"{cap}.cursor"
    committed: list[dict[str, Any]] = []  # what the consumer durably processed
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(first: int) -> None:
        try:
            for i in range(first, first + 30):
                if stop.is_set():
                    return
                write(i)
        except BaseException as e:  # noqa: BLE001  reported by the test below
            errors.append(e)

    crash_at = iter([3, 9, 5, 14])  # lines into a page; pages are 4 lines, so some crash on later pages
    budget = [next(crash_at)]

    def handle(changes: list[dict[str, Any]]) -> None:
        page = []
        for c in changes:
            if budget[0] == 0:  # dies mid-page: nothing of this page is kept, the cursor is not saved
                raise Crash
            budget[0] -= 1
            page.append(c)
        committed.extend(page)

    # two writers: on PostgreSQL their transactions overlap, and seqs must still become visible in order
    writers = [threading.Thread(target=writer, args=(first,)) for first in (0, 100)]
    for t in writers:
        t.start()
    crashes = 0
    try:
        while True:
            try:
                consumer.run(client, f"/api/v1/{cap}/feed", cursor_file, handle, limit=4, headers=headers)
            except Crash:
                crashes += 1
                budget[0] = next(crash_at, 10**9)
                continue  # a new process: it knows only the cursor file
            if not any(t.is_alive() for t in writers):
                # one last pass after the writer is done: the end of the feed, nothing new
                if consumer.run(client, f"/api/v1/{cap}/feed", cursor_file, handle, limit=4, headers=headers) == 0:
                    break
    finally:
        stop.set()
        for t in writers:
            t.join()
    assert not errors, errors
    assert crashes == 4
    seqs = [c["seq"] for c in committed]
    expected = all_rows(hub, cap)
    assert len(expected) >= 60
    assert seqs == [int(r["seq"]) for r in expected]  # every change once, in order
    assert all(c["org"] == "/city/district-a" or cap == "registry" for c in committed)
    assert {c["type"] for c in committed} == {
        "registry": {"entity.create", "entity.update"}, "codes": {"code.scanned"},
        "video": {"case.create", "case.review"}, "dialer": {"call.result"}}[cap]
    last = committed[-1]
    assert consumer.load_cursor(cursor_file) == last["cursor"]
    r = client.get(f"/api/v1/{cap}/feed", params={"after": last["cursor"]}, headers=headers)
    assert r.status_code == 200 and r.text == "" and r.headers["X-Feed-Cursor"] == last["cursor"]
    assert r.headers["content-type"].startswith("application/x-ndjson")


@pytest.mark.parametrize("cap", CAPS)
def test_a_district_consumer_sees_only_its_district(cap: str, hub: Hub, client: TestClient) -> None:
    write_a = WRITERS[cap](hub, client, "/city/district-a")
    write_b = WRITERS[cap](hub, client, "/city/district-b")
    for i in range(3):
        write_a(i)
        write_b(100 + i)
    a = auth(token_for(hub, "bigdata-a", role="district_admin", org="/city/district-a"))
    r = client.get(f"/api/v1/{cap}/feed", headers=a)
    assert r.status_code == 200, r.text
    lines = [json.loads(x) for x in r.text.splitlines()]
    by_org = {}
    for row in all_rows(hub, cap):
        by_org.setdefault(row["org"], []).append(int(row["seq"]))
    assert by_org.get("/city/district-b")  # there is something to hide
    assert [x["seq"] for x in lines] == by_org["/city/district-a"]
    assert {x["org"] for x in lines} == {"/city/district-a"}
    # a role without the feed permission gets nothing at all
    issuer = auth(token_for(hub, "issuer-a", role="department_issuer", org="/city/district-a"))
    if cap != "codes":  # department issuers hold codes.*
        assert client.get(f"/api/v1/{cap}/feed", headers=issuer).status_code == 403


@pytest.mark.parametrize("cap", CAPS)
def test_bad_cursor_is_a_422_naming_after(cap: str, hub: Hub, client: TestClient) -> None:
    h = auth(token_for(hub, "bigdata"))
    other = feeds.encode_cursor("codes" if cap != "codes" else "video", 1)
    wrong_seq = base64.urlsafe_b64encode(f"{cap}:1x".encode()).decode()
    for bad in ("garbage!", "12", other, wrong_seq, feeds.encode_cursor(cap, 1) + "!", "=="):
        r = client.get(f"/api/v1/{cap}/feed", params={"after": bad}, headers=h)
        assert r.status_code == 422, (bad, r.text)
        problem = r.json()  # RFC 9457 problem details: the failing fields under `errors`
        assert r.headers["content-type"].startswith("application/problem+json")
        assert problem["errors"][0]["loc"] == ["query", "after"] and problem["errors"][0]["field"] == "after"
    r = client.get(f"/api/v1/{cap}/feed", params={"limit": 0}, headers=h)
    assert r.status_code == 422 and "limit" in r.text
    r = client.get(f"/api/v1/{cap}/feed", params={"after": feeds.encode_cursor(cap, 0)}, headers=h)
    assert r.status_code == 200 and r.headers["X-Feed-Cursor"] == feeds.encode_cursor(cap, 0)


def test_codes_feed_carries_issuance_and_revocation(hub: Hub, client: TestClient) -> None:
    from tests.codes.conftest import City, register_entity

    city = City(hub, client)
    app_id = city.approved_scene()
    issued = city.ok(city.issue(app_id, register_entity(hub)), 201)
    city.ok(city.c.post("/api/v1/codes/revoke", headers=city.issuer, json={"serial": issued["serial"],
                                                                             "reason": "lost"}))
    r = client.get("/api/v1/codes/feed", headers=city.issuer)  # the department's own scope
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["type"] for x in lines] == ["code.issued", "code.revoked"]
    assert lines[0]["data"]["serial"] == lines[1]["data"]["serial"] == issued["serial"]
    assert lines[0]["org"] == "/city/health" and lines[1]["data"]["reason"] == "lost"
    assert "text" not in lines[0]["data"]  # the code itself is not copied into the feed


@pytest.fixture
def mqtt_hub(tmp_path: Path, broker: Broker) -> Iterator[tuple[Hub, TestClient]]:
    hub = build_hub(make_settings(tmp_path, broker))
    try:
        with TestClient(create_app(hub=hub, start_bridge=True)) as client:
            assert hub.publisher.wait_connected(20)  # type: ignore[attr-defined]
            yield hub, client
    finally:
        hub.close()


def test_each_change_is_pushed_on_mqtt(mqtt_hub: tuple[Hub, TestClient], broker: Broker) -> None:
    hub, client = mqtt_hub
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="feed-sub")
    sub.username_pw_set("hub", broker.hub_password)  # type: ignore[attr-defined]
    sub.on_connect = lambda c, *_: c.subscribe(f"{topics.FEED}/#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
    sub.connect("127.0.0.1", broker.cfg.port)
    sub.loop_start()
    try:
        assert subscribed.wait(20)
        writers = {cap: WRITERS[cap](hub, client, "/city/district-a") for cap in CAPS}
        wait_for(lambda: all(c in hub.services["feeds"].cursors for c in CAPS), 20, "the pusher at each feed's end")
        for w in writers.values():
            w(1)
        h = auth(token_for(hub, "bigdata"))
        want = {}
        for cap in CAPS:  # the newest line of each feed, as HTTP serves it
            lines = client.get(f"/api/v1/{cap}/feed", headers=h).text.splitlines()
            want[cap] = lines[-1]
        wait_for(lambda: all(any(p.decode() == want[cap] for _t, p in got) for cap in CAPS), 20, "every push")
        for cap in CAPS:
            topic = next(t for t, p in got if p.decode() == want[cap])
            org = json.loads(want[cap])["org"]
            assert topic == topics.feed(cap, org)
    finally:
        sub.loop_stop()
        sub.disconnect()
