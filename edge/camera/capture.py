"""Frame capture: RTSP/HTTP streams, video files (optionally looped), USB devices, synthetic scenes.

A capture thread per camera keeps only the newest frame (a slow analyser skips frames instead of
falling behind; skipped frames are counted as drops). A source that fails to open or stops delivering
is reopened with exponential back-off (reset once frames flow again). Network streams are opened
through FFmpeg with open/read timeouts, so a camera that drops off RTSP is noticed within read_timeout_s
instead of hanging in a read. Files with `realtime: false` are read as fast as the analyser takes them (no
drops), which is what tests and re-analysis of recordings want.

`CaptureStats.state` is what the heartbeat reports per camera: connecting (never had a frame yet),
live, reconnecting (lost; retrying with back-off), ended (a finished file).
"""

from __future__ import annotations

import logging
import os
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
    state: str = "connecting"  # connecting | live | reconnecting | ended
    down_since: float | None = None  # monotonic time the stream was lost (None while live)
    cpu_s: float = 0.0  # CPU time of the capture thread (decoding)
    back_online: int = 0  # times a lost stream delivered frames again


class _Source:
    """Uniform read() over OpenCV and synthetic sources; returns (stream_ts, frame) or None at end/error."""

    def __init__(self, cam: CameraSource, timeouts: tuple[float, float] = (10.0, 5.0)) -> None:
        self.cam = cam
        self.timeouts = timeouts
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
        if "://" in url:
            # FFmpeg with timeouts: without them a dead RTSP peer blocks read() for 30 s or more.
            ms = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.timeouts[0] * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.timeouts[1] * 1000)]
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, ms)
        else:
            cap = cv2.VideoCapture(int(url) if url.isdigit() else url)  # "0" = first USB camera
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


def set_rtsp_transport(transport: str) -> None:
    """FFmpeg's capture options are process-wide (an environment variable read at each open); an
    operator's own OPENCV_FFMPEG_CAPTURE_OPTIONS wins."""
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"rtsp_transport;{transport}")


class Capture:
    def __init__(self, cam: CameraSource, stop: threading.Event, backoff: tuple[float, float] = (1.0, 60.0),
                 timeouts: tuple[float, float] = (10.0, 5.0)) -> None:
        self.cam = cam
        self.stop = stop
        self.backoff = backoff
        self.timeouts = timeouts
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
        cpu0 = time.thread_time()
        try:
            self._loop()
        finally:
            self.stats.cpu_s = time.thread_time() - cpu0

    def _lost(self, why: str) -> None:
        st = self.stats
        st.connected = False
        st.last_error = why
        if st.state == "live":
            st.state, st.down_since = "reconnecting", time.monotonic()

    def _loop(self) -> None:
        delay = self.backoff[0]
        cpu0 = time.thread_time()
        while not self.stop.is_set():
            src = _Source(self.cam, self.timeouts)
            try:
                src.open()
            except (OSError, ValueError) as e:
                self._lost(str(e))
                log.warning("camera %s: %s; retry in %.1fs", self.cam.id, e, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                self.stats.reconnects += 1
                continue
            period = 1.0 / src.fps
            next_t = time.monotonic()
            got_any = False
            while not self.stop.is_set():
                item = src.read()
                if item is None:
                    break
                if not got_any:
                    got_any = True
                    if self.stats.state == "reconnecting":
                        self.stats.back_online += 1
                        log.info("camera %s: stream back after %.1fs", self.cam.id,
                                 time.monotonic() - (self.stats.down_since or time.monotonic()))
                    self.stats.state, self.stats.down_since, self.stats.connected = "live", None, True
                    delay = self.backoff[0]  # frames flow again: the next loss starts from the short delay
                self._put(item)
                self.stats.cpu_s = time.thread_time() - cpu0
                if self._paced and not src.live:  # play files at their own frame rate
                    next_t += period
                    pause = next_t - time.monotonic()
                    if pause > 0:
                        self.stop.wait(pause)
                    else:
                        next_t = time.monotonic()
            src.close()
            if not src.live and not self.cam.loop and got_any:
                self.stats.connected = False
                self.stats.state = "ended"
                self.ended.set()
                return
            if self.stop.is_set():
                self.stats.connected = False
                return
            self._lost("stream ended" if got_any else "no frame after open")
            log.warning("camera %s: stream lost; reconnect in %.1fs", self.cam.id, delay)
            self.stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
            self.stats.reconnects += 1
