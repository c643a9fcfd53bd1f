"""Frame capture: RTSP/HTTP streams, video files (optionally looped), USB devices, synthetic scenes.

A capture thread per camera keeps only the newest frame (a slow analyser skips frames instead of
falling behind; skipped frames are counted as drops). A source that fails to open or stops delivering
is reopened with exponential back-off. Files with `realtime: false` are read as fast as the analyser
takes them (no drops), which is what tests and re-analysis of recordings want.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.camera import synthetic
from edge.camera.config import CameraSource

log = logging.getLogger("citybrain.edge.camera")


@dataclass
class CaptureStats:
    frames_in: int = 0
    dropped: int = 0  # frames overwritten before the analyser took them
    reconnects: int = 0
    connected: bool = False
    last_error: str = ""


class _Source:
    """Uniform read() over OpenCV and synthetic sources; returns (stream_ts, frame) or None at end/error."""

    def __init__(self, cam: CameraSource) -> None:
        self.cam = cam
        self.live = not _is_file(cam.url)
        self.cap: cv2.VideoCapture | None = None
        self.synth: str | None = None
        self.fps = 25.0
        self.i = 0
        self.offset = 0.0  # stream time carried over file loops

    def open(self) -> None:
        url = self.cam.url
        if url.startswith("synthetic:"):
            self.synth = url.split(":", 1)[1]
            if self.synth not in synthetic.SCENARIOS:
                raise ValueError(f"url: unknown synthetic scenario {self.synth!r}")
            self.base = synthetic.street(640, 360)
            return
        src: int | str = int(url) if url.isdigit() else url  # "0" = first USB camera
        cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"cannot open {url}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 120 else 25.0
        self.cap = cap

    def read(self) -> tuple[float, np.ndarray] | None:
        if self.synth is not None:
            f = synthetic.frame(self.synth, self.i, self.fps, 640, 360, self.base)
            self.i += 1
            return self.i / self.fps, f
        assert self.cap is not None
        ok, f = self.cap.read()
        if not ok:
            if not self.live and self.cam.loop and self.i > 0:
                self.offset += self.i / self.fps
                self.i = 0
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, f = self.cap.read()
            if not ok:
                return None
        self.i += 1
        # Files: stream time from the frame index (deterministic); live: wall clock.
        ts = self.offset + self.i / self.fps if not self.live else time.monotonic()
        return ts, f

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def _is_file(url: str) -> bool:
    return url.startswith("synthetic:") or not (url.isdigit() or "://" in url)


class Capture:
    def __init__(self, cam: CameraSource, stop: threading.Event, backoff: tuple[float, float] = (1.0, 60.0)) -> None:
        self.cam = cam
        self.stop = stop
        self.backoff = backoff
        self.stats = CaptureStats()
        self.ended = threading.Event()  # a non-looping file has been read to its end
        self._cv = threading.Condition()
        self._frame: tuple[float, np.ndarray] | None = None
        self._paced = cam.realtime or not _is_file(cam.url)
        self._thread = threading.Thread(target=self._run, name=f"capture-{cam.id}", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def get(self, timeout: float = 0.5) -> tuple[float, np.ndarray] | None:
        """The newest frame not yet taken (None if none arrives within timeout)."""
        with self._cv:
            if self._frame is None:
                self._cv.wait(timeout)
            item, self._frame = self._frame, None
            self._cv.notify_all()
            return item

    def _put(self, item: tuple[float, np.ndarray]) -> None:
        with self._cv:
            if not self._paced:
                while self._frame is not None and not self.stop.is_set():
                    self._cv.wait(0.2)  # recordings: back-pressure instead of dropping
            elif self._frame is not None:
                self.stats.dropped += 1
            self._frame = item
            self.stats.frames_in += 1
            self._cv.notify_all()

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self.stop.is_set():
            src = _Source(self.cam)
            try:
                src.open()
            except (OSError, ValueError) as e:
                self.stats.last_error = str(e)
                self.stats.connected = False
                log.warning("camera %s: %s; retry in %.1fs", self.cam.id, e, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                self.stats.reconnects += 1
                continue
            self.stats.connected = True
            delay = self.backoff[0]
            period = 1.0 / src.fps
            next_t = time.monotonic()
            got_any = False
            while not self.stop.is_set():
                item = src.read()
                if item is None:
                    break
                got_any = True
                self._put(item)
                if self._paced and not src.live:  # play files at their own frame rate
                    next_t += period
                    pause = next_t - time.monotonic()
                    if pause > 0:
                        self.stop.wait(pause)
                    else:
                        next_t = time.monotonic()
            src.close()
            self.stats.connected = False
            if not src.live and not self.cam.loop and got_any:
                self.ended.set()
                return
            if self.stop.is_set():
                return
            self.stats.last_error = "stream ended"
            log.warning("camera %s: stream lost; reconnect in %.1fs", self.cam.id, delay)
            self.stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
            self.stats.reconnects += 1
