"""A tiny but real YOLOv8-layout ONNX detector built with the `onnx` helpers (no download, no weights).

Input `images` [1, 3, 320, 320] (RGB, 0..1). The image is average-pooled into an 8x8 grid of 40-px cells;
a 1x1 convolution scores each cell per class: class 0 "person" (never fires), class 1 "fire"
(red-dominant cells). Boxes are the cell squares. Output [1, 4 + 2, 64]: cx, cy, w, h, scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE, CELL = 320, 40


def build(path: Path) -> Path:
    g = SIZE // CELL
    n = g * g
    centres = np.array([[(j + 0.5) * CELL, (i + 0.5) * CELL] for i in range(g) for j in range(g)], np.float32)
    boxes = np.concatenate([centres.T, np.full((2, n), CELL, np.float32)], axis=0)[None]  # [1, 4, n]
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, :, 0, 0] = [30.0, -15.0, -15.0]  # fire: R - (G + B) / 2
    b = np.array([-20.0, -7.0], np.float32)
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Reshape", ["probs", "shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, n])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(boxes, "boxes"),
                     numpy_helper.from_array(np.array([1, 2, n], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="citybrain-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
