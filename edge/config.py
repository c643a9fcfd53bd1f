"""Device config: one pydantic model for camera gateways and scan terminals (schema in firmware_configs/).

`load_config` turns every problem into a `ConfigError` whose lines name the field, e.g.
`mqtt.port: Input should be less than or equal to 65535`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.camera.config import CameraSection
from edge.scanner.config import ScannerSection

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=18830, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=129)
    password: str = Field(min_length=1)
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Path("var/edge/outbox.db")
    max_messages: int = Field(default=200_000, ge=10)
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024)
    # When full: drop the oldest queued message (keep the newest picture of the world) or refuse new ones.
    on_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"


class DeviceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = 1
    site: str = Field(pattern=ID_PATTERN)
    device: str = Field(pattern=ID_PATTERN)
    kind: Literal["camera", "scanner"]
    name: str = Field(default="", max_length=128)
    mqtt: MqttConfig
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    heartbeat_s: float = Field(default=15.0, ge=0.5, le=3600)
    camera: CameraSection | None = None
    scanner: ScannerSection | None = None

    @model_validator(mode="after")
    def _section_matches_kind(self) -> DeviceConfig:
        if self.kind == "camera" and self.camera is None:
            self.camera = CameraSection()
        if self.kind == "scanner" and self.scanner is None:
            self.scanner = ScannerSection()
        return self


class ConfigError(ValueError):
    def __init__(self, path: str, errors: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(errors))
        self.errors = errors


def parse_config(data: object, source: str = "config") -> DeviceConfig:
    try:
        return DeviceConfig.model_validate(data)
    except ValidationError as e:
        errs = [f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(source, errs) from None


def load_config(path: Path) -> DeviceConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"(file): {e.strerror}"]) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(str(path), [f"(syntax): {e}"]) from None
    return parse_config(data, str(path))


def json_schema() -> dict[str, object]:
    return DeviceConfig.model_json_schema()
