"""The hub owns its workers: start/stop cycles with events arriving lose nothing and leave no thread
behind, and a closed store refuses work instead of touching freed SQLite handles."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from central.app import build_hub
from central.bridge import store as bridge_store
from central.broker import Broker
from central.hub import Hub, LoopWorker
from central.store import Store, StoreClosed
from central.video import store as video_store
from protocol import messages, topics
from tests.conftest import database_url, make_settings
from tests.helpers import wait_for


def _events(hub: Hub) -> int:
    with hub.store.read() as db:
        return int(db.scalar(sa.select(sa.func.count(sa.distinct(bridge_store.events.c.event_id)))))


def _rows(hub: Hub) -> int:
    with hub.store.read() as db:
        return bridge_store.count_events(db)


def _correlated_all(hub: Hub) -> bool:
    """The correlator's cursor is at the newest stored event."""
    with hub.store.read() as db:
        return video_store.cursor_position(db) == bridge_store.max_seq(db) > 0


def _hub_threads(names: set[str]) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in names and t.is_alive()]


def test_100_start_stop_cycles_with_events_arriving(tmp_path: Path, broker: Broker) -> None:
    hub = build_hub(make_settings(tmp_path, broker))
    _row, cfg = hub.services["devices"].provision("site1", "camera", "gw1", device="gw1")
    names = {w.name for w in hub.workers} | {"mqtt-bridge", "bridge-writer", "bridge-connected"}
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="gw1-raw")
    pub.username_pw_set(cfg["mqtt"]["username"], cfg["mqtt"]["password"])
    pub.connect("127.0.0.1", cfg["mqtt"]["port"])
    pub.loop_start()
    n = 1500
    sent = threading.Event()

    def produce() -> None:  # QoS 1 events the whole time the hub goes up and down
        infos = []
        for i in range(n):
            ev = messages.Event(kind="litter", count=i % 7, camera="cam1")
            infos.append(pub.publish(topics.event("site1", "gw1", "litter"), ev.model_dump_json(), qos=1))
            if i % 15 == 0:
                time.sleep(0.01)
        for info in infos:
            info.wait_for_publish(30)
        sent.set()

    producer = threading.Thread(target=produce, name="test-producer", daemon=True)
    try:
        # The broker holds the hub's persistent session while it is down; start once so it exists.
        hub.start(bridge=True)
        assert hub.publisher.wait_connected(20)  # type: ignore[attr-defined]
        hub.stop()
        producer.start()
        for _ in range(100):
            hub.start(bridge=True)
            hub.publisher.wait_connected(5)  # type: ignore[attr-defined]
            time.sleep(0.01)
            hub.stop()
            assert not _hub_threads(names), _hub_threads(names)
        assert sent.wait(60), "producer did not finish"
        hub.start(bridge=True)
        wait_for(lambda: _events(hub) >= n, 60, f"all {n} events stored")
        time.sleep(0.3)
        assert _events(hub) == n and _rows(hub) == n  # nothing lost, nothing stored twice
        # The correlator (a hub worker) caught up with every stored event.
        wait_for(lambda: _correlated_all(hub),
                 30, "correlator at the last event")
    finally:
        pub.loop_stop()
        pub.disconnect()
        hub.close()
    assert not hub.running
    assert not _hub_threads(names), f"threads outlived the hub: {_hub_threads(names)}"


def test_no_worker_runs_before_start_or_after_stop(tmp_path: Path) -> None:
    hub = build_hub(make_settings(tmp_path))
    names = {w.name for w in hub.workers}
    assert "video-correlator" in names
    assert not _hub_threads(names)  # building a hub starts nothing
    svc = hub.services["video"]
    svc.kick()  # a hook firing on a stopped hub starts no thread
    assert not _hub_threads(names)
    hub.start()
    assert set(_hub_threads(names)) == names
    hub.close()
    assert not _hub_threads(names)
    with pytest.raises(StoreClosed), hub.store.read():
        pass
    with pytest.raises(StoreClosed):
        with hub.store.tx():
            pass


def test_worker_survives_a_failing_step_and_stops_on_time() -> None:
    calls: list[int] = []

    def step() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")
        return False

    w = LoopWorker("test-loop", step, interval_s=0.05, error_backoff_s=0.01)
    w.start()
    wait_for(lambda: len(calls) >= 4, 20, "steps after two failures")
    assert w.errors == 2 and w.alive
    w.stop(5)
    assert not w.alive


_md = sa.MetaData()
_t = sa.Table("t_close", _md, sa.Column("x", sa.Integer))


@pytest.mark.both_backends
def test_close_waits_for_a_transaction_and_leaves_live_threads_connections_alone(tmp_path: Path) -> None:
    url = database_url() or tmp_path / "s.db"
    store = Store(url)
    _md.create_all(store.engine)
    in_tx, release, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with store.tx() as db:
                db.run(sa.insert(_t).values(x=1))
                in_tx.set()
                release.wait(20)
                db.run(sa.insert(_t).values(x=2))  # still its own, open connection
            # The store closed meanwhile: new work is refused with an error, not a crash.
            try:
                with store.read():
                    pass
            except StoreClosed as e:
                errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert in_tx.wait(20)
    closer = threading.Thread(target=store.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive()  # close() waits for the transaction under way
    release.set()
    closer.join(20)
    assert not closer.is_alive() and done.wait(20)
    t.join(20)
    assert len(errors) == 1 and isinstance(errors[0], StoreClosed)
    check = Store(url)
    with check.read() as db:
        assert list(db.run(sa.select(_t.c.x).order_by(_t.c.x)).scalars()) == [1, 2]  # committed, not torn
    check.close()


@pytest.mark.both_backends
def test_a_stopping_correlator_commits_the_chunk_it_finished_and_goes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A correlator pass over a long backlog looks at `stopping` between chunks, so Hub.stop() never waits
    for a whole 1,000-event pass (over its 10 s stop timeout on a loaded machine); the rest waits for the
    next pass, none skipped."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from central.bridge.service import store_events
    from central.video import service as video_service

    store = Store(database_url() or tmp_path / "c.db")
    store.migrate()
    try:
        monkeypatch.setattr(video_service, "record", lambda db, **kw: 0)  # audit is iam's: not under test
        video = video_service.VideoService(SimpleNamespace(store=store, settings=SimpleNamespace(  # type: ignore[arg-type]
            public_url="http://hub.test")))
        t0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
        n = video_service.CHUNK * 2 + 50
        with store.tx() as db:
            store_events(db, [("s1", "gw1", messages.Event(kind="litter", camera="cam1", incident_id=f"i{i}",
                                                           ts=t0 + timedelta(seconds=i), count=1))
                              for i in range(n)], {}, datetime.now(UTC).isoformat(), {})
        asked: list[int] = []
        assert video.process_pending(stopping=lambda: not asked.append(1)) == video_service.CHUNK
        assert len(asked) == 1
        with store.read() as db:
            seqs = [int(r["seq"]) for r in bridge_store.events_after(db, 0, n)]
            assert video_store.cursor_position(db) == seqs[video_service.CHUNK - 1]
        assert video.process_pending() == n - video_service.CHUNK
        with store.read() as db:
            assert video_store.cursor_position(db) == seqs[-1]
            assert db.scalar(sa.select(sa.func.count()).select_from(video_store.case_events)) == n
    finally:
        store.close()
