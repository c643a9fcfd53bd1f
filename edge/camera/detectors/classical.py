"""Classical detectors that need no weights: people, fire, smoke and litter from one downscaled frame.

All colour/motion work runs on a small copy of the frame (analysis_width, default 320 px) on a
gain-normalised luminance, so a global lighting change (dusk, clouds, auto-exposure) cancels out instead
of looking like a new object. Time constants use stream time, so results do not depend on how fast
frames are fed (tests can run a 60 s clip in a second).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from edge.camera.config import ClassicalConfig, Rules
from edge.camera.detectors import Detection, nms

WARMUP_S = 1.0  # background needs a moment before "new object" means anything
FG_T = 22.0  # luminance difference (normalised units) that makes a pixel foreground
SMOKE_T = 12.0
FLICKER_STD = 12.0
FLICKER_TAU_S = 0.6  # flicker = luminance variance over roughly the last second
BG_TAU_S = 8.0  # background follows unoccupied pixels with this time constant
BG_SLOW_TAU_S = 3600.0  # ... and everything (even a long-left object) over an hour
STABLE_S = 2.0  # a litter candidate must keep place and size this long before it is reported


def _hog_class() -> type | None:
    # OpenCV 5 moved HOG to opencv-contrib (xobjdetect); 4.x has it in the main module.
    hog = getattr(cv2, "HOGDescriptor", None)
    if hog is None:
        hog = getattr(getattr(cv2, "xobjdetect", None), "HOGDescriptor", None)
    return hog


def _alpha(dt: float, tau: float) -> float:
    return 1.0 - math.exp(-max(dt, 0.0) / tau) if tau > 0 else 1.0


class People:
    """Persons: OpenCV's built-in HOG+SVM people detector when this OpenCV build has it; otherwise an
    upright-foreground-blob counter (a density estimate: a wide blob counts as several people)."""

    def __init__(self, cfg: ClassicalConfig) -> None:
        self.cfg = cfg
        cls = _hog_class()
        self.hog = None
        if cls is not None:
            self.hog = cls()
            self.hog.setSVMDetector(cls.getDefaultPeopleDetector())
        self.method = "hog" if self.hog is not None else "fgblob"
        self._last_ts = -1e9
        self._last: list[Detection] = []

    def detect(self, frame: np.ndarray, ts: float, fg: np.ndarray | None, scale: float) -> list[Detection]:
        if ts - self._last_ts < self.cfg.person_every_s:
            return self._last  # the costly step is rate-limited in stream time; reuse the last answer
        self._last_ts = ts
        self._last = self._hog(frame) if self.hog is not None else self._blobs(fg, scale)
        return self._last

    def _hog(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        s = min(1.0, self.cfg.person_width / w)
        img = cv2.resize(frame, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else frame
        rects, weights = self.hog.detectMultiScale(img, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            return []
        r = np.asarray(rects, dtype=np.float32) / s
        sc = np.asarray(weights, dtype=np.float32).reshape(-1)
        xyxy = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)
        keep = nms(xyxy, sc, 0.4)
        return [Detection("person", *map(float, r[i]), score=float(min(1.0, max(0.0, sc[i] / 2 + 0.5))))
                for i in keep]

    def _blobs(self, fg: np.ndarray | None, scale: float) -> list[Detection]:
        if fg is None:
            return []
        H = fg.shape[0]
        mask = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((5, 3), np.uint8))
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        out: list[Detection] = []
        min_h = 0.06 * H
        for i in range(1, n):
            x, y, w, h, a = stats[i]
            if h < min_h or a < 0.3 * w * h * 0.5:
                continue
            if h >= 1.2 * w:
                k = 1
            else:
                k = max(1, round(w / (0.45 * h)))  # side-by-side group: people are ~0.45 h wide
                if h < 1.5 * min_h:
                    continue  # short wide blobs are cars/shadows, not people
            for j in range(k):
                out.append(Detection("person", (x + j * w / k) * scale, y * scale, w / k * scale, h * scale,
                                     score=0.5))
        return out


class ClassicalDetector:
    name = "classical"

    def __init__(self, cfg: ClassicalConfig, rules: Rules) -> None:
        self.cfg = cfg
        self.rules = rules
        self.people = People(cfg)
        self.version = f"classical-1/{self.people.method}"
        self._t0: float | None = None
        self._ts = 0.0
        self._bg: np.ndarray | None = None
        self._mean: np.ndarray | None = None  # running mean/var of luminance: flicker
        self._var: np.ndarray | None = None
        self._colour: np.ndarray | None = None  # running share of frames a pixel was fire-coloured
        self._sample: np.ndarray | None = None  # luminance ~0.5 s ago: "is this pixel still moving?"
        self._sample_ts = -1e9
        self._smoke_hist: deque[tuple[float, float]] = deque(maxlen=256)
        self._smoke_until = -1e9
        self._statics: list[_Static] = []

    def detect(self, frame: np.ndarray, ts: float, labels: set[str]) -> list[Detection]:
        H, W = frame.shape[:2]
        aw = min(self.cfg.analysis_width, W)
        ah = max(1, round(H * aw / W))
        small = cv2.resize(frame, (aw, ah), interpolation=cv2.INTER_AREA) if aw != W else frame
        scale = W / aw
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        v = hsv[:, :, 2].astype(np.float32)
        g = v * (128.0 / max(float(v.mean()), 1.0))  # gain-normalised: global lighting cancels
        if self._t0 is None:
            self._t0, self._ts = ts, ts
            self._bg, self._mean = g.copy(), g.copy()
            self._var = np.zeros_like(g)
            self._colour = np.zeros_like(g)
            self._sample, self._sample_ts = g.copy(), ts
        dt = ts - self._ts
        self._ts = ts
        warm = ts - self._t0 >= WARMUP_S
        out: list[Detection] = []
        assert self._bg is not None
        diff = g - self._bg
        fg = (np.abs(diff) > FG_T).astype(np.uint8) * 255
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        occupied = np.abs(diff) > SMOKE_T

        if "fire" in labels:
            out += self._fire(hsv, g, scale, _alpha(dt, FLICKER_TAU_S) if dt > 0 else 0.3)
        smoke_mask = None
        if "smoke" in labels and warm:
            dets, smoke_mask = self._smoke(hsv, diff, ts, scale, small.shape[0] * small.shape[1])
            out += dets
        people: list[Detection] = []
        if "person" in labels or "litter" in labels:
            # Blob people are also what litter must ignore (a person standing still is not litter).
            people = self.people.detect(frame, ts, fg if warm else None, scale)
            if "person" in labels:
                out += people
            if self.people.method != "fgblob" and warm:
                people = people + self.people._blobs(fg, scale)  # upright blobs are never litter
        if "litter" in labels and warm:
            out += self._litter(g, fg, smoke_mask, people, ts, scale)

        # Background: follow free pixels quickly (gradual light), everything very slowly.
        a_fast, a_slow = _alpha(dt, BG_TAU_S), _alpha(dt, BG_SLOW_TAU_S)
        free = ~occupied
        self._bg[free] += a_fast * diff[free]
        self._bg += a_slow * (g - self._bg)
        if ts - self._sample_ts >= 0.5:
            self._sample, self._sample_ts = g, ts
        return out

    def _fire(self, hsv: np.ndarray, g: np.ndarray, scale: float, a: float) -> list[Detection]:
        assert self._mean is not None and self._var is not None and self._colour is not None
        d = g - self._mean
        self._mean += a * d
        self._var = (1 - a) * (self._var + a * d * d)
        # Flames are the brightest thing around: V >= 190 keeps red clothes and brick walls out.
        colour = cv2.inRange(hsv, (0, 90, 190), (35, 255, 255)).astype(np.float32) / 255.0
        self._colour += a * (colour - self._colour)
        # Fire = fire colours that flicker; a static orange sign or a sunset wall does not.
        mask = ((self._colour > 0.25) & (self._var > FLICKER_STD**2)).astype(np.uint8) * 255
        if not mask.any():
            return []
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
        score = float(min(1.0, np.sqrt(self._var[mask > 0].mean()) / 40))
        return _regions(mask, "fire", scale, min_px=6, score=score)

    def _smoke(
        self, hsv: np.ndarray, diff: np.ndarray, ts: float, scale: float, npx: int
    ) -> tuple[list[Detection], np.ndarray]:
        # Smoke = grey (low saturation, not dark) pixels that differ from the background and whose area
        # keeps growing over seconds; a dropped object appears at once and then stays the same size.
        grey = (hsv[:, :, 1] < 60) & (hsv[:, :, 2] > 60)
        mask = ((np.abs(diff) > SMOKE_T) & grey).astype(np.uint8) * 255
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        area = float(np.count_nonzero(mask)) / npx
        self._smoke_hist.append((ts, area))
        if self._spreading(ts):
            self._smoke_until = ts + 30.0
        if ts > self._smoke_until or area <= 0:
            return [], mask
        return _regions(mask, "smoke", scale, min_px=20, score=0.6), mask

    def _spreading(self, ts: float) -> bool:
        def at(t: float) -> float | None:
            best = None
            for t_i, a_i in self._smoke_hist:
                if t_i <= t:
                    best = a_i
            return best

        a0, a1, a2 = at(ts - 3.0), at(ts - 1.5), self._smoke_hist[-1][1]
        if a0 is None or a1 is None or a0 < 0.002:
            return False
        return a0 * 1.1 < a1 and a1 * 1.1 < a2 and a2 >= 1.3 * a0

    def _litter(
        self, g: np.ndarray, fg: np.ndarray, smoke: np.ndarray | None, people: list[Detection], ts: float,
        scale: float,
    ) -> list[Detection]:
        assert self._sample is not None
        still = (np.abs(g - self._sample) < FG_T).astype(np.uint8)
        mask = fg & (still * 255)
        if smoke is not None and ts <= self._smoke_until:
            mask[smoke > 0] = 0
        if self._var is not None:
            mask[self._var > FLICKER_STD**2] = 0  # flickering pixels are fire or motion, never litter
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        npx = mask.shape[0] * mask.shape[1]
        lo, hi = self.rules.litter.min_area_frac * npx, self.rules.litter.max_area_frac * npx
        seen: list[_Static] = []
        for i in range(1, n):
            x, y, w, h, a = (int(v) for v in stats[i])
            if not lo <= a <= hi:
                continue
            box = Detection("litter", x * scale, y * scale, w * scale, h * scale, score=0.5, area=a * scale**2)
            if any(_overlap(box, p) > 0.5 for p in people):
                continue  # a person standing still is a crowd matter, not litter
            # Same place and same size as a blob seen before: keep its first-seen time.
            prev = max(self._statics, key=lambda c: _iou(c.box, box), default=None)
            if prev is not None and _iou(prev.box, box) >= 0.5 and 0.7 <= a * scale**2 / prev.box.pixel_area <= 1.4:
                seen.append(_Static(box, prev.first))
            else:
                seen.append(_Static(box, ts))
        self._statics = seen
        # Report only objects that have kept still for a while; the rule then counts static_s.
        return [c.box for c in seen if ts - c.first >= STABLE_S]


@dataclass
class _Static:
    box: Detection
    first: float


def _iou(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / max(a.w * a.h + b.w * b.h - inter, 1e-9)


def _overlap(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy / max(a.w * a.h, 1e-9)


def _regions(mask: np.ndarray, label: str, scale: float, min_px: int, score: float) -> list[Detection]:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for i in range(1, n):
        x, y, w, h, a = (int(s) for s in stats[i])
        if a >= min_px:
            out.append(Detection(label, x * scale, y * scale, w * scale, h * scale, score=score,
                                 area=a * scale**2))
    return out
