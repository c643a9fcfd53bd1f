"""Video benchmark, one core (cv2.setNumThreads(1), ONNX Runtime intra-op threads 1), same run:

- person detector: the shipped SSDLite pedestrian model's inferences/s at 300x300 (goal >= 10)
- people count on vtest.avi (Debian opencv-doc) against hand counts (tests/video/vtest_people.json, >= 20
  frames labelled by eye): mean absolute error of the shipped model (whole frame + 2x2 windows; goal <= 1),
  of the model on the whole frame only, and of the classical HOG detector (the baseline)
- false fire/smoke starts per hour of ordinary footage: vtest.avi, tree.avi, Megamind.avi replayed through
  the default camera pipeline (crowd auto, fire/smoke classical; goal 0 on vtest.avi), also without people
- classical path fps: motion-gated pipeline on 1280x720 synthetic street video (frames already decoded)

Last line: {"metric": "vtest_people_count_mae", "value": model MAE, "baseline": HOG MAE, ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.camera import synthetic  # noqa: E402
from edge.camera.cli import replay  # noqa: E402
from edge.camera.config import CameraSection, CameraSource, ClassicalConfig, shipped_person_model  # noqa: E402
from edge.camera.detectors.classical import People  # noqa: E402
from edge.camera.detectors.onnx import OnnxDetector, session_for  # noqa: E402
from edge.camera.pipeline import CameraPipeline  # noqa: E402

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS = Path(__file__).resolve().parents[1] / "tests/video/vtest_people.json"
W, H, FPS = 1280, 720, 25.0


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    return out


def classical_fps(seconds: float) -> float:
    base = synthetic.street(W, H)
    per = int(seconds * FPS / 4)
    fr = [synthetic.frame(sc, i, FPS, W, H, base) for sc in ("empty", "walkers", "fire", "litter") for i in range(per)]
    section = CameraSection(detectors={"crowd": "classical", "fire": "classical", "smoke": "classical",
                                       "litter": "classical"}, classical=ClassicalConfig())
    p = CameraPipeline(section, CameraSource(id="bench", url="synthetic:empty"))
    t = time.perf_counter()
    for i, f in enumerate(fr):
        p.process(f, i / FPS)
    return len(fr) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0, help="synthetic video for the classical fps")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    cfg = shipped_person_model()
    if cfg is None or not (DATA / "vtest.avi").is_file():
        sys.exit("needs edge/camera/models/ssdlite_pedestrian.onnx and opencv-doc's vtest.avi")
    vtest = read_frames(DATA / "vtest.avi")
    labels = {int(k): v for k, v in json.loads(LABELS.read_text())["counts"].items()}

    det = OnnxDetector(session_for(cfg))
    whole = OnnxDetector(session_for(cfg), tiles=[])
    sess = session_for(cfg)
    blob = cv2.cvtColor(cv2.resize(vtest[400], (300, 300)), cv2.COLOR_BGR2RGB)[None]
    for _ in range(5):
        sess.run(blob)
    t, n = time.perf_counter(), 0
    for f in vtest[:200:2]:
        sess.run(cv2.cvtColor(cv2.resize(f, (300, 300)), cv2.COLOR_BGR2RGB)[None])
        n += 1
    inf_s = n / (time.perf_counter() - t)

    hog = People(ClassicalConfig(person_every_s=0))
    err_model, err_whole, err_hog = [], [], []
    for k, count in labels.items():
        err_model.append(len(det.detect(vtest[k], float(k), {"person"})) - count)
        err_whole.append(len(whole.detect(vtest[k], float(k), {"person"})) - count)
        err_hog.append(len(hog.detect(vtest[k], float(k), None, 1.0)) - count)
    mae = float(np.mean(np.abs(err_model)))
    mae_whole = float(np.mean(np.abs(err_whole)))
    mae_hog = float(np.mean(np.abs(err_hog)))

    clips = [p for p in (DATA / "vtest.avi", DATA / "tree.avi", DATA / "Megamind.avi") if p.is_file()]
    false: dict[str, dict[str, int]] = {}
    hours = 0.0
    fs_rate: dict[str, float] = {}
    for name, detectors in (("default", {"crowd": "auto", "fire": "classical", "smoke": "classical",
                                         "litter": "off"}),
                            ("no people", {"crowd": "off", "fire": "classical", "smoke": "classical",
                                           "litter": "off"})):
        total, hours = 0, 0.0
        for clip in clips:
            r = replay(str(clip), CameraSection(detectors=detectors))
            starts = sum(1 for _, e in r.events if e.phase == "start" and e.kind in ("fire", "smoke"))
            false.setdefault(clip.name, {})[name] = starts
            total += starts
            hours += r.seconds / 3600
        fs_rate[name] = total / hours
    cls_fps = classical_fps(args.seconds)

    print(f"person model ({cfg.model_version}, 300x300, 1 thread): {inf_s:.1f} inferences/s (goal >= 10)")
    print(f"classical path, motion-gated, 1280x720 synthetic: {cls_fps:.1f} fps")
    print(f"vtest.avi people count on {len(labels)} hand-counted frames, mean absolute error:")
    print(f"  model, whole frame + 2x2 windows: {mae:.3f}  errors {err_model}")
    print(f"  model, whole frame only:          {mae_whole:.3f}")
    print(f"  classical HOG (baseline):         {mae_hog:.3f}  errors {err_hog}")
    print(f"false fire/smoke starts per clip: {false}")
    print(f"ordinary footage: {hours * 3600:.0f} s; false fire/smoke starts per hour: "
          + ", ".join(f"{k} {v:.1f}" for k, v in fs_rate.items()))
    print(json.dumps({"metric": "vtest_people_count_mae", "value": round(mae, 3), "unit": "people/frame",
                      "target": 1.0, "baseline": round(mae_hog, 3), "ratio": round(mae / max(mae_hog, 1e-9), 3)}))


if __name__ == "__main__":
    main()
