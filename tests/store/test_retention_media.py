"""Retention purges in batches what its kinds allow, and the media store keeps files by checksum under
S3-style keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.app import build_hub
from central.bridge import store as bridge_store
from central.devices import store as devices_store
from central.hub import Hub
from central.media import MediaError, MediaStore, media_of
from central.retention import service as retention
from central.settings import RetentionSettings
from central.video import store as video_store
from central.video.service import service_of
from protocol.messages import Event
from tests.conftest import database_url, make_settings

_md = sa.MetaData()
rows = sa.Table("t_retained", _md, sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("ts", sa.Text, nullable=False), sa.Column("pinned", sa.Integer, nullable=False))


def _purge(db: object, cutoff: datetime, limit: int) -> int:
    ids = sa.select(rows.c.id).where(rows.c.ts < cutoff.isoformat(), rows.c.pinned == 0).limit(limit)
    return db.run(sa.delete(rows).where(rows.c.id.in_(ids.scalar_subquery()))).rowcount  # type: ignore[attr-defined]


def test_purge_removes_old_unpinned_rows_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = build_hub(make_settings(tmp_path, retention=RetentionSettings(events_days=30)))
    try:
        assert hub.worker(retention.WORKER) is not None  # a hub worker, started and stopped with the hub
        _md.create_all(hub.store.engine)
        now = datetime(2026, 12, 1, tzinfo=UTC)
        old, new = (now - timedelta(days=40)).isoformat(), (now - timedelta(days=5)).isoformat()
        with hub.store.tx() as db:
            db.run(sa.insert(rows), [{"id": i, "ts": old if i < 50 else new, "pinned": int(i % 10 == 0)}
                                     for i in range(60)])
        monkeypatch.setattr(retention, "purgers", lambda: {"events": _purge})
        monkeypatch.setattr(retention, "BATCH", 7)
        out = hub.services["retention"].run_once(now)
        assert out == {"events": 45}  # 50 old, 5 of them pinned (still needed), in batches of 7
        with hub.store.read() as db:
            left = sorted(db.run(sa.select(rows.c.id)).scalars())
        assert left == [0, 10, 20, 30, 40] + list(range(50, 60))
        assert hub.services["retention"].run_once(now) == {"events": 0}
    finally:
        hub.close()


def test_audit_retention_has_the_legal_floor() -> None:
    with pytest.raises(ValueError, match="audit_days"):
        RetentionSettings(audit_days=30)


def test_media_by_checksum_under_s3_style_keys(tmp_path: Path) -> None:
    m = MediaStore(tmp_path / "media")
    data = b"\xff\xd8jpeg bytes"
    ref = m.put("snapshots", data, "jpg", at=datetime(2026, 12, 2, tzinfo=UTC))
    assert ref.key == f"snapshots/2026/12/02/{hashlib.sha256(data).hexdigest()}.jpg" and ref.size == len(data)
    assert m.put("snapshots", data, "jpg", at=datetime(2026, 12, 2, tzinfo=UTC)) == ref  # stored once
    assert m.get(ref.key, ref.sha256) == data
    m.path(ref.key).write_bytes(b"changed on disk")
    with pytest.raises(MediaError, match="checksum"):
        m.get(ref.key, ref.sha256)
    for bad in ("../etc/passwd", "/etc/passwd", "snapshots/2026/12/02/../../x.jpg"):
        with pytest.raises(MediaError):
            m.get(bad, ref.sha256)


# --- the real purgers: bridge events, their snapshot files, what video still needs -----------------------
NOW = datetime(2026, 12, 1, tzinfo=UTC)
OLD, NEW = NOW - timedelta(days=40), NOW - timedelta(days=5)


def _jpeg(tag: bytes) -> str:
    import base64

    return base64.b64encode(b"\xff\xd8\xff\xe0" + tag).decode()


def _ev(incident: str, tag: bytes | None, minute: int, kind: str = "fire") -> Event:  # one kind: one case
    return Event(kind=kind, camera="c1", incident_id=incident, phase="update", score=0.9,
                 ts=datetime(2026, 10, 20, 8, minute, tzinfo=UTC), snapshot_jpeg_b64=_jpeg(tag) if tag else None)


def _store(hub: Hub, items: list[Event], received: datetime) -> None:
    from central.bridge.service import store_events, write_snapshots

    rows = [("s1", "gw1", e) for e in items]
    snaps = write_snapshots(media_of(hub), rows)
    with hub.store.tx() as db:
        store_events(db, rows, {}, received.isoformat(), snaps)


def _scenario(hub: Hub) -> dict[str, Event]:
    """Old events of an open case (a), of a dismissed case (b: two snapshots, the case keeps the later
    one), one whose file an event still kept shares (c), one the correlator has not consumed (d), and a
    recent one (e, same bytes and date as c: the same file)."""
    evs = {"a": _ev("inc-a", b"A", 1), "b1": _ev("inc-b", b"B1", 2, "litter"), "b2": _ev("inc-b", b"B2", 3, "litter"),
           "c": _ev("inc-c", b"C", 4, "smoke"), "plain": _ev("inc-b", None, 5, "litter")}
    _store(hub, list(evs.values()), OLD)
    svc = service_of(hub)
    assert svc.process_pending() == 5
    cases = {c["kind"] + c["status"]: c["id"] for c in svc.list_cases(["/"])["items"]}
    b = next(c["id"] for c in svc.list_cases(["/"])["items"] if c["event_count"] == 3)
    svc.review(b, "false_positive", "a lamp", actor="test")  # dismissed: closed
    svc.review(cases["smokenew"], "false_positive", "steam", actor="test")
    evs["d"] = _ev("inc-d", b"D", 6, "crowd")
    _store(hub, [evs["d"]], OLD)  # stored, not correlated yet
    evs["e"] = _ev("inc-e", b"C", 4, "smoke")  # same bytes and day as c: one file
    _store(hub, [evs["e"]], NEW)
    return evs


def _left(hub: Hub) -> set[str]:
    with hub.store.read() as db:
        return set(bridge_store.event_ids(db))


def _keys(hub: Hub) -> dict[str, str | None]:
    ev = bridge_store.events.c
    with hub.store.read() as db:
        return {r[0]: r[1] for r in db.run(sa.select(ev.event_id, ev.snapshot_key))}


def test_events_purge_keeps_what_video_needs_and_files_still_referred_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = build_hub(make_settings(tmp_path, inline_consumers=False,
                                  retention=RetentionSettings(events_days=30, heartbeats_days=1)))
    try:
        evs = _scenario(hub)
        keys = _keys(hub)
        media = media_of(hub)
        case_key = keys[evs["b2"].event_id]
        assert all(media.path(k).is_file() for k in keys.values() if k)
        assert keys[evs["c"].event_id] == keys[evs["e"].event_id]  # content-addressed: one file
        _heartbeat(hub, OLD)
        monkeypatch.setattr(retention, "BATCH", 2)  # 4 rows to go: two full batches, then an empty one
        assert hub.services["retention"].run_once(NOW)["events"] == 4
        ids = {k: e.event_id for k, e in evs.items()}
        assert _left(hub) == {ids["a"], ids["d"], ids["e"]}  # open case, not yet correlated, recent
        assert media.path(keys[ids["b1"]]).exists() is False  # nobody refers to it any more
        assert media.path(case_key).is_file()  # the dismissed case's own snapshot
        assert media.path(keys[ids["c"]]).is_file()  # e (kept) refers to the same file
        assert media.path(keys[ids["a"]]).is_file() and media.path(keys[ids["d"]]).is_file()
        b = service_of(hub).list_cases(["/"], status="dismissed")["items"]
        assert {c["has_snapshot"] for c in b} == {True}
        assert all(service_of(hub).snapshot(c["id"])[:2] == b"\xff\xd8" for c in b)  # still served
        with hub.store.read() as db:  # the latest heartbeat is the device's only one: it stays
            assert devices_store.get(db, "s1/gw1")["last_hb_at"] == OLD.isoformat()
        assert hub.services["retention"].run_once(NOW)["events"] == 0

        # Once correlated, and once its case is closed, an event may go too.
        assert service_of(hub).process_pending() == 2
        d_case = next(c["id"] for c in service_of(hub).list_cases(["/"], status="new")["items"]
                      if c["first_ts"] == evs["d"].ts.isoformat())
        service_of(hub).review(d_case, "false_positive", "test", actor="test")
        assert hub.services["retention"].run_once(NOW)["events"] == 1
        assert _left(hub) == {ids["a"], ids["e"]}
    finally:
        hub.close()


def _heartbeat(hub: Hub, at: datetime) -> None:
    with hub.store.tx() as db:
        devices_store.insert(db, {"id": "s1/gw1", "site": "s1", "device": "gw1", "kind": "camera", "org_path": "/city",
                                  "username": "dev-gw1", "created_at": at.isoformat()})
        devices_store.set_heartbeat(db, "s1/gw1", at.isoformat(), "{}", 0, 0)


def test_purge_deletes_at_most_limit_rows_per_call(tmp_path: Path) -> None:
    hub = build_hub(make_settings(tmp_path, inline_consumers=False))
    try:
        _store(hub, [_ev(f"i{i}", None, i) for i in range(7)], OLD)
        with hub.store.tx() as db:
            video_store.move_cursor(db, bridge_store.max_seq(db))  # consumed (no case: nothing keeps them)
        with hub.store.tx() as db:
            assert bridge_store.purge_events(db, NOW - timedelta(days=30), 3) == 3
        assert len(_left(hub)) == 4
        with hub.store.tx() as db:
            assert bridge_store.purge_events(db, NOW - timedelta(days=50), 3) == 0  # none that old
    finally:
        hub.close()


def test_the_purge_worker_runs_from_hub_start(tmp_path: Path) -> None:
    from tests.helpers import wait_for

    hub = build_hub(make_settings(tmp_path, inline_consumers=False, retention=RetentionSettings(events_days=30)))
    try:
        old = datetime.now(UTC) - timedelta(days=40)
        _store(hub, [_ev("x", b"X", 1)], old)
        with hub.store.tx() as db:
            video_store.move_cursor(db, bridge_store.max_seq(db))
        key = next(iter(_keys(hub).values()))
        assert key is not None and media_of(hub).path(key).is_file()
        hub.start()
        wait_for(lambda: not _left(hub), 30, "the retention worker's first pass")
        wait_for(lambda: not media_of(hub).path(key).exists(), 10, "the purged event's file to go")
        # the count follows the batch's commit and file deletion: wait for it rather than race the worker
        wait_for(lambda: hub.services["retention"].purged.get("events") == 1, 10, "the purge to be counted")
    finally:
        hub.close()


def test_a_media_dir_that_cannot_be_written_stops_the_hub(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(MediaError, match=r"media_dir: .*a-file/media is not a writable directory"):
        build_hub(make_settings(tmp_path, media_dir=blocker / "media"))


def test_hub_serve_stops_at_start_naming_an_unwritable_media_dir(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from central.cli import app

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {"CITYBRAIN_DATA_DIR": str(tmp_path / "hub"), "CITYBRAIN_MEDIA_DIR": str(blocker / "media"),
           "CITYBRAIN_MQTT__ENABLED": "false"}
    if (url := database_url(migrated=True)) is not None:
        env["CITYBRAIN_DATABASE_URL"] = url
    r = CliRunner().invoke(app, ["serve", "--port", "1"], env=env)
    assert r.exit_code == 2, r.output
    assert "a-file/media is not a writable directory" in r.output and "Traceback" not in r.output
