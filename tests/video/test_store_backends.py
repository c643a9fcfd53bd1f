"""Bridge, devices and video stores on both backends, without a hub: events stored once in feed order, the
correlator's cursor never skipping an event committed late by a concurrent writer, two correlators never
taking the same events, the case workflow and its reads, and the device queries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from central.bridge import store as bridge_store
from central.bridge.service import store_events, write_snapshots
from central.devices import store as devices_store
from central.media import MediaStore
from central.store import Store
from central.video import service as video_service
from central.video import store as video_store
from protocol.messages import Event
from tests.conftest import database_url

pytestmark = pytest.mark.both_backends

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # bytes of every value: bytea round trip
T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url() or tmp_path / "x.db")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def video(store: Store, monkeypatch: pytest.MonkeyPatch) -> video_service.VideoService:
    # The audit log is iam's and not yet on PostgreSQL: these tests are about video's own tables.
    monkeypatch.setattr(video_service, "record", lambda db, **kw: 0)
    hub = SimpleNamespace(store=store, settings=SimpleNamespace(public_url="http://hub.test"))
    return video_service.VideoService(hub)  # type: ignore[arg-type]


def _ev(i: int, **kw: Any) -> Event:
    return Event(kind=kw.pop("kind", "fire"), camera=kw.pop("camera", "cam1"), incident_id=kw.pop("incident", f"i{i}"),
                 ts=T0 + timedelta(seconds=i), score=0.5, count=i % 5, **kw)


def _store(store: Store, items: list[tuple[str, str, Event]], media: MediaStore | None = None) -> int:
    snaps = write_snapshots(media, items) if media is not None else {}
    with store.tx() as db:
        return len(store_events(db, items, {}, datetime.now(UTC).isoformat(), snaps))


def _correlated(store: Store) -> list[str]:
    with store.read() as db:
        return list(db.run(sa.select(video_store.case_events.c.event_id)).scalars())


def test_events_are_stored_once_in_feed_order_with_their_snapshot(store: Store, tmp_path: Path) -> None:
    import base64

    media = MediaStore(tmp_path / "media")
    evs = [_ev(i) for i in range(5)]
    evs[2].snapshot_jpeg_b64 = base64.b64encode(JPEG).decode()
    assert _store(store, [("s1", "gw1", e) for e in evs], media) == 5
    e9 = _ev(9)
    assert _store(store, [("s1", "gw1", evs[1]), ("s1", "gw1", evs[1]), ("s1", "gw1", e9)], media) == 1
    with store.read() as db:
        assert bridge_store.event_ids(db) == [e.event_id for e in evs] + [e9.event_id]
        assert bridge_store.count_events(db) == 6 and bridge_store.count_events(db, "s1", "gw1") == 6
        rows = bridge_store.events_after(db, 0, 100)
        assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
        # the JPEG is a file (dated by the event), the row its reference; no BLOB any more
        assert rows[2]["snapshot_key"].startswith("snapshots/2025/05/01/") and rows[2]["snapshot"] is None
        assert media.get(rows[2]["snapshot_key"], rows[2]["snapshot_sha256"]) == JPEG
        assert rows[0]["snapshot_key"] is None and rows[0]["snapshot_sha256"] is None
        assert bridge_store.events_after(db, rows[3]["seq"], 100) == rows[4:]


def test_correlator_misses_nothing_while_two_writers_commit_out_of_order(
        store: Store, video: video_service.VideoService) -> None:
    """Two writers whose transactions overlap (each holds its batch uncommitted a while): a correlator
    polling meanwhile must not move its cursor past an event a slower writer commits later."""
    per, batches = 6, 8
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(name: str, hold_s: float) -> None:
        try:
            for b in range(batches):
                with store.tx() as db:
                    store_events(db, [(name, "gw1", _ev(b * per + i, incident=f"{name}-{b}-{i}"))
                                      for i in range(per)], {}, datetime.now(UTC).isoformat(), {})
                    time.sleep(hold_s)  # uncommitted while the other writer commits later seqs
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def correlator() -> None:
        while not stop.is_set():
            try:
                video.process_pending(limit=5)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=writer, args=a) for a in (("sa", 0.08), ("sb", 0.005))]
    c = threading.Thread(target=correlator)
    c.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    c.join(60)
    assert not errors, errors
    while video.process_pending() > 0:
        pass
    done = _correlated(store)
    with store.read() as db:
        stored = bridge_store.event_ids(db)
        assert video_store.cursor_position(db) == bridge_store.max_seq(db)
    assert len(stored) == 2 * per * batches and sorted(done) == sorted(stored)


def test_two_correlators_never_take_the_same_events(store: Store, video: video_service.VideoService) -> None:
    other = video_service.VideoService(video.hub)  # another process's correlator: its own in-process lock
    taken: dict[str, list[str]] = {"a": [], "b": []}
    for svc, who in ((video, "a"), (other, "b")):
        real = svc.ingest

        def counting(db: Any, site: str, device: str, ev: Event, snap: Any = None, real: Any = real,
                     who: str = who) -> int | None:
            taken[who].append(ev.event_id)
            time.sleep(0.002)  # the claim is held while correlating
            return real(db, site, device, ev, snap)

        svc.ingest = counting  # type: ignore[method-assign]
    _store(store, [("s1", "gw1", _ev(i, incident=f"x{i}")) for i in range(120)])

    def run(svc: video_service.VideoService) -> None:
        while svc.process_pending(limit=10) or _pending(store):
            pass

    ts = [threading.Thread(target=run, args=(s,)) for s in (video, other)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not set(taken["a"]) & set(taken["b"])
    assert len(taken["a"]) + len(taken["b"]) == 120 and len(_correlated(store)) == 120


def _pending(store: Store) -> bool:
    with store.read() as db:
        return video_store.cursor_position(db) < bridge_store.max_seq(db)


def test_case_workflow_and_reads(store: Store, video: video_service.VideoService) -> None:
    video.set_site("s1", "/city/district_a", actor="t")
    video.set_camera("s1", "gw1", "cam1", 30.001, 120.001, ["gw2/cam2"], actor="t")
    video.set_camera("s1", "gw1", "cam1", 30.002, 120.002, ["gw2/cam2"], actor="t")  # upsert
    rid = video.add_route("/city/district_a", "fire", "FIRE", None, None, True, 5.0, 60.0, actor="t")["id"]
    _store(store, [("s1", "gw1", _ev(1, phase="start", incident="f1")),
                   ("s1", "gw2", _ev(2, camera="cam2", incident="f2", phase="end")),  # adjacent camera: joins
                   ("s1", "gw1", _ev(3, kind="litter", incident="l1"))])
    assert video.process_pending() == 3
    items = video.list_cases(["/city/district_a"])["items"]
    fire = next(c for c in items if c["kind"] == "fire")
    assert fire["cameras"] == ["gw1/cam1", "gw2/cam2"] and fire["event_count"] == 2 and fire["live"] is False
    assert (fire["lat"], fire["lon"], fire["org"], fire["score"]) == (30.002, 120.002, "/city/district_a", 0.5)
    assert fire["last_ts"] == (T0 + timedelta(seconds=2)).isoformat() and fire["peak_count"] == 2
    assert video.list_cases(["/city/districtXa"])["total"] == 0  # '_' is not a wildcard
    assert video.list_cases(["/"], kind="fire", status="new")["total"] == 1
    litter = next(c for c in items if c["kind"] == "litter")["id"]

    video.review(fire["id"], "confirmed", "", actor="op")
    out = video.dispatch(fire["id"], actor="op")
    assert out["status"] == "dispatched" and out["department"] == "FIRE" and out["route_id"] == rid
    assert video.acknowledge(fire["id"], actor="op")["status"] == "acknowledged"
    assert video.resolve(fire["id"], actor="op", note="out")["status"] == "resolved"
    video.review(litter, "false_positive", "shadow", actor="op")
    detail = video.case_detail(fire["id"])
    assert [h["action"] for h in detail["history"]] == ["video.case.create", "video.case.review",
                                                        "video.case.dispatch", "video.case.acknowledge",
                                                        "video.case.resolve"]
    assert [a["channel"] for a in detail["alerts"]] == ["mqtt"] and len(detail["events"]) == 2
    st = video.stats(["/"])
    assert st["total"] == 2 and st["by_kind"] == {"fire": 1, "litter": 1} and st["false_positive_rate"] == 0.5
    assert st["by_hour"] == {"2025-05-01T08": 2} and st["by_hour_of_day"] == {"8": 2}
    assert st["by_status"] == {"dismissed": 1, "resolved": 1}
    cells = video.heatmap(["/"], cell_deg=0.01)["cells"]
    assert [c["count"] for c in cells] == [2]
    fb = {f["kind"]: f for f in video.feedback(["/"])}
    assert fb["fire"]["confirmed"] == 1 and fb["litter"]["false_positive"] == 1
    assert fb["litter"]["reasons"][0]["reason"] == "shadow"
    # A second verdict on the same camera + rule adds to its counts.
    _store(store, [("s1", "gw1", _ev(4000, kind="litter", incident="l2"))])
    video.process_pending()
    nxt = video.list_cases(["/"], kind="litter", status="new")["items"][0]["id"]
    video.review(nxt, "false_positive", "rain", actor="op")
    fb = {f["kind"]: f for f in video.feedback(["/"])}
    assert fb["litter"]["false_positive"] == 2 and [r["reason"] for r in fb["litter"]["reasons"]] == ["shadow", "rain"]
    video.delete_route(rid, actor="t")
    assert video.routes(["/"]) == []


def test_device_queries(store: Store) -> None:
    now = datetime.now(UTC).isoformat()
    with store.tx() as db:
        for site, dev, org in (("s1", "a", "/city/d_1"), ("s1", "b", "/city/d_1/x"), ("s2", "c", "/city/dX1")):
            devices_store.insert(db, {"id": f"{site}/{dev}", "site": site, "device": dev, "kind": "camera",
                                      "name": dev, "org_path": org, "username": f"u-{dev}", "created_at": now})
        devices_store.claim_site(db, "s1", "/city/d_1", "op", now)
        devices_store.claim_site(db, "s1", "/city/other", "op2", now)  # the first claim holds
        devices_store.set_status(db, "s1/a", "online", now)
        devices_store.set_heartbeat(db, "s1/a", now, '{"queue_depth": 4}', 4, 1)
        devices_store.record_command(db, {"cmd_id": "c1", "device_id": "s1/a", "action": "reboot", "args": "{}",
                                          "sent_at": now})
        devices_store.ack_command(db, "c1", now, False, "busy")
    evs = [_ev(i) for i in range(3)]
    _store(store, [("s1", "a", e) for e in evs])
    with store.read() as db:
        assert devices_store.site_claim(db, "s1") == "/city/d_1" and devices_store.site_claim(db, "s9") is None
        assert devices_store.video_site_org(db, "s1") is None
        assert [d["id"] for d in devices_store.list_devices(db, ["/city/d_1"])] == ["s1/a", "s1/b"]
        assert devices_store.list_devices(db, []) == [] and len(devices_store.list_devices(db, None)) == 3
        a = devices_store.get(db, "s1/a")
        assert a is not None and (a["status"], a["queue_depth"], a["revoked"]) == ("online", 4, 0)
        cmd = db.first(sa.select(devices_store.device_commands))
        assert cmd is not None and (cmd["ok"], cmd["detail"]) == (0, "busy")
        recent = devices_store.recent_events(db, "s1/a", 2)
        assert len(recent) == 2 and {r["event_id"] for r in recent} <= {e.event_id for e in evs}
    with store.tx() as db:
        video_store.set_site(db, "s1", "/city/video", now, video_service.OPEN)
    with store.read() as db:
        assert devices_store.video_site_org(db, "s1") == "/city/video"


def test_scans_and_rejects(store: Store) -> None:
    rec = ("r1", "b1", "s1", "t1", "SER1", "SOCIAL", "dept", "valid", None, T0.isoformat(), "gate")
    with store.tx() as db:
        bridge_store.insert_scan_batch(db, ("b1", "s1", "t1", "now", 2), [rec, (*("r2",), *rec[1:])])
        bridge_store.insert_scan_batch(db, ("b1", "s1", "t1", "now", 2), [rec])  # a re-send: ignored
        bridge_store.insert_rejects(db, [("now", "t/a", "schema", "x"), ("now", "t/b", "oversize", "y"),
                                         ("now", "t/c", "schema", "z")])
    with store.read() as db:
        assert bridge_store.existing_batches(db, ["b1", "b2"]) == {"b1"}
        assert bridge_store.existing_scan_ids(db, ["r1", "r2", "r3"]) == {"r1", "r2"}
        assert bridge_store.reject_counts(db) == {"schema": 2, "oversize": 1}
        assert [r["topic"] for r in bridge_store.rejects(db, 2)] == ["t/c", "t/b"]


def test_an_event_failing_in_the_database_is_rolled_back_alone(store: Store,
                                                               video: video_service.VideoService) -> None:
    """A statement failing mid-event (PostgreSQL then refuses the rest of the transaction until the
    savepoint is rolled back) undoes that event only; the events around it and the cursor move commit."""
    evs = [_ev(i, incident=f"k{i}") for i in range(3)]
    real = video.ingest

    def failing(db: Any, site: str, device: str, ev: Event, snap: Any = None) -> int | None:
        case_id = real(db, site, device, ev, snap)
        if ev.event_id == evs[1].event_id:  # its row again: a primary-key violation in the database
            video_store.insert_case_event(db, {"event_id": ev.event_id, "case_id": case_id, "site": site,
                                               "device": device, "incident_id": None, "camera": None,
                                               "phase": "instant", "ts": "x", "score": None, "count": None})
        return case_id

    video.ingest = failing  # type: ignore[method-assign]
    _store(store, [("s1", "gw1", e) for e in evs])
    assert video.process_pending() == 3
    assert sorted(_correlated(store)) == sorted([evs[0].event_id, evs[2].event_id])
    assert not _pending(store)
