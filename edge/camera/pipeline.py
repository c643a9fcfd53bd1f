"""One camera's analysis: motion gate -> detectors (per kind backend) -> zone rules -> Events.

Motion gating: a 160-px grey thumbnail is compared with the one of the last fully analysed frame; when
little changed the previous detections are reused and only the rule timers advance, which is what lets a
gateway keep up with many streams. A full analysis is forced at least every REFRESH_S.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.camera.config import KINDS, LABEL_OF_KIND, CameraSection, CameraSource, OnnxConfig
from edge.camera.detectors import Detection, Detector
from edge.camera.detectors.classical import ClassicalDetector
from edge.camera.detectors.onnx import OnnxDetector, OnnxSession, session_for
from edge.camera.rules import Transition, ZoneRules
from edge.camera.snapshot import snapshot_b64
from protocol.messages import Box, Event

REFRESH_S = 2.0
THUMB_W = 160


@dataclass
class PipelineStats:
    frames: int = 0
    analysed: int = 0  # frames that ran the detectors (the rest were motion-gated)
    events: int = 0
    busy_s: float = 0.0


class CameraPipeline:
    def __init__(self, section: CameraSection, cam: CameraSource, onnx: OnnxSession | None = None) -> None:
        self.section = section
        self.cam = cam
        self.kinds = [k for k in KINDS if section.backend_for(cam, k) != "off"]
        # Group kinds by the detector that really runs them ("auto" resolved): one detector per model.
        groups: dict[tuple[str, str], tuple[OnnxConfig | None, set[str]]] = {}
        for k in self.kinds:
            backend, mcfg = section.resolve(cam, k)
            if backend == "onnx" and mcfg is None:
                raise ValueError("onnx: backend 'onnx' selected but no onnx section configured")
            key = (backend, str(mcfg.model_path) if mcfg is not None else "")
            groups.setdefault(key, (mcfg, set()))[1].add(LABEL_OF_KIND[k])
        self.detectors: list[tuple[Detector, set[str]]] = []
        self.backend_of_label: dict[str, Detector] = {}
        for (backend, _), (mcfg, labels) in groups.items():
            det: Detector
            if backend == "classical":
                det = ClassicalDetector(section.classical, section.rules_for(cam))
            else:
                assert mcfg is not None
                sess = onnx if onnx is not None and onnx.cfg == mcfg else session_for(mcfg)
                det = OnnxDetector(sess, cam.tiles)
            self.detectors.append((det, labels))
            for lab in labels:
                self.backend_of_label[lab] = det
        # Person boxes first: the classical fire/smoke/litter paths suppress candidates on people.
        self.detectors.sort(key=lambda dl: ("person" not in dl[1], dl[0].name == "classical"))
        self.model_versions = sorted({d.version for d, _ in self.detectors})
        self.rules = ZoneRules(section.rules_for(cam), self.kinds, list(cam.zones))
        self.stats = PipelineStats()
        self._ref: np.ndarray | None = None
        self._ref_ts = -1e18
        self._dets: list[Detection] = []

    def _moved(self, frame: np.ndarray, ts: float) -> bool:
        h, w = frame.shape[:2]
        th = max(1, round(h * THUMB_W / w))
        tiny = cv2.cvtColor(cv2.resize(frame, (THUMB_W, th), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        if self._ref is None or ts - self._ref_ts >= REFRESH_S:
            self._ref, self._ref_ts = tiny, ts
            return True
        changed = np.count_nonzero(cv2.absdiff(tiny, self._ref) > 12) / tiny.size
        if changed >= self.section.classical.motion_threshold:
            self._ref, self._ref_ts = tiny, ts
            return True
        return False

    def process(self, frame: np.ndarray, ts: float) -> list[Event]:
        t0 = time.perf_counter()
        self.stats.frames += 1
        if self._moved(frame, ts):
            self.stats.analysed += 1
            dets: list[Detection] = []
            people: list[Detection] | None = None
            for det, labels in self.detectors:
                found = det.detect(frame, ts, labels, people)
                if "person" in labels:
                    people = [d for d in found if d.label == "person"]
                dets += found
            self._dets = dets
        h, w = frame.shape[:2]
        events = [self._event(t, frame) for t in self.rules.step(self._dets, ts, w, h)]
        self.stats.events += len(events)
        self.stats.busy_s += time.perf_counter() - t0
        return events

    def _event(self, t: Transition, frame: np.ndarray) -> Event:
        label = LABEL_OF_KIND[t.kind]
        det = self.backend_of_label[label]
        h, w = frame.shape[:2]
        snap = None
        if t.phase != "end":
            pz = next((p for p in self.rules._pz if p.zone.id == t.zone), None)
            snap = snapshot_b64(frame, t.measure.boxes, pz.poly if pz is not None else None,
                                self.section.snapshot_max_bytes)
        m = t.measure
        return Event(
            kind=t.kind,
            phase=t.phase,  # type: ignore[arg-type]
            incident_id=f"{self.cam.id}-{t.incident_id}",
            camera=self.cam.id,
            zone=t.zone,
            score=round(min(1.0, max(0.0, m.score)), 4),
            count=len(m.boxes) if t.kind != "crowd" else int(m.value),
            boxes=[Box(x=b.x, y=b.y, w=b.w, h=b.h, label=b.label, score=round(min(1.0, b.score), 4))
                   for b in m.boxes[:256]],
            backend=det.name,
            model_version=det.version,
            snapshot_jpeg_b64=snap,
            lat=self.cam.lat,
            lon=self.cam.lon,
            attrs={"value": round(m.value, 5), "peak": round(t.peak, 5), "frame_w": w, "frame_h": h,
                   "duration_s": round(t.ts - t.started_ts, 2)},
        )
