"""Camera agent end to end on real parts: a recorded clip (cv2.VideoWriter, MJPG) -> capture -> classical
detectors -> rules -> edge Link outbox -> real mosquitto (stopped during detection) -> hub bridge -> one
video case with a snapshot; plus capture reconnect with back-off and heartbeat stats."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from central.app import build_hub
from central.bridge.service import Bridge
from central.broker import Broker
from central.video import store as video_store
from edge.camera import agent, synthetic
from edge.camera.capture import Capture
from edge.camera.config import CameraSource
from edge.config import parse_config
from edge.link import Link
from tests.conftest import make_settings
from tests.helpers import wait_for

RULES = {"fire": {"min_area_frac": 0.002, "persist_s": 2}, "smoke": {"min_area_frac": 0.01, "persist_s": 2},
         "crowd": {"min_count": 4, "dwell_s": 3}, "litter": {"static_s": 4},
         "lifecycle": {"end_after_s": 3, "update_every_s": 3, "cooldown_s": 30}}




def test_clip_to_case_through_broker_outage(tmp_path: Path, broker: Broker) -> None:
    hub = build_hub(make_settings(tmp_path, broker))
    clip = synthetic.write_video(str(tmp_path / "fire.avi"), "fire", seconds=8, w=640, h=360)
    _row, cfg = hub.services["devices"].provision("site1", "camera", "gw1", device="gw1")
    cfg["outbox"]["path"] = str(tmp_path / "outbox.db")
    cfg["heartbeat_s"] = 0.5
    cfg["camera"] = {"cameras": [{"id": "cam1", "url": clip, "realtime": False, "max_fps": 5}], "rules": RULES}
    dev = parse_config(cfg)
    hub.start(bridge=True)  # the bridge and the correlator are hub workers
    bridge = hub.worker("mqtt-bridge")
    assert isinstance(bridge, Bridge)
    link = Link(dev).start()
    try:
        assert bridge.wait_connected(10) and link.wait_connected(10)
        broker.stop()  # the detection happens while the broker is down: events wait in the outbox
        stop = threading.Event()
        agent.run(dev, link, stop)  # returns when the (non-looping) file is finished
        assert link.outbox.depth() >= 2  # start + update(s) queued
        stats = link.stats_provider()  # type: ignore[misc]
        assert stats["fps_analysed"] > 0 and stats["frames_dropped"] > 0  # 25 fps file, 5 fps analysis
        broker.start()
        assert link.flush(30), f"outbox still holds {link.outbox.depth()}"

        def one_case() -> Any:
            c = video_store.cases.c
            with hub.store.read() as db:
                rows = [tuple(r) for r in db.run(sa.select(c.kind, c.camera, c.event_count,
                                                           c.snapshot_key.is_not(None), c.status))]
            return rows if rows and rows[0][2] >= 2 else None

        rows = wait_for(one_case, 20, "video case")
        assert len(rows) == 1 and rows[0][:2] == ("fire", "cam1") and rows[0][3] == 1 and rows[0][4] == "new"
        hb = link.heartbeat()
        assert hb.fps_in is not None and hb.frames_dropped is not None
        # Per camera: the file was read to its end; the hub keeps the heartbeat as sent.
        assert hb.cameras is not None and [(c.id, c.state) for c in hb.cameras] == [("cam1", "ended")]
        assert hb.model_version and "ssdlite-pedestrian" in hb.model_version  # crowd "auto" = shipped model
    finally:
        link.stop()
        hub.close()


def test_capture_reconnects_with_backoff(tmp_path: Path) -> None:
    path = tmp_path / "late.avi"
    stop = threading.Event()
    cap = Capture(CameraSource(id="c", url=str(path), realtime=False), stop, backoff=(0.1, 0.4)).start()
    try:
        wait_for(lambda: cap.stats.reconnects >= 2, 5, "retries")
        assert not cap.stats.connected and "cannot open" in cap.stats.last_error
        synthetic.write_video(str(tmp_path / "tmp.avi"), "empty", seconds=1, w=160, h=90)
        (tmp_path / "tmp.avi").rename(path)  # the source comes back
        item = wait_for(lambda: cap.get(0.2), 5, "first frame")
        ts, frame = item
        assert frame.shape == (90, 160, 3) and ts > 0
    finally:
        stop.set()
        cap.join(2)
