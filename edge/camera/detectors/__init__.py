"""Detectors behind one interface: a detector turns a frame into labelled boxes.

Labels are the rule vocabulary ("person", "fire", "smoke", "litter"); a YOLO model's classes are mapped
onto them by the config's class map, so rules never care which backend produced a box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class Detection:
    label: str
    x: float  # pixels of the full frame, top-left
    y: float
    w: float
    h: float
    score: float = 1.0
    area: float = field(default=-1.0)  # pixel area of the region (masks); -1 means the box area

    @property
    def pixel_area(self) -> float:
        return self.area if self.area >= 0 else self.w * self.h

    @property
    def foot(self) -> tuple[float, float]:
        # People stand in a zone with their feet: test the bottom-centre, not the box centre.
        return (self.x + self.w / 2, self.y + self.h)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


class Detector(Protocol):
    name: str  # backend name, e.g. "classical" or "onnx"
    version: str  # goes into Event.model_version

    def detect(self, frame: np.ndarray, ts: float, labels: set[str],
               people: list[Detection] | None = None) -> list[Detection]:
        """Detect `labels` in a BGR frame taken at stream time `ts` (seconds). May keep state. `people`:
        person boxes another detector already found in this frame (None: nobody looked)."""
        ...


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression on [N, 4] (x1, y1, x2, y2); returns kept indices, best first."""
    order = np.argsort(-scores)
    areas = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        union = areas[i] + areas[rest] - inter
        ov = np.where(union > 0, inter / np.maximum(union, 1e-9), 0)
        order = rest[ov <= iou]
    return keep
