"""Pydantic v2 models of every MQTT payload in the contract, each carrying `schema_version`.

Strict about what arrives (extra fields forbidden, bounded sizes, strict types on the wire: `true` is not
an integer, integers fit SQLite's 64 bits, no inf/NaN) so a bad payload is refused at the boundary with the
field named, never half-stored.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from protocol import SCHEMA_VERSION, topics

MAX_PAYLOAD_BYTES = 256 * 1024  # snapshots are size-capped JPEGs; anything bigger is refused
MAX_SNAPSHOT_B64 = 200 * 1024

INT64_MAX = 2**63 - 1  # what an SQLite INTEGER holds: a bigger one would fail the whole store transaction
RECEIPT_MAX_IDS = 1000  # ids per receipt message (a receipt of 1,000 ids is about 40 KB)
ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"

Kind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
_ID_RE = re.compile(ID_PATTERN)
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
MessageId = Annotated[str, Field(pattern=ID_PATTERN)]
# No inf/NaN anywhere (JSON `1e309` parses as inf); extra fields refused.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    # uuid7-like ordering is not needed; uniqueness is. uuid4 hex: 122 random bits.
    return uuid.uuid4().hex


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)
    schema_version: StrictInt = SCHEMA_VERSION  # StrictInt: `true == 1` must not pass as version 1

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


class CameraStatus(BaseModel):
    """One camera of a gateway, in its heartbeat (edge/camera/agent.py)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64)
    state: Literal["connecting", "live", "reconnecting", "ended"]
    fps_in: float = Field(default=0.0, ge=0)
    fps_analysed: float = Field(default=0.0, ge=0)
    cpu_percent: float = Field(default=0.0, ge=0, le=100 * 256)
    reconnects: int = Field(default=0, ge=0)
    dropped: int = Field(default=0, ge=0)
    down_s: float | None = Field(default=None, ge=0)  # seconds without a stream (None while live)
    last_error: str = Field(default="", max_length=200)
    model_versions: str = Field(default="", max_length=64)


class Heartbeat(Message):
    ts: datetime = Field(default_factory=now_utc)
    uptime_s: float = Field(ge=0)
    queue_depth: Count
    queue_dropped: Count = 0
    cpu_percent: float | None = Field(default=None, ge=0, le=100 * 256)
    model_version: str | None = Field(default=None, max_length=64)
    trust_version: Count | None = None
    revocation_version: Count | None = None
    # Scan terminals: seconds since their revocation list was signed (verdicts go "stale" past a maximum).
    revocation_age_s: float | None = Field(default=None, ge=0)
    fps_in: float | None = Field(default=None, ge=0)
    fps_analysed: float | None = Field(default=None, ge=0)
    frames_dropped: Count | None = None
    cameras: list[CameraStatus] | None = Field(default=None, max_length=16)  # camera gateways
    extra: dict[str, float | int | str | None] = Field(default_factory=dict, max_length=32)


class Box(BaseModel):
    model_config = _STRICT
    x: float
    y: float
    w: float = Field(ge=0)
    h: float = Field(ge=0)
    label: str = Field(default="", max_length=32)
    score: float = Field(default=1.0, ge=0, le=1)


class Event(Message):
    event_id: str = Field(default_factory=new_event_id, pattern=ID_PATTERN)
    kind: Kind
    ts: datetime = Field(default_factory=now_utc)
    phase: Literal["start", "update", "end", "instant"] = "instant"
    incident_id: str | None = Field(default=None, max_length=64)  # groups start/update/end of one incident
    camera: str | None = Field(default=None, max_length=64)
    zone: str | None = Field(default=None, max_length=64)
    score: float = Field(default=1.0, ge=0, le=1)
    count: Count | None = None
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
    # Scan terminal, failing closed: no valid revocation list held / list past its maximum age / the input
    # (image, frame) could not be read at all.
    "no-revocation-list", "stale", "unreadable",
]


class ScanRecord(BaseModel):
    model_config = _STRICT
    scan_id: str = Field(default_factory=new_event_id, pattern=ID_PATTERN)
    serial: str | None = Field(default=None, max_length=64)
    code_system: str | None = Field(default=None, max_length=16)
    dept: str | None = Field(default=None, max_length=32)
    verdict: Verdict
    reason: str = Field(default="", max_length=256)
    ts: datetime = Field(default_factory=now_utc)
    location: str | None = Field(default=None, max_length=128)


class ScanBatch(Message):
    batch_id: str = Field(default_factory=new_event_id, pattern=ID_PATTERN)
    records: list[ScanRecord] = Field(min_length=1, max_length=1000)


class Cmd(Message):
    cmd_id: str = Field(default_factory=new_event_id, pattern=ID_PATTERN)
    action: Literal["config", "snapshot", "restart", "ping"]
    args: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=now_utc)


class Ack(Message):
    cmd_id: str = Field(pattern=ID_PATTERN)
    ok: bool
    detail: str = Field(default="", max_length=1024)
    ts: datetime = Field(default_factory=now_utc)


class Refused(BaseModel):
    model_config = _STRICT
    id: MessageId
    reason: str = Field(max_length=64)


class Receipt(Message):
    """Hub -> device on .../receipt, published only after the store transaction holding these messages has
    committed. `stored`: ids (event_id, batch_id, cmd_id) now in the hub's store, including re-sends it
    already had; `refused`: ids it will never store (bad payload), with the reason. Either way the device
    may forget them; until then it keeps them in its outbox and sends them again."""

    stored: list[MessageId] = Field(default_factory=list, max_length=RECEIPT_MAX_IDS)
    refused: list[Refused] = Field(default_factory=list, max_length=RECEIPT_MAX_IDS)
    ts: datetime = Field(default_factory=now_utc)


CHANNEL_MODELS: dict[str, type[Message]] = {
    "status": Status,
    "hb": Heartbeat,
    "event": Event,
    "scan": ScanBatch,
    "cmd": Cmd,
    "ack": Ack,
    "receipt": Receipt,
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
        # strict on the wire: JSON `true` is no integer and "5" no number (datetimes still parse from text)
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        if first.get("type") == "json_invalid":
            raise PayloadError("malformed_json", first.get("msg", "invalid JSON")) from None
        if any(err.get("loc", ())[:1] == ("schema_version",) for err in errs):
            raise PayloadError("schema_version", "unsupported schema_version") from None
        raise PayloadError("schema", f"{loc}: {first.get('msg')}") from None


def loose_id(channel: str, raw: bytes) -> str | None:
    """The message id (event_id, batch_id, cmd_id) of a payload the hub refused, when one can still be
    read from it, so the refusal can be receipted and the device stops sending it. None if unreadable."""
    field = topics.RECEIPTED.get(channel)
    if field is None or len(raw) > MAX_PAYLOAD_BYTES:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    value = obj.get(field) if isinstance(obj, dict) else None
    return value if isinstance(value, str) and _ID_RE.match(value) else None
