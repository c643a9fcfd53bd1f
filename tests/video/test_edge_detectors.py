"""Each classical detector fires on its positive synthetic clip and stays silent on negatives; the ONNX
path runs a real (tiny) model; rules give one incident with start/update/end."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import synthetic
from edge.camera.config import (
    AreaRule,
    CameraSection,
    CameraSource,
    CrowdRule,
    Lifecycle,
    LitterRule,
    OnnxConfig,
    Rules,
    Zone,
)
from edge.camera.detectors import Detection
from edge.camera.detectors.classical import _hog_class
from edge.camera.detectors.onnx import OnnxDetector, OnnxModelError, OnnxSession
from edge.camera.pipeline import CameraPipeline
from edge.camera.rules import ZoneRules
from edge.camera.snapshot import jpeg_capped
from tests.video.onnx_model import build

RULES = Rules(
    crowd=CrowdRule(min_count=4, dwell_s=3), fire=AreaRule(min_area_frac=0.002, persist_s=2),
    smoke=AreaRule(min_area_frac=0.01, persist_s=2), litter=LitterRule(static_s=4),
    lifecycle=Lifecycle(end_after_s=3, update_every_s=5, cooldown_s=10),
)


CLASSICAL = {"crowd": "classical", "fire": "classical", "smoke": "classical", "litter": "classical"}


def run_clip(scenario: str, seconds: float = 15, section: CameraSection | None = None,
             cam: CameraSource | None = None, w: int = 640, h: int = 360) -> list:
    # The synthetic pedestrians are drawings: the classical path (HOG) is what these clips test.
    section = section or CameraSection(rules=RULES, detectors=CLASSICAL)
    p = CameraPipeline(section, cam or CameraSource(id="cam1", url="synthetic:" + scenario))
    base = synthetic.street(w, h)
    events = []
    for i in range(0, int(25 * seconds), 5):  # 5 analysed fps out of 25
        events += p.process(synthetic.frame(scenario, i, 25, w, h, base), i / 25)
    return events


@pytest.mark.parametrize("scenario", ["fire", "smoke", "litter", "crowd"])
def test_classical_detector_fires_on_its_clip(scenario: str) -> None:
    # People need ~100 px height for HOG's 64x128 window: the crowd clip is full 720p.
    events = run_clip(scenario, w=1280, h=720) if scenario == "crowd" else run_clip(scenario)
    kinds = {e.kind for e in events if e.phase == "start"}
    assert kinds == {scenario}, [(e.kind, e.phase) for e in events]
    start = next(e for e in events if e.phase == "start")
    assert start.backend == "classical" and start.model_version.startswith("classical-1/")
    assert start.boxes and start.snapshot_jpeg_b64
    jpg = base64.b64decode(start.snapshot_jpeg_b64)
    assert cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR) is not None
    # One incident: every event of a kind shares the incident id; updates, not new starts.
    assert len({e.incident_id for e in events}) == 1


@pytest.mark.parametrize("scenario", ["empty", "lighting", "orange_sign", "walkers"])
def test_classical_detectors_silent_on_negatives(scenario: str) -> None:
    assert run_clip(scenario) == []


def test_zone_limits_detection() -> None:
    # The fire is on the right half; a zone on the left half sees nothing.
    cam = CameraSource(id="c", url="x", zones=[Zone(id="left", polygon=[(0, 0), (0.5, 0), (0.5, 1), (0, 1)])])
    assert run_clip("fire", cam=cam) == []
    cam = CameraSource(id="c", url="x", zones=[Zone(id="right", polygon=[(0.5, 0), (1, 0), (1, 1), (0.5, 1)])])
    ev = run_clip("fire", cam=cam)
    assert ev and {e.zone for e in ev} == {"right"}


def test_motion_gating_skips_static_frames() -> None:
    p = CameraPipeline(CameraSection(rules=RULES, detectors=CLASSICAL), CameraSource(id="c", url="x"))
    base = synthetic.street(640, 360)
    for i in range(100):
        p.process(synthetic.frame("empty", i, 25, 640, 360, base), i / 25)
    assert p.stats.frames == 100 and p.stats.analysed <= 3


def test_hog_people_detector_counts_crowd() -> None:
    # pyproject pins OpenCV 4.x, whose main package ships the HOG people detector (5.x moved it to contrib).
    assert _hog_class() is not None, "this OpenCV build has no HOGDescriptor"
    section = CameraSection(rules=RULES.model_copy(update={"crowd": CrowdRule(min_count=4, dwell_s=2)}),
                            detectors={"crowd": "classical"})
    ev = run_clip("crowd", seconds=8, section=section, w=1280, h=720)
    assert [e.kind for e in ev if e.phase == "start"] == ["crowd"]
    assert ev[0].model_version == "classical-1/hog"


def test_lifecycle_start_update_end_and_cooldown() -> None:
    rules = Rules(fire=AreaRule(min_area_frac=0.01, persist_s=2),
                  lifecycle=Lifecycle(end_after_s=3, update_every_s=4, cooldown_s=20))
    zr = ZoneRules(rules, ["fire"])
    fire = [Detection("fire", 10, 10, 50, 50, score=0.9)]
    out = []
    # on 0-10 s with a 1 s dropout at 5 s (debounced), off 10-15 s, on again 15-20 s (inside cool-down).
    for k in range(200):
        t = k / 10
        on = (t < 10 and not 5 <= t < 6) or 15 <= t < 20
        out += [(round(t, 1), tr.phase) for tr in zr.step(fire if on else [], t, 100, 100)]
    assert out == [(2.0, "start"), (6.0, "update"), (12.9, "end")]


def test_onnx_backend_runs_real_model(tmp_path: Path) -> None:
    model = build(tmp_path / "tiny.onnx")
    cfg = OnnxConfig(model_path=model, input_size=(320, 320), class_map={0: "person", 1: "fire"},
                     conf_threshold=0.5, iou_threshold=0.3, model_version="tiny-1")
    det = OnnxDetector(OnnxSession(cfg))
    grey = np.full((360, 640, 3), 100, np.uint8)
    assert det.detect(grey, 0.0, {"fire", "person"}) == []
    img = grey.copy()
    img[200:300, 400:520] = (20, 120, 250)  # orange patch
    dets = det.detect(img, 0.0, {"fire"})
    assert dets and all(d.label == "fire" for d in dets)
    for d in dets:  # boxes mapped back through the letterbox land on the patch
        cx, cy = d.centre
        assert 360 <= cx <= 560 and 160 <= cy <= 340
    assert det.detect(img, 0.0, {"person"}) == []  # class map + label filter

    # Through the pipeline: fire from ONNX, every other kind off.
    section = CameraSection(rules=RULES, detectors={"fire": "onnx"}, onnx=cfg)
    p = CameraPipeline(section, CameraSource(id="c", url="x"))
    events = []
    for k in range(20):
        events += p.process(img if k >= 2 else grey, k * 0.2)
    assert [(e.kind, e.phase, e.backend, e.model_version) for e in events] == [("fire", "start", "onnx", "tiny-1")]


def test_onnx_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match="onnx.model_path"):
        OnnxSession(OnnxConfig(model_path=tmp_path / "nope.onnx"))
    with pytest.raises(ValueError, match="onnx"):
        CameraSection(detectors={"fire": "onnx"})


def test_snapshot_is_size_capped() -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    assert len(jpeg_capped(noisy, 20_000)) <= 20_000
