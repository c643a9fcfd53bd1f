"""The camera-gateway loop: one capture thread and one analysis thread per camera, events to the link.

`run(cfg, link, stop)` returns when `stop` is set, or when every source is a finished (non-looping)
file. Load shedding: each analyser takes only the newest frame and at most `max_fps` per camera, so
under load frames are skipped (counted) instead of queueing up latency.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from edge.camera.capture import Capture, set_rtsp_transport
from edge.camera.config import CameraSection, CameraSource
from edge.camera.detectors.onnx import OnnxSession
from edge.camera.pipeline import CameraPipeline
from protocol.messages import Event

log = logging.getLogger("citybrain.edge.camera")


class EventSink(Protocol):
    def publish_event(self, event: Event) -> None: ...


class CameraWorker:
    def __init__(self, section: CameraSection, cam: CameraSource, sink: EventSink, stop: threading.Event,
                 onnx: OnnxSession | None) -> None:
        self.cam = cam
        self.sink = sink
        self.stop = stop
        self.capture = Capture(cam, stop, (section.reconnect_min_s, section.reconnect_max_s),
                               (section.open_timeout_s, section.read_timeout_s))
        self.pipeline = CameraPipeline(section, cam, onnx)
        self.skipped = 0  # rate-limited frames
        self.errors = 0
        self.cpu_s = 0.0  # CPU time of the analysis thread (detectors run in it: ORT uses 1 thread)
        self._thread = threading.Thread(target=self._run, name=f"analyse-{cam.id}", daemon=True)

    def start(self) -> None:
        self.capture.start()
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        self.capture.join(timeout)

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            self._loop()
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _loop(self) -> None:
        min_dt = 1.0 / self.cam.max_fps
        last = -1e18
        cpu0 = time.thread_time()
        while not self.stop.is_set():
            self.cpu_s = time.thread_time() - cpu0
            item = self.capture.get(0.5)
            if item is None:
                if self.capture.ended.is_set():
                    return
                continue
            ts, frame = item
            if ts - last < min_dt * 0.999:
                self.skipped += 1
                continue
            last = ts
            try:
                events = self.pipeline.process(frame, ts)
            except Exception:  # one bad frame must not kill the camera loop
                self.errors += 1
                log.exception("camera %s: analysis failed", self.cam.id)
                continue
            for ev in events:
                try:
                    self.sink.publish_event(ev)
                except Exception:
                    self.errors += 1
                    log.exception("camera %s: publish failed for %s", self.cam.id, ev.event_id)


class AgentStats:
    """fps and CPU over the interval since the previous call; drops cumulative (goes into each heartbeat),
    in total and per camera (`cameras`: state, fps in/analysed, CPU %, reconnects, how long it is down)."""

    def __init__(self, workers: list[CameraWorker]) -> None:
        self.workers = workers
        self._t = time.monotonic()
        self._prev: dict[str, tuple[int, int, float]] = {w.cam.id: (0, 0, 0.0) for w in workers}
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            dt = max(now - self._t, 1e-6)
            cams: list[dict[str, Any]] = []
            fin_all = fan_all = 0.0
            for w in self.workers:
                st = w.capture.stats
                fin, fan, cpu = st.frames_in, w.pipeline.stats.frames, st.cpu_s + w.cpu_s
                p_in, p_an, p_cpu = self._prev[w.cam.id]
                self._prev[w.cam.id] = (fin, fan, cpu)
                fin_all += (fin - p_in) / dt
                fan_all += (fan - p_an) / dt
                cams.append({
                    "id": w.cam.id, "state": st.state, "fps_in": round((fin - p_in) / dt, 2),
                    "fps_analysed": round((fan - p_an) / dt, 2), "cpu_percent": round(100 * (cpu - p_cpu) / dt, 1),
                    "reconnects": st.reconnects, "dropped": st.dropped + w.skipped,
                    "down_s": round(now - st.down_since, 1) if st.down_since is not None else None,
                    "last_error": st.last_error[:200] if st.state != "live" else "",
                    "model_versions": ",".join(w.pipeline.model_versions)[:64],
                })
            out: dict[str, Any] = {
                "fps_in": round(fin_all, 2),
                "fps_analysed": round(fan_all, 2),
                "frames_dropped": sum(w.capture.stats.dropped + w.skipped for w in self.workers),
                "cameras_connected": sum(1 for w in self.workers if w.capture.stats.connected),
                "reconnects": sum(w.capture.stats.reconnects for w in self.workers),
                "open_incidents": sum(w.pipeline.rules.open_incidents() for w in self.workers),
                "model_version": ",".join(sorted({v for w in self.workers for v in w.pipeline.model_versions}))[:64],
                "cameras": cams,
            }
            self._t = now
            return out


def build_workers(section: CameraSection, sink: EventSink, stop: threading.Event) -> list[CameraWorker]:
    set_rtsp_transport(section.rtsp_transport)
    onnx = OnnxSession(section.onnx) if section.onnx is not None and any(
        section.backend_for(c, k) == "onnx" for c in section.cameras for k in ("crowd", "fire", "smoke", "litter")
    ) else None
    return [CameraWorker(section, cam, sink, stop, onnx) for cam in section.cameras]


def run(cfg: Any, link: Any, stop: threading.Event) -> None:
    """cfg: edge.config.DeviceConfig with a camera section; link: edge.link.Link (publish_event)."""
    section: CameraSection | None = cfg.camera
    if section is None or not section.cameras:
        raise ValueError("camera.cameras: no cameras configured")
    workers = build_workers(section, link, stop)
    stats = AgentStats(workers)
    link.stats_provider = stats  # the link calls it when it builds each heartbeat
    for w in workers:
        w.start()
    log.info("camera agent: %d camera(s) running", len(workers))
    try:
        while not stop.is_set() and any(w.alive() for w in workers):
            stop.wait(0.5)
    finally:
        for w in workers:
            w.join(5)
