"""ONNX Runtime backend for YOLO- and SSD-style detectors (boxes + class scores out, NMS here for YOLO).

The model file comes from the device config (or the pedestrian model shipped in edge/camera/models);
nothing is downloaded. Output layouts:
  yolov8: [1, 4 + C, N]  rows cx, cy, w, h, then one score per class (letterboxed float RGB 0..1 in)
  yolov5: [1, N, 5 + C]  cx, cy, w, h, objectness, class scores
  ssd:    TensorFlow Object Detection API export: uint8 NHWC RGB in (stretched to input_size, as the
          model was trained), detection_boxes [1, N, 4] normalised ymin, xmin, ymax, xmax,
          detection_scores [1, N], detection_classes [1, N] (1-based ids), num_detections [1]; the
          graph did its own NMS.
With `tiles` the model also runs on windows of the frame (small far-away people survive the downscale)
and the boxes of all windows are merged by NMS plus a "mostly inside a better box" rule.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import cv2
import numpy as np

from edge.camera.config import OnnxConfig, Region
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
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.version = cfg.model_version or path.stem
        self.inferences = 0
        if cfg.output_format == "ssd":
            self._ssd = {k: self._output("detection_" + k) for k in ("boxes", "scores", "classes")}

    def _output(self, key: str) -> int:
        for i, name in enumerate(self.output_names):
            if key in name:
                return i
        raise OnnxModelError(f"onnx.output_format: ssd model has no output named like {key!r} "
                             f"(outputs: {', '.join(self.output_names)})")

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        self.inferences += 1
        return self.session.run(None, {self.input_name: blob})


_sessions: dict[tuple[str, int], OnnxSession] = {}
_sessions_lock = threading.Lock()


def session_for(cfg: OnnxConfig) -> OnnxSession:
    """One session per model file and thread count for the whole process (16 cameras, one model)."""
    key = (str(Path(cfg.model_path).resolve()), cfg.threads)
    with _sessions_lock:
        s = _sessions.get(key)
        if s is None or s.cfg != cfg:
            s = _sessions[key] = OnnxSession(cfg)
        return s


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class OnnxDetector:
    name = "onnx"

    def __init__(self, session: OnnxSession, tiles: list[Region] | None = None) -> None:
        self.s = session
        self.cfg = session.cfg
        self.version = session.version
        self.tiles = self.cfg.tiles if tiles is None else tiles
        self._last_ts = -1e18
        self._last: list[Detection] = []

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

    def detect(self, frame: np.ndarray, ts: float, labels: set[str],
               people: list[Detection] | None = None) -> list[Detection]:
        if self.cfg.every_s > 0 and 0 <= ts - self._last_ts < self.cfg.every_s:
            return [d for d in self._last if d.label in labels]
        h, w = frame.shape[:2]
        windows = [(0, 0, w, h)] if self.cfg.full_frame or not self.tiles else []
        windows += [(int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h)) for x0, y0, x1, y1 in self.tiles]
        dets: list[Detection] = []
        for x0, y0, x1, y1 in windows:
            crop = frame[y0:y1, x0:x1]
            for d in self._detect_one(crop, labels):
                d.x += x0
                d.y += y0
                dets.append(d)
        if len(windows) > 1:
            dets = merge(dets, self.cfg.iou_threshold)[: self.cfg.max_detections]
        self._last_ts, self._last = ts, dets
        return dets

    def _detect_one(self, frame: np.ndarray, labels: set[str]) -> list[Detection]:
        if self.cfg.output_format == "ssd":
            iw, ih = self.cfg.input_size
            blob = cv2.cvtColor(cv2.resize(frame, (iw, ih)), cv2.COLOR_BGR2RGB)  # bilinear, as the package feeds it
            outs = self.s.run(blob[None])
            i = self.s._ssd
            return self.decode_ssd(np.asarray(outs[i["boxes"]]), np.asarray(outs[i["scores"]]),
                                   np.asarray(outs[i["classes"]]), frame.shape[1], frame.shape[0], labels)
        blob, r, px, py = self.preprocess(frame)
        out = self.s.run(blob)[0]
        return self.decode(np.asarray(out), r, px, py, frame.shape[1], frame.shape[0], labels)

    def decode_ssd(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, fw: int, fh: int,
                   labels: set[str]) -> list[Detection]:
        cfg = self.cfg
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2]:
            raise OnnxModelError(f"onnx output: ssd expects boxes [1, N, 4] and scores [1, N], got "
                                 f"{list(boxes.shape)} and {list(scores.shape)}")
        wanted = {i for i, name in cfg.class_map.items() if name in labels}
        b, sc, cl = boxes[0], scores[0], classes[0].astype(np.int64)
        sel = (sc >= cfg.conf_threshold) & np.isin(cl, list(wanted))
        out = []
        for (y1, x1, y2, x2), s, c in zip(b[sel], sc[sel], cl[sel], strict=True):
            x1c, y1c = float(np.clip(x1, 0, 1)) * fw, float(np.clip(y1, 0, 1)) * fh
            x2c, y2c = float(np.clip(x2, 0, 1)) * fw, float(np.clip(y2, 0, 1)) * fh
            if x2c > x1c and y2c > y1c:
                out.append(Detection(cfg.class_map[int(c)], x1c, y1c, x2c - x1c, y2c - y1c, score=float(s)))
        return out[: cfg.max_detections]

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


def merge(dets: list[Detection], iou: float, inside: float = 0.6) -> list[Detection]:
    """Merge boxes of overlapping windows: per-label NMS, then drop a box lying mostly (`inside` of its
    area) within a better kept box (a person cut in half at a window's edge is found twice)."""
    out: list[Detection] = []
    for label in sorted({d.label for d in dets}):
        group = [d for d in dets if d.label == label]
        xyxy = np.array([[d.x, d.y, d.x + d.w, d.y + d.h] for d in group], np.float32)
        kept: list[Detection] = []
        for i in nms(xyxy, np.array([d.score for d in group], np.float32), iou):
            d = group[i]
            if not any(_inter(d, k) > inside * d.w * d.h for k in kept):
                kept.append(d)
        out += kept
    return sorted(out, key=lambda d: -d.score)


def _inter(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy
