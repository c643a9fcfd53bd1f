"""Classical detectors that need no weights: people, fire, smoke and litter from one downscaled frame.

All colour/motion work runs on a small copy of the frame (analysis_width, default 320 px) on a
gain-normalised luminance, so a global lighting change (dusk, clouds, auto-exposure) cancels out instead
of looking like a new object. Time constants use stream time, so results do not depend on how fast
frames are fed (tests can run a 60 s clip in a second).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

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

# Fire: a fire-coloured region is followed over time and must FLICKER (its shape and brightness change
# from one look to the next, look after look) for a while. Flames flicker at roughly 8-12 Hz, faster than
# any analysis rate here, so successive looks (0.04-0.5 s apart) see a decorrelated shape; a traffic cone,
# a sign or a lit wall keeps its shape. Looks at a region that touches a person box do not count (a walker
# passing a cone changes its shape once, and orange clothes move like people).
FIRE_LO, FIRE_HI = (0, 90, 190), (35, 255, 255)  # HSV; V >= 190 keeps red clothes and brick walls out
FIRE_WINDOW_S = 2.0
FIRE_MIN_LOOKS = 5  # unoccluded looks in the window
FIRE_CHANGE = 0.18  # shape change (1 - IoU of the size-normalised masks) that counts as a flicker
FIRE_SHARE = 0.6  # share of the window's looks that must flicker
FIRE_MIN_PX = 12  # analysis pixels: smaller regions are JPEG noise as much as flame
SHAPE = 16  # masks are compared at SHAPE x SHAPE after scaling each to its own box
# Smoke: a grey region that differs from the background, is semi-transparent (the background's edges
# show through weaker), changes slowly (not a walking person) and spreads: grows or rises.
SMOKE_WINDOW_S = 3.0
SMOKE_MIN_LOOKS = 5
# Veil test: behind smoke the background still shows, weaker: inside the region the frame correlates
# with the background (NCC) at reduced contrast. A "ghost" (where a person stood when the background was
# learnt) or a person on pavement does not correlate with what was there before.
SMOKE_NCC = 0.5
SMOKE_CONTRAST = 0.75  # std(frame) / std(background) inside the region, i.e. edges lowered
SMOKE_TEXTURE = 1.5  # the background needs this much texture (std) for the veil test to mean anything
SMOKE_MAX_SPEED = 0.35  # |frame - previous look| / |frame - background| inside the region
SMOKE_GROWTH = 1.15  # area over the window
SMOKE_HOLD_S = 30.0  # a confirmed plume keeps masking litter candidates this long
TRACK_GAP_S = 1.0  # a region unseen this long is forgotten
PERSON_PAD = 0.25  # person boxes are widened by this share of their size (they are up to ~1 s old)


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
        self._prev_g: np.ndarray | None = None  # luminance of the previous look: how fast a region changes
        self._fire_tracks: list[_Track] = []
        self._smoke_tracks: list[_Track] = []
        self._smoke_until = -1e9
        self._statics: list[_Static] = []

    def detect(self, frame: np.ndarray, ts: float, labels: set[str],
               people: list[Detection] | None = None) -> list[Detection]:
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

        persons: list[Detection] = list(people or [])
        if "person" in labels or ("litter" in labels and people is None):
            own = self.people.detect(frame, ts, fg if warm else None, scale)
            if "person" in labels:
                out += own
            persons += own
        # Person boxes in analysis pixels, widened: fire/smoke candidates on people are not counted.
        shields = [_pad(p, 1 / scale, PERSON_PAD) for p in persons if p.label == "person"]
        if "fire" in labels:
            out += self._fire(hsv, g, ts, scale, _alpha(dt, FLICKER_TAU_S) if dt > 0 else 0.3, shields)
        smoke_mask = None
        if "smoke" in labels and warm:
            dets, smoke_mask = self._smoke(hsv, g, diff, ts, scale, shields)
            out += dets
        if "litter" in labels and warm:
            # Blob people are also what litter must ignore (a person standing still is not litter).
            lit_people = persons + self.people._blobs(fg, scale) if self.people.method != "fgblob" else persons
            out += self._litter(g, fg, smoke_mask, lit_people, ts, scale)

        # Background: follow free pixels quickly (gradual light), everything very slowly.
        a_fast, a_slow = _alpha(dt, BG_TAU_S), _alpha(dt, BG_SLOW_TAU_S)
        free = ~occupied
        self._bg[free] += a_fast * diff[free]
        self._bg += a_slow * (g - self._bg)
        if ts - self._sample_ts >= 0.5:
            self._sample, self._sample_ts = g, ts
        self._prev_g = g
        return out

    def _fire(self, hsv: np.ndarray, g: np.ndarray, ts: float, scale: float, a: float,
              shields: list[Detection]) -> list[Detection]:
        assert self._mean is not None and self._var is not None and self._colour is not None
        d = g - self._mean
        self._mean += a * d
        self._var = (1 - a) * (self._var + a * d * d)
        colour = cv2.inRange(hsv, FIRE_LO, FIRE_HI)
        self._colour += a * (colour.astype(np.float32) / 255.0 - self._colour)
        # Candidate regions: fire colour now, close pixels merged (flames are ragged, one fire = one region).
        cand = cv2.dilate(colour, np.ones((5, 5), np.uint8))
        n, _, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
        seen: list[_Track] = []
        for i in range(1, n):
            x, y, w, h, _a = (int(v) for v in stats[i])
            crop = colour[y:y + h, x:x + w]
            px = int(np.count_nonzero(crop))
            if px < FIRE_MIN_PX:
                continue
            shape = cv2.resize(crop, (SHAPE, SHAPE), interpolation=cv2.INTER_AREA) > 127
            box = (x, y, w, h)
            tr = _match(self._fire_tracks, box, seen)
            occluded = any(_overlap_xywh(box, p) > 0.2 for p in shields)
            std = float(np.sqrt(self._var[y:y + h, x:x + w][crop > 0].mean()))
            if tr is None:
                tr = _Track(box, ts)
            else:
                change = 1.0 - _mask_iou(shape, tr.shape) if tr.shape is not None else 0.0
                grew = px > 1.1 * tr.px
                # A look flickers when the region's shape changed (or it grew) and its pixels' brightness
                # varies over time: together these keep JPEG edge noise on a static cone out.
                tr.looks.append((ts, float(change >= FIRE_CHANGE or grew) if std >= FLICKER_STD else 0.0,
                                 occluded))
            tr.box, tr.last, tr.shape, tr.px, tr.score = box, ts, shape, px, min(1.0, std / 40)
            seen.append(tr)
        # Keep briefly unseen tracks (a flame can dip below the colour threshold for a look).
        self._fire_tracks = seen + [t for t in self._fire_tracks if t not in seen and ts - t.last <= TRACK_GAP_S]
        out = []
        for tr in seen:
            looks = [f for t, f, occ in tr.looks if ts - t <= FIRE_WINDOW_S and not occ]
            on_person = bool(tr.looks) and tr.looks[-1][2]
            if on_person or len(looks) < FIRE_MIN_LOOKS or sum(looks) < FIRE_SHARE * len(looks):
                continue
            x, y, w, h = tr.box
            out.append(Detection("fire", x * scale, y * scale, w * scale, h * scale, score=tr.score,
                                 area=tr.px * scale**2))
        return out

    def _smoke(
        self, hsv: np.ndarray, g: np.ndarray, diff: np.ndarray, ts: float, scale: float,
        shields: list[Detection],
    ) -> tuple[list[Detection], np.ndarray]:
        assert self._bg is not None
        grey = (hsv[:, :, 1] < 60) & (hsv[:, :, 2] > 60)
        mask = ((np.abs(diff) > SMOKE_T) & grey).astype(np.uint8) * 255
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        cand = cv2.dilate(mask, np.ones((5, 5), np.uint8))
        n, _, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
        prev = self._prev_g if self._prev_g is not None else g
        seen: list[_Track] = []
        for i in range(1, n):
            x, y, w, h, _a = (int(v) for v in stats[i])
            m = mask[y:y + h, x:x + w] > 0
            px = int(np.count_nonzero(m))
            if px < 20:
                continue
            box = (x, y, w, h)
            # The interior only: the region's rim is a ramp between smoke and background, all contrast.
            inner = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if np.count_nonzero(inner) < 10:
                inner = m
            ncc, contrast, texture = _veil(g[y:y + h, x:x + w][inner], self._bg[y:y + h, x:x + w][inner])
            moved = float(np.abs(g[y:y + h, x:x + w] - prev[y:y + h, x:x + w])[m].mean())
            speed = moved / max(float(np.abs(diff[y:y + h, x:x + w])[m].mean()), 1e-6)
            occluded = any(_overlap_xywh(box, p) > 0.2 for p in shields)
            tr = _match(self._smoke_tracks, box, seen) or _Track(box, ts)
            # A look supports smoke when the region veils a textured background and changes slowly.
            ok = (texture >= SMOKE_TEXTURE and ncc >= SMOKE_NCC and contrast <= SMOKE_CONTRAST
                  and speed <= SMOKE_MAX_SPEED)
            tr.looks.append((ts, float(ok), occluded))
            tr.hist.append((ts, float(px), float(y)))
            tr.box, tr.last, tr.px = box, ts, px
            seen.append(tr)
        self._smoke_tracks = seen + [t for t in self._smoke_tracks
                                     if t not in seen and ts - t.last <= TRACK_GAP_S]
        out = []
        veils = np.zeros_like(mask)
        for tr in seen:
            looks = [(f, occ) for t, f, occ in tr.looks if ts - t <= SMOKE_WINDOW_S]
            clear = [f for f, occ in looks if not occ]
            if not tr.confirmed:
                old = next(((a, top) for t, a, top in tr.hist if ts - t <= SMOKE_WINDOW_S), None)
                spreads = old is not None and (tr.px >= SMOKE_GROWTH * old[0] or tr.box[1] <= old[1] - 2)
                tr.confirmed = (len(clear) >= SMOKE_MIN_LOOKS and len(clear) >= 0.8 * len(looks)
                                and sum(clear) >= 0.8 * len(clear) and spreads)
            elif clear and sum(clear) < 0.5 * len(clear):
                tr.confirmed = False  # no longer a veil: it was not smoke, or it cleared
            x, y, w, h = tr.box
            if tr.confirmed:
                self._smoke_until = ts + SMOKE_HOLD_S
                out.append(Detection("smoke", x * scale, y * scale, w * scale, h * scale, score=0.6,
                                     area=tr.px * scale**2))
            if tr.confirmed or (clear and sum(clear) >= 0.5 * len(clear)):
                veils[y:y + h, x:x + w] = mask[y:y + h, x:x + w]  # a veil (even unconfirmed) is never litter
        return out, veils

    def _litter(
        self, g: np.ndarray, fg: np.ndarray, smoke: np.ndarray | None, people: list[Detection], ts: float,
        scale: float,
    ) -> list[Detection]:
        assert self._sample is not None
        still = (np.abs(g - self._sample) < FG_T).astype(np.uint8)
        mask = fg & (still * 255)
        if smoke is not None:
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


@dataclass
class _Track:
    """A candidate region followed over looks (analysis pixels)."""

    box: tuple[int, int, int, int]
    first: float
    last: float = 0.0
    shape: np.ndarray | None = None
    px: int = 0
    score: float = 0.0
    confirmed: bool = False
    looks: deque[tuple[float, float, bool]] = field(default_factory=lambda: deque(maxlen=64))  # ts, ok, occluded
    hist: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=64))  # ts, area, top


def _match(tracks: list[_Track], box: tuple[int, int, int, int], taken: list[_Track]) -> _Track | None:
    best, best_v = None, 0.0
    for t in tracks:
        if t in taken:
            continue
        v = _iou_xywh(t.box, box)
        if v > best_v:
            best, best_v = t, v
    return best if best_v >= 0.1 else None


def _iou_xywh(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1)


def _overlap_xywh(a: tuple[int, int, int, int], p: Detection) -> float:
    """Share of box a covered by detection p."""
    ix = max(0.0, min(a[0] + a[2], p.x + p.w) - max(a[0], p.x))
    iy = max(0.0, min(a[1] + a[3], p.y + p.h) - max(a[1], p.y))
    return ix * iy / max(a[2] * a[3], 1)


def _pad(p: Detection, k: float, pad: float) -> Detection:
    """p scaled by k (full frame -> analysis pixels) and widened by pad of its size on every side."""
    return Detection(p.label, (p.x - pad * p.w) * k, (p.y - pad * p.h) * k, p.w * (1 + 2 * pad) * k,
                     p.h * (1 + 2 * pad) * k, p.score)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _veil(now: np.ndarray, bg: np.ndarray) -> tuple[float, float, float]:
    """(correlation of frame and background, contrast ratio, background std) over a region's pixels."""
    sb, sn = float(bg.std()), float(now.std())
    if sb < 1e-6 or sn < 1e-6:
        return 0.0, 1.0, sb
    ncc = float(((now - now.mean()) * (bg - bg.mean())).mean()) / (sn * sb)
    return ncc, sn / sb, sb
