"""Scan-terminal section of the device config (owned by edge/scanner)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol import signing


class ScannerSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city_root_key: dict[str, str] | None = Field(
        default=None, description="Pinned city root public key {alg, kid, pub}"
    )
    # zxing-cpp (with binarizer fallbacks) is ~7x faster than pyzbar and reads far more tilted, blurred and
    # glared codes (bench/scanner_decode.py); pyzbar (libzbar0) stays selectable as a fallback.
    decoder: Literal["pyzbar", "zxing"] = "zxing"
    clock_skew_s: int = Field(default=300, ge=0, le=86400)
    location: str | None = Field(default=None, max_length=128)
    source: str | None = Field(default=None, description="camera index / stream URL / video file / image dir")
    data_dir: Path | None = Field(
        default=None, description="trust lists + replay db; default: a 'scanner' dir beside the outbox"
    )
    # Fail closed on an old revocation list (EU DCC verifier apps use 24 h): past this age (from the list's
    # signed issue time; the hub re-signs hourly) verdicts are "stale", or valid but flagged with "warn".
    max_list_age_s: float = Field(default=86400, gt=0, le=30 * 86400,
                                  description="revocation list older than this makes verdicts stale (s)")
    on_stale: Literal["reject", "warn"] = Field(
        default="reject", description="reject: verdict 'stale'; warn: 'valid' flagged stale")
    allowed_url_prefixes: list[str] | None = Field(
        default=None, max_length=64, description="filed guide URLs; None = accept any guide URL"
    )
    max_fps: float = Field(default=10.0, gt=0, le=60)
    # A code held in front of the camera is in many consecutive frames: log it once per window.
    repeat_window_s: float = Field(default=3.0, ge=0, le=3600)
    batch_max: int = Field(default=100, ge=1, le=1000)
    batch_interval_s: float = Field(default=2.0, gt=0, le=3600)

    @field_validator("city_root_key")
    @classmethod
    def _root_key_parses(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        missing = [k for k in ("alg", "kid", "pub") if k not in v]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (need alg, kid, pub)")
        try:
            key = signing.PublicKey.from_dict(v)
            raw_len = len(key.raw)
        except (ValueError, KeyError) as e:
            raise ValueError(f"not a public key: {e}") from None
        if raw_len not in (32, 64):
            raise ValueError(f"pub: {raw_len} bytes is not an ed25519 (32) or sm2 (64) public key")
        return v

    def root_key(self) -> signing.PublicKey:
        if self.city_root_key is None:
            raise ValueError("scanner.city_root_key: not configured; a terminal cannot verify without it")
        return signing.PublicKey.from_dict(self.city_root_key)
