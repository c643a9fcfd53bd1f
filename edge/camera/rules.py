"""Zone rules and the incident lifecycle.

Per (zone, kind) a small state machine turns noisy per-frame detections into one incident:
idle --condition held for hold_s--> start --every update_every_s--> update --false for end_after_s--> end,
then a cool-down before the same zone+kind may start again. Short gaps (missed detections) up to gap_s
do not reset the hold timer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.camera.config import LABEL_OF_KIND, Rules, Zone
from edge.camera.detectors import Detection

GAP_S = 2.0


@dataclass
class Measure:
    active: bool
    value: float  # count for crowd, area fraction for fire/smoke, object count for litter
    boxes: list[Detection]
    score: float


@dataclass
class Transition:
    phase: str  # start | update | end
    incident_id: str
    zone: str
    kind: str
    measure: Measure
    started_ts: float
    peak: float
    ts: float


@dataclass
class _State:
    since: float | None = None  # condition true since
    last_true: float = -1e18
    incident: str | None = None
    started: float = 0.0
    last_update: float = 0.0
    cooldown_until: float = -1e18
    peak: float = 0.0
    last_measure: Measure | None = None


class PixelZone:
    def __init__(self, zone: Zone, w: int, h: int) -> None:
        self.zone = zone
        self.poly = np.array([(x * w, y * h) for x, y in zone.polygon], np.float32)
        self.area = max(float(cv2.contourArea(self.poly)), 1.0)

    def contains(self, p: tuple[float, float]) -> bool:
        return cv2.pointPolygonTest(self.poly, (float(p[0]), float(p[1])), False) >= 0


def whole_frame() -> Zone:
    return Zone(id="frame", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)])


@dataclass
class ZoneRules:
    rules: Rules
    kinds: list[str]  # kinds enabled on this camera (backend not "off")
    zones: list[Zone] = field(default_factory=list)
    _pz: list[PixelZone] = field(default_factory=list)
    _size: tuple[int, int] = (0, 0)
    _state: dict[tuple[str, str], _State] = field(default_factory=dict)

    def _zones_for(self, w: int, h: int) -> list[PixelZone]:
        if self._size != (w, h):
            self._pz = [PixelZone(z, w, h) for z in (self.zones or [whole_frame()])]
            self._size = (w, h)
        return self._pz

    def measure(self, kind: str, pz: PixelZone, dets: list[Detection], npx: float) -> Measure:
        label = LABEL_OF_KIND[kind]
        inside = [d for d in dets if d.label == label and pz.contains(d.foot if label == "person" else d.centre)]
        score = max((d.score for d in inside), default=0.0)
        if kind == "crowd":
            n = len(inside)
            return Measure(n >= self.rules.crowd.min_count, float(n), inside, score)
        if kind in ("fire", "smoke"):
            rule = self.rules.fire if kind == "fire" else self.rules.smoke
            frac = sum(d.pixel_area for d in inside) / pz.area
            return Measure(frac >= rule.min_area_frac, frac, inside, score)
        lit = self.rules.litter
        objs = [d for d in inside if lit.min_area_frac * npx <= d.pixel_area <= lit.max_area_frac * npx]
        return Measure(bool(objs), float(len(objs)), objs, score)

    def hold_s(self, kind: str) -> float:
        r = self.rules
        return {"crowd": r.crowd.dwell_s, "fire": r.fire.persist_s, "smoke": r.smoke.persist_s,
                "litter": r.litter.static_s}[kind]

    def step(self, dets: list[Detection], ts: float, w: int, h: int) -> list[Transition]:
        lc = self.rules.lifecycle
        out: list[Transition] = []
        for pz in self._zones_for(w, h):
            for kind in self.kinds:
                if kind not in pz.zone.kinds:
                    continue
                m = self.measure(kind, pz, dets, float(w * h))
                st = self._state.setdefault((pz.zone.id, kind), _State())
                if m.active:
                    if st.since is None or ts - st.last_true > GAP_S:
                        st.since = ts  # a gap longer than GAP_S restarts the hold timer
                    st.last_true = ts
                    st.last_measure = m
                if st.incident is None:
                    if (m.active and st.since is not None and ts - st.since >= self.hold_s(kind)
                            and ts >= st.cooldown_until):
                        st.incident = uuid.uuid4().hex[:16]
                        st.started = st.last_update = ts
                        st.peak = m.value
                        out.append(Transition("start", st.incident, pz.zone.id, kind, m, ts, m.value, ts))
                    continue
                if m.active:
                    st.peak = max(st.peak, m.value)
                    if ts - st.last_update >= lc.update_every_s:
                        st.last_update = ts
                        out.append(Transition("update", st.incident, pz.zone.id, kind, m, st.started, st.peak, ts))
                elif ts - st.last_true >= lc.end_after_s:
                    last = st.last_measure or m
                    out.append(Transition("end", st.incident, pz.zone.id, kind, last, st.started, st.peak, ts))
                    st.incident, st.since = None, None
                    st.cooldown_until = ts + lc.cooldown_s
        return out

    def open_incidents(self) -> int:
        return sum(1 for s in self._state.values() if s.incident is not None)
