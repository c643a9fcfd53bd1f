"""Camera-gateway section of the device config (owned by edge/camera)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CameraSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    url: str = Field(min_length=1, description="RTSP/HTTP URL, video file path, or USB device index")
    loop: bool = False
    max_fps: float = Field(default=5.0, gt=0, le=60)


class CameraSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cameras: list[CameraSource] = Field(default_factory=list, max_length=16)
