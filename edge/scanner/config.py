"""Scan-terminal section of the device config (owned by edge/scanner)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ScannerSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city_root_key: dict[str, str] | None = Field(
        default=None, description="Pinned city root public key {alg, kid, pub}"
    )
    decoder: Literal["pyzbar", "zxing"] = "pyzbar"
    clock_skew_s: int = Field(default=300, ge=0, le=86400)
    location: str | None = Field(default=None, max_length=128)
    source: str | None = Field(default=None, description="camera index / stream URL / image dir")
