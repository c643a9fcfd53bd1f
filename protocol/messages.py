"""Pydantic v2 models of every MQTT payload in the contract, each carrying `schema_version`.

Strict about what arrives (extra fields forbidden, bounded sizes) so a bad payload is refused at the
boundary with the field named, never half-stored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol import SCHEMA_VERSION

MAX_PAYLOAD_BYTES = 256 * 1024  # snapshots are size-capped JPEGs; anything bigger is refused
MAX_SNAPSHOT_B64 = 200 * 1024

Kind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    # uuid7-like ordering is not needed; uniqueness is. uuid4 hex: 122 random bits.
    return uuid.uuid4().hex


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)
    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}; this build speaks {SCHEMA_VERSION}")
        return v


class Status(Message):
    """Retained on .../status; the broker publishes the device's last will (`offline`) when it drops."""

    state: Literal["online", "offline"]
    ts: datetime = Field(default_factory=now_utc)
    kind: Literal["camera", "scanner"] | None = None
    version: str | None = Field(default=None, max_length=64)


class Heartbeat(Message):
    ts: datetime = Field(default_factory=now_utc)
    uptime_s: float = Field(ge=0)
    queue_depth: int = Field(ge=0)
    queue_dropped: int = Field(default=0, ge=0)
    cpu_percent: float | None = Field(default=None, ge=0, le=100 * 256)
    model_version: str | None = Field(default=None, max_length=64)
    trust_version: int | None = Field(default=None, ge=0)
    revocation_version: int | None = Field(default=None, ge=0)
    fps_in: float | None = Field(default=None, ge=0)
    fps_analysed: float | None = Field(default=None, ge=0)
    frames_dropped: int | None = Field(default=None, ge=0)
    extra: dict[str, float | int | str | None] = Field(default_factory=dict, max_length=32)


class Box(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float
    y: float
    w: float = Field(ge=0)
    h: float = Field(ge=0)
    label: str = Field(default="", max_length=32)
    score: float = Field(default=1.0, ge=0, le=1)


class Event(Message):
    event_id: str = Field(default_factory=new_event_id, pattern=r"^[A-Za-z0-9_-]{8,64}$")
    kind: Kind
    ts: datetime = Field(default_factory=now_utc)
    phase: Literal["start", "update", "end", "instant"] = "instant"
    incident_id: str | None = Field(default=None, max_length=64)  # groups start/update/end of one incident
    camera: str | None = Field(default=None, max_length=64)
    zone: str | None = Field(default=None, max_length=64)
    score: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=0)
    boxes: list[Box] = Field(default_factory=list, max_length=256)
    backend: str | None = Field(default=None, max_length=64)
    model_version: str | None = Field(default=None, max_length=64)
    snapshot_jpeg_b64: str | None = Field(default=None, max_length=MAX_SNAPSHOT_B64)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    attrs: dict[str, Any] = Field(default_factory=dict, max_length=32)


Verdict = Literal[
    "valid", "expired", "revoked", "unknown-key", "bad-signature", "malformed", "wrong-system", "replayed",
    "unfiled-url",
]


class ScanRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scan_id: str = Field(default_factory=new_event_id, pattern=r"^[A-Za-z0-9_-]{8,64}$")
    serial: str | None = Field(default=None, max_length=64)
    code_system: str | None = Field(default=None, max_length=16)
    dept: str | None = Field(default=None, max_length=32)
    verdict: Verdict
    reason: str = Field(default="", max_length=256)
    ts: datetime = Field(default_factory=now_utc)
    location: str | None = Field(default=None, max_length=128)


class ScanBatch(Message):
    batch_id: str = Field(default_factory=new_event_id, pattern=r"^[A-Za-z0-9_-]{8,64}$")
    records: list[ScanRecord] = Field(min_length=1, max_length=1000)


class Cmd(Message):
    cmd_id: str = Field(default_factory=new_event_id, pattern=r"^[A-Za-z0-9_-]{8,64}$")
    action: Literal["config", "snapshot", "restart", "ping"]
    args: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=now_utc)


class Ack(Message):
    cmd_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    ok: bool
    detail: str = Field(default="", max_length=1024)
    ts: datetime = Field(default_factory=now_utc)


CHANNEL_MODELS: dict[str, type[Message]] = {
    "status": Status,
    "hb": Heartbeat,
    "event": Event,
    "scan": ScanBatch,
    "cmd": Cmd,
    "ack": Ack,
}


class PayloadError(ValueError):
    """A payload refused at the boundary; `reason` is a short class name for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_payload(model: type[Message], raw: bytes) -> Message:
    """Validate raw MQTT bytes against a model: oversize, bad JSON, wrong version and schema errors each
    raise PayloadError with a distinct reason and the offending field named."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        if first.get("type") == "json_invalid":
            raise PayloadError("malformed_json", first.get("msg", "invalid JSON")) from None
        if any(err.get("loc", ())[:1] == ("schema_version",) for err in errs):
            raise PayloadError("schema_version", "unsupported schema_version") from None
        raise PayloadError("schema", f"{loc}: {first.get('msg')}") from None
