"""Camera-gateway section of the device config (owned by edge/camera).

Zones use normalised coordinates (0..1 of frame width/height) so a config survives a resolution change
of the camera. Every threshold that tests need in seconds is in seconds (litter "T minutes" = 60*T s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID = r"^[A-Za-z0-9_-]{1,64}$"
KINDS = ("crowd", "fire", "smoke", "litter")
EventKind = Literal["crowd", "fire", "smoke", "litter"]
# "auto": the ONNX model when one is configured or shipped (edge/camera/models) and it knows the kind's
# label, otherwise the classical path. It is the crowd default, so a box with the model counts people with it.
Backend = Literal["auto", "classical", "onnx", "off"]
Region = tuple[float, float, float, float]  # normalised x0, y0, x1, y1
# Which detector label feeds which rule: a YOLO model's class names are mapped onto these labels.
LABEL_OF_KIND: dict[str, str] = {"crowd": "person", "fire": "fire", "smoke": "smoke", "litter": "litter"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Zone(_Strict):
    id: str = Field(pattern=ID)
    polygon: list[tuple[float, float]] = Field(min_length=3, max_length=64)
    kinds: list[EventKind] = Field(default_factory=lambda: list(KINDS))

    @field_validator("polygon")
    @classmethod
    def _normalised(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in v:
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError("polygon points are normalised: 0 <= x, y <= 1")
        return v


class CrowdRule(_Strict):
    min_count: int = Field(default=8, ge=1, le=1000)
    dwell_s: float = Field(default=30.0, ge=0)


class AreaRule(_Strict):
    # Fraction of the zone's area covered by the detected regions, held for persist_s.
    min_area_frac: float = Field(default=0.002, gt=0, le=1)
    persist_s: float = Field(default=5.0, ge=0)


class LitterRule(_Strict):
    static_s: float = Field(default=300.0, ge=0)  # "static for T minutes"
    min_area_frac: float = Field(default=0.0005, gt=0, le=1)  # of the frame
    max_area_frac: float = Field(default=0.05, gt=0, le=1)


class Lifecycle(_Strict):
    # Condition must be false this long before an incident ends (debounce flapping detections).
    end_after_s: float = Field(default=15.0, ge=0)
    update_every_s: float = Field(default=60.0, gt=0)  # at most one "update" per incident per period
    cooldown_s: float = Field(default=120.0, ge=0)  # after an end, no new start for the same zone+kind


class Rules(_Strict):
    crowd: CrowdRule = Field(default_factory=CrowdRule)
    fire: AreaRule = Field(default_factory=lambda: AreaRule(min_area_frac=0.002, persist_s=3.0))
    smoke: AreaRule = Field(default_factory=lambda: AreaRule(min_area_frac=0.01, persist_s=5.0))
    litter: LitterRule = Field(default_factory=LitterRule)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)


class OnnxConfig(_Strict):
    model_path: Path
    model_version: str = Field(default="", max_length=64)
    input_size: tuple[int, int] = (640, 640)  # (width, height) the model expects
    # "yolov8": output [1, 4+C, N] (cx, cy, w, h, class scores); "yolov5": [1, N, 5+C] with objectness;
    # "ssd": a TensorFlow Object Detection API export (uint8 NHWC RGB in; detection_boxes [1, N, 4] as
    # normalised ymin, xmin, ymax, xmax, detection_scores, detection_classes, num_detections out).
    output_format: Literal["yolov8", "yolov5", "ssd"] = "yolov8"
    class_map: dict[int, str] = Field(default_factory=lambda: {0: "person"})  # class index -> label
    conf_threshold: float = Field(default=0.35, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, ge=0, le=1)
    max_detections: int = Field(default=200, ge=1, le=256)
    threads: int = Field(default=1, ge=1, le=64)
    # Small, far-away people vanish when a whole frame is squeezed into 300x300: the model also runs on
    # these windows (normalised x0, y0, x1, y1) and the boxes are merged. Each window costs one inference.
    tiles: list[Region] = Field(default_factory=list, max_length=16)
    full_frame: bool = True  # also run on the whole frame
    every_s: float = Field(default=0.0, ge=0)  # reuse the last answer for this long (stream time)

    @field_validator("tiles")
    @classmethod
    def _tiles_normalised(cls, v: list[Region]) -> list[Region]:
        for x0, y0, x1, y1 in v:
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError("tiles are normalised x0, y0, x1, y1 with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        return v


MODELS_DIR = Path(__file__).resolve().parent / "models"
SHIPPED_PERSON_MODEL = MODELS_DIR / "ssdlite_pedestrian.onnx"
# 2x2 overlapping windows plus the whole frame: on vtest.avi's hand-counted frames this brings the mean
# count error from 1.5 to under 1 (bench/video.py); every_s keeps it to 5 inferences per camera-second.
GRID_2X2: list[Region] = [(0.0, 0.0, 0.56, 0.56), (0.44, 0.0, 1.0, 0.56), (0.0, 0.44, 0.56, 1.0),
                          (0.44, 0.44, 1.0, 1.0)]


def shipped_person_model() -> OnnxConfig | None:
    """The pedestrian detector that ships in edge/camera/models (PROVENANCE.md), if it is installed."""
    if not SHIPPED_PERSON_MODEL.is_file():
        return None
    return OnnxConfig(model_path=SHIPPED_PERSON_MODEL, model_version="ssdlite-pedestrian-0.2",
                      input_size=(300, 300), output_format="ssd", class_map={1: "person"},
                      conf_threshold=0.3, iou_threshold=0.4, tiles=GRID_2X2, every_s=1.0)


class ClassicalConfig(_Strict):
    analysis_width: int = Field(default=320, ge=80, le=1920)  # colour/motion analysis runs downscaled
    person_width: int = Field(default=640, ge=128, le=1920)  # people detection resolution
    person_every_s: float = Field(default=1.0, ge=0)  # people detection is the costly part: rate-limit it
    motion_threshold: float = Field(default=0.002, ge=0, le=1)  # changed-pixel fraction that counts as motion


class CameraSource(_Strict):
    id: str = Field(pattern=ID)
    url: str = Field(min_length=1, description="RTSP/HTTP URL, video file path, or USB device index")
    loop: bool = False
    # Files are read at their own frame rate (like a live camera) unless realtime is False.
    realtime: bool = True
    max_fps: float = Field(default=5.0, gt=0, le=60)  # analysis rate limit per camera
    zones: list[Zone] = Field(default_factory=list, max_length=32)
    tiles: list[Region] | None = None  # per-camera override of the person model's windows (onnx.tiles)
    detectors: dict[EventKind, Backend] = Field(default_factory=dict)  # per kind; default from section
    rules: Rules | None = None  # per-camera override of the section's rules
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)

    @model_validator(mode="after")
    def _unique_zones(self) -> CameraSource:
        ids = [z.id for z in self.zones]
        if len(ids) != len(set(ids)):
            raise ValueError("zones: zone ids must be unique per camera")
        return self


class CameraSection(_Strict):
    cameras: list[CameraSource] = Field(default_factory=list, max_length=16)
    detectors: dict[EventKind, Backend] = Field(
        default_factory=lambda: {"crowd": "auto", "fire": "classical", "smoke": "classical",
                                 "litter": "classical"}
    )
    rules: Rules = Field(default_factory=Rules)
    classical: ClassicalConfig = Field(default_factory=ClassicalConfig)
    onnx: OnnxConfig | None = None
    snapshot_max_bytes: int = Field(default=60_000, ge=4_000, le=150_000)  # JPEG cap (b64 < 200 KiB)
    # A dropped stream is reopened after min, doubling up to max: the worst wait between the camera's
    # return and the next frame is about reconnect_max_s plus open_timeout_s.
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    open_timeout_s: float = Field(default=10.0, gt=0, le=120)  # RTSP/HTTP connect
    read_timeout_s: float = Field(default=5.0, gt=0, le=120)  # no frame this long = the stream is lost
    rtsp_transport: Literal["tcp", "udp"] = "tcp"

    @model_validator(mode="after")
    def _consistent(self) -> CameraSection:
        ids = [c.id for c in self.cameras]
        if len(ids) != len(set(ids)):
            raise ValueError("cameras: camera ids must be unique")
        uses_onnx = "onnx" in self.detectors.values() or any(
            "onnx" in c.detectors.values() for c in self.cameras
        )
        if uses_onnx and self.onnx is None:
            raise ValueError("onnx: a detector is set to 'onnx' but no onnx section (model_path) is given")
        return self

    def backend_for(self, cam: CameraSource, kind: str) -> str:
        return cam.detectors.get(kind, self.detectors.get(kind, "off"))  # type: ignore[call-overload]

    def resolve(self, cam: CameraSource, kind: str) -> tuple[str, OnnxConfig | None]:
        """The backend that really runs `kind` on `cam` ("auto" decided) and its model config, if any."""
        backend = self.backend_for(cam, kind)
        if backend != "auto":
            return backend, self.onnx if backend == "onnx" else None
        label = LABEL_OF_KIND[kind]
        if self.onnx is not None and label in self.onnx.class_map.values():
            return "onnx", self.onnx
        shipped = shipped_person_model() if label == "person" else None
        return ("onnx", shipped) if shipped is not None else ("classical", None)

    def rules_for(self, cam: CameraSource) -> Rules:
        return cam.rules or self.rules
