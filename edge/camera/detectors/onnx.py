"""ONNX Runtime backend for YOLO-style detectors (letterbox in, boxes + class scores out, NMS here).

The model file comes from the device config; nothing is downloaded. Output layouts:
  yolov8: [1, 4 + C, N]  rows cx, cy, w, h, then one score per class
  yolov5: [1, N, 5 + C]  cx, cy, w, h, objectness, class scores
Coordinates are in model-input pixels; they are mapped back through the letterbox.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.camera.config import OnnxConfig
from edge.camera.detectors import Detection, nms


class OnnxModelError(ValueError):
    pass


class OnnxSession:
    """One InferenceSession shared by all cameras (ORT sessions are safe to `run` from several threads)."""

    def __init__(self, cfg: OnnxConfig) -> None:
        import onnxruntime as ort

        path = Path(cfg.model_path)
        if not path.is_file():
            raise OnnxModelError(f"onnx.model_path: no model file at {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a broken file
            raise OnnxModelError(f"onnx.model_path: cannot load {path}: {e}") from None
        self.cfg = cfg
        self.input_name = self.session.get_inputs()[0].name
        self.version = cfg.model_version or path.stem


class OnnxDetector:
    name = "onnx"

    def __init__(self, session: OnnxSession) -> None:
        self.s = session
        self.cfg = session.cfg
        self.version = session.version

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        iw, ih = self.cfg.input_size
        h, w = frame.shape[:2]
        r = min(iw / w, ih / h)
        nw, nh = round(w * r), round(h * r)
        px, py = (iw - nw) / 2, (ih - nh) / 2
        canvas = np.full((ih, iw, 3), 114, np.uint8)  # YOLO's letterbox grey
        canvas[int(py):int(py) + nh, int(px):int(px) + nw] = cv2.resize(frame, (nw, nh))
        blob = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        return blob, r, float(int(px)), float(int(py))

    def detect(self, frame: np.ndarray, ts: float, labels: set[str]) -> list[Detection]:
        blob, r, px, py = self.preprocess(frame)
        out = self.s.session.run(None, {self.s.input_name: blob})[0]
        return self.decode(np.asarray(out), r, px, py, frame.shape[1], frame.shape[0], labels)

    def decode(
        self, out: np.ndarray, r: float, px: float, py: float, fw: int, fh: int, labels: set[str]
    ) -> list[Detection]:
        cfg = self.cfg
        if out.ndim != 3 or out.shape[0] != 1:
            raise OnnxModelError(f"onnx output: expected [1, ...] 3-D tensor, got {list(out.shape)}")
        if cfg.output_format == "yolov8":
            pred = out[0].T  # [N, 4 + C]
            boxes, cls_scores = pred[:, :4], pred[:, 4:]
        else:
            pred = out[0]
            boxes, cls_scores = pred[:, :4], pred[:, 5:] * pred[:, 4:5]
        if cls_scores.shape[1] == 0:
            raise OnnxModelError("onnx output: no class scores in the output tensor")
        cls = cls_scores.argmax(axis=1)
        score = cls_scores[np.arange(len(cls)), cls]
        wanted = {i for i, name in cfg.class_map.items() if name in labels}
        sel = (score >= cfg.conf_threshold) & np.isin(cls, list(wanted))
        if not sel.any():
            return []
        boxes, score, cls = boxes[sel], score[sel], cls[sel]
        x1 = (boxes[:, 0] - boxes[:, 2] / 2 - px) / r
        y1 = (boxes[:, 1] - boxes[:, 3] / 2 - py) / r
        x2 = (boxes[:, 0] + boxes[:, 2] / 2 - px) / r
        y2 = (boxes[:, 1] + boxes[:, 3] / 2 - py) / r
        xyxy = np.stack([x1.clip(0, fw), y1.clip(0, fh), x2.clip(0, fw), y2.clip(0, fh)], axis=1)
        # Class-aware NMS: offset each class far apart so boxes of different classes never suppress.
        off = cls[:, None].astype(np.float32) * (max(fw, fh) + 1)
        keep = nms(xyxy + off, score, cfg.iou_threshold)[: cfg.max_detections]
        return [
            Detection(cfg.class_map[int(cls[i])], float(xyxy[i, 0]), float(xyxy[i, 1]),
                      float(xyxy[i, 2] - xyxy[i, 0]), float(xyxy[i, 3] - xyxy[i, 1]), score=float(score[i]))
            for i in keep
        ]
