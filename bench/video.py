"""Video benchmark: classical pipeline on 1280x720 @ 25 fps synthetic street video, one core.

value    = frames analysed per second by the motion-gated classical pipeline (all four kinds on), frames
           already decoded (what a capture thread hands over), single thread (cv2.setNumThreads(1))
baseline = the same frames only decoded from an MJPG file, same run, same thread setup
ratio    = value / baseline (how the analysis compares with merely decoding the stream)
Also printed: decode+analyse fps, the ungated (every frame fully analysed) fps and the ONNX path fps
(the tiny test model unless --onnx MODEL is given). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.camera import synthetic  # noqa: E402
from edge.camera.config import CameraSection, CameraSource, ClassicalConfig, OnnxConfig  # noqa: E402
from edge.camera.pipeline import CameraPipeline  # noqa: E402

W, H, FPS = 1280, 720, 25.0


def frames(seconds: float) -> list[np.ndarray]:
    # A realistic mix: mostly quiet street, some walkers, a fire and a dropped object.
    base = synthetic.street(W, H)
    out = []
    per = int(seconds * FPS / 4)
    for sc in ("empty", "walkers", "fire", "litter"):
        out += [synthetic.frame(sc, i, FPS, W, H, base) for i in range(per)]
    return out


def run_pipeline(fr: list[np.ndarray], gated: bool) -> float:
    section = CameraSection(classical=ClassicalConfig(motion_threshold=0.002 if gated else 0.0))
    p = CameraPipeline(section, CameraSource(id="bench", url="synthetic:empty"))
    t = time.perf_counter()
    for i, f in enumerate(fr):
        p.process(f, i / FPS)
    return len(fr) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--onnx", type=Path, default=None, help="YOLO-style model (default: the tiny test model)")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # per-core figures
    fr = frames(args.seconds)
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "bench.avi")
        vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
        for f in fr:
            vw.write(f)
        vw.release()
        cap = cv2.VideoCapture(path)
        t = time.perf_counter()
        n = 0
        while True:
            ok, _ = cap.read()
            if not ok:
                break
            n += 1
        decode_fps = n / (time.perf_counter() - t)
        cap.release()
        gated = run_pipeline(fr, gated=True)
        ungated = run_pipeline(fr, gated=False)
        combined = 1.0 / (1.0 / decode_fps + 1.0 / gated)

        model = args.onnx
        size = (640, 640)
        if model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.video.onnx_model import SIZE, build

            model = build(Path(d) / "tiny.onnx")
            size = (SIZE, SIZE)
        ocfg = OnnxConfig(model_path=model, input_size=size, class_map={0: "person", 1: "fire"})
        section = CameraSection(detectors={"fire": "onnx", "crowd": "onnx"}, onnx=ocfg,
                                classical=ClassicalConfig(motion_threshold=0.0))
        p = CameraPipeline(section, CameraSource(id="onnx", url="synthetic:fire"))
        sub = fr[: min(len(fr), 200)]
        t = time.perf_counter()
        for i, f in enumerate(sub):
            p.process(f, i / FPS)
        onnx_fps = len(sub) / (time.perf_counter() - t)

    print(f"frames: {len(fr)} at {W}x{H}")
    print(f"decode only (MJPG, baseline): {decode_fps:.1f} fps")
    print(f"classical, motion-gated:      {gated:.1f} fps  (target >= 100 = 4x real time)")
    print(f"classical, every frame:       {ungated:.1f} fps")
    print(f"decode + gated analysis:      {combined:.1f} fps")
    print(f"onnx path ({Path(model).name}, {size[0]}x{size[1]}): {onnx_fps:.1f} fps")
    print(json.dumps({"metric": "video_classical_gated_fps_per_core", "value": round(gated, 1), "unit": "fps",
                      "target": 100, "baseline": round(decode_fps, 1), "ratio": round(gated / decode_fps, 3)}))


if __name__ == "__main__":
    main()
