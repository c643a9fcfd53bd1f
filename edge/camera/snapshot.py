"""Size-capped JPEG snapshots with the incident's boxes drawn on them."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from edge.camera.detectors import Detection

COLOURS = {"person": (255, 160, 0), "fire": (0, 0, 255), "smoke": (200, 200, 200), "litter": (0, 200, 255)}


def annotate(frame: np.ndarray, boxes: list[Detection], polygon: np.ndarray | None = None) -> np.ndarray:
    img = frame.copy()
    if polygon is not None:
        cv2.polylines(img, [polygon.astype(np.int32)], True, (0, 255, 0), 2)
    for b in boxes[:64]:
        c = COLOURS.get(b.label, (255, 255, 255))
        cv2.rectangle(img, (int(b.x), int(b.y)), (int(b.x + b.w), int(b.y + b.h)), c, 2)
    return img


def jpeg_capped(img: np.ndarray, max_bytes: int) -> bytes:
    """Encode as JPEG no larger than max_bytes: lower the quality first, then halve the size."""
    while True:
        for q in (85, 70, 55, 40, 25):
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok and len(buf) <= max_bytes:
                return buf.tobytes()
        h, w = img.shape[:2]
        if w <= 32 or h <= 32:
            raise ValueError(f"snapshot_max_bytes: cannot fit a JPEG into {max_bytes} bytes")
        img = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def snapshot_b64(frame: np.ndarray, boxes: list[Detection], polygon: np.ndarray | None, max_bytes: int) -> str:
    return base64.b64encode(jpeg_capped(annotate(frame, boxes, polygon), max_bytes)).decode("ascii")
