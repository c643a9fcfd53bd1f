"""A hub database the pre-Core store made (tests/data/legacy) upgrades in place for bridge, devices and video:
the old rows read back through the services, the correlator's cursor still points at the same event (events
got an explicit `seq` equal to the old rowid), and new ingest, correlation and device writes work."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.app import build_hub
from central.bridge import store as bridge_store
from central.bridge.service import store_events
from central.devices import store as devices_store
from central.hub import Hub
from central.video import store as video_store
from central.video.service import service_of
from protocol.messages import Event
from tests.legacy import legacy_settings

pytestmark = pytest.mark.sqlite_only(reason="the legacy store only made SQLite databases")

# The fixture's events in their old rowid order (tests/data/legacy/hub_v13.sql).
FIRST_EVENT, LAST_EVENT = "8018c2e7191c4635a1e06ce955cdd313", "913f3a1c8e034f6699bf2250969cb989"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = build_hub(legacy_settings(tmp_path))
    yield h
    h.close()


def test_events_keep_their_feed_order_and_the_cursor_its_place(hub: Hub) -> None:
    with hub.store.read() as db:
        ids = bridge_store.event_ids(db)
        assert len(ids) == 7 and ids[0] == FIRST_EVENT and ids[-1] == LAST_EVENT
        assert bridge_store.max_seq(db) == 7 and video_store.cursor_position(db) == 7
        indexes = {ix["name"] for ix in sa.inspect(db.sa).get_indexes("events")}
        uniques = [u["column_names"] for u in sa.inspect(db.sa).get_unique_constraints("events")]
        snaps = db.all(sa.select(bridge_store.events.c.snapshot).where(bridge_store.events.c.snapshot.is_not(None)))
    assert {"idx_events_site_device_ts", "idx_events_kind_ts"} <= indexes and ["event_id"] in uniques
    assert len(snaps) == 4 and all(bytes(r["snapshot"])[:2] == b"\xff\xd8" for r in snaps)
    assert service_of(hub).process_pending() == 0  # everything old was correlated by the old hub


def test_old_cases_read_back_and_new_events_correlate(hub: Hub) -> None:
    svc = service_of(hub)
    listed = svc.list_cases(["/"])
    assert listed["total"] == 5
    c4 = svc.case_detail(4)
    assert (c4["status"], c4["org"], c4["event_count"], c4["cameras"]) == ("resolved", "/city/district-a", 2,
                                                                            ["cam-01/north"])
    assert [e["phase"] for e in c4["events"]] == ["start", "update"]
    assert [(a["channel"], a["status"]) for a in c4["alerts"]] == [("mqtt", "sent")]
    assert svc.snapshot(4)[:2] == b"\xff\xd8"
    assert [r["department"] for r in svc.routes(["/"])] == ["FIRE"]
    fb = {f["kind"]: f for f in svc.feedback(["/"])}
    assert fb["litter"]["false_positive"] == 1 and fb["litter"]["reasons"][0]["case_id"] == 5
    assert svc.stats(["/city/district-a"])["by_status"] == {"dismissed": 1, "resolved": 1}

    # New events: one more of the old incident (joins case 4), one of a new incident (a new case).
    old = Event(kind="fire", phase="update", camera="north", incident_id="inc-wensan-1", score=0.9)
    new = Event(kind="smoke", phase="start", camera="south", incident_id="inc-wensan-2", score=0.7)
    with hub.store.tx() as db:
        assert len(store_events(db, [("wensan", "cam-01", old), ("wensan", "cam-01", new)], {},
                                datetime.now(UTC).isoformat(), {})) == 2
    assert svc.process_pending() == 2
    with hub.store.read() as db:
        assert bridge_store.max_seq(db) == 9 and video_store.cursor_position(db) == 9
    assert svc.case(4)["event_count"] == 3
    fresh = svc.list_cases(["/"], kind="smoke")["items"]
    assert len(fresh) == 1 and fresh[0]["id"] == 6 and fresh[0]["org"] == "/city/district-a"
    assert svc.review(6, "confirmed", "", actor="test")["status"] == "reviewed"


def test_devices_and_bridge_rows_read_back_and_take_writes(hub: Hub) -> None:
    devices = hub.services["devices"]
    assert [d["id"] for d in devices.list(None)] == ["demo-site/demo-gate-camera", "demo-site/demo-scanner",
                                                     "wensan/cam-01", "wensan/scan-01"]
    assert [d["id"] for d in devices.list(["/city/district-a"])] == ["wensan/cam-01", "wensan/scan-01"]
    assert devices.site_orgs("wensan") == ["/city/district-a"]
    assert len(devices.events("wensan/cam-01")) == 3
    with hub.store.read() as db:
        assert [r["reason"] for r in bridge_store.rejects(db)] == ["malformed_json", "unknown_device"]
    now = datetime.now(UTC).isoformat()
    with hub.store.tx() as db:
        devices_store.ack_command(db, "dca19b22206e49b18f66def6bca66e95", now, True, "done")
        devices_store.set_heartbeat(db, "demo-site/demo-scanner", now, "{}", 3, 1)
        bridge_store.insert_rejects(db, [(now, "city/v1/x/y/event/fire", "schema", "bad")])
    with hub.store.read() as db:
        cmd = db.first(sa.select(devices_store.device_commands).where(
            devices_store.device_commands.c.cmd_id == "dca19b22206e49b18f66def6bca66e95"))
        assert cmd is not None and (cmd["acked_at"], cmd["ok"], cmd["detail"]) == (now, 1, "done")
        assert [r["id"] for r in bridge_store.rejects(db)] == [3, 2, 1]
    assert devices.get("demo-site/demo-scanner")["queue_depth"] == 3  # type: ignore[index]
    row, _cfg = devices.provision("wensan", "camera", "gate", device="cam-02")
    assert row["org_path"] == "/city/district-a"  # the site's legacy claim holds


def test_snapshot_blobs_are_served_then_moved_into_files(hub: Hub) -> None:
    """An upgraded database keeps its snapshots: served from the BLOB until the hub's media-move worker
    (started by Hub.start) has written each into the media store, then from the file; the BLOB is gone."""
    from central.media import media_of
    from tests.helpers import wait_for

    ev, cs = bridge_store.events.c, video_store.cases.c
    with hub.store.read() as db:
        blobs = {r[0]: bytes(r[1]) for r in db.run(sa.select(ev.event_id, ev.snapshot).where(ev.snapshot.is_not(None)))}
        case_blob = bytes(db.scalar(sa.select(cs.snapshot).where(cs.id == 4)))
    assert len(blobs) == 4 and case_blob[:2] == b"\xff\xd8"
    svc = service_of(hub)
    assert svc.snapshot(4) == case_blob and svc.case(4)["has_snapshot"]  # before the move: the BLOB

    hub.start()

    def moved() -> bool:
        with hub.store.read() as db:
            return not db.scalar(sa.select(sa.func.count()).select_from(bridge_store.events)
                                 .where(ev.snapshot.is_not(None))) and \
                not db.scalar(sa.select(sa.func.count()).select_from(video_store.cases).where(cs.snapshot.is_not(None)))

    wait_for(moved, 30, "the snapshot BLOBs moved into files")
    media = media_of(hub)
    with hub.store.read() as db:
        rows = db.all(sa.select(ev.event_id, ev.snapshot_key, ev.snapshot_sha256).where(ev.event_id.in_(blobs)))
        case_ref = db.first(sa.select(cs.snapshot_key, cs.snapshot_sha256).where(cs.id == 4))
    assert len(rows) == 4
    for r in rows:  # each file holds the very bytes the BLOB held, under a key dated by the row
        assert r["snapshot_key"].startswith("snapshots/") and media.get(r["snapshot_key"], r["snapshot_sha256"]) \
            == blobs[r["event_id"]]
    assert case_ref is not None and media.path(case_ref["snapshot_key"]).is_file()
    assert svc.snapshot(4) == case_blob  # now from the file
