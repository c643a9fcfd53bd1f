"""One settings model for the hub (env `CITYBRAIN_*` or a JSON/YAML file), Frigate-style."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=18830, ge=1, le=65535)
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    username: str = "hub"
    password: str = ""
    ca_file: Path | None = None
    client_id: str = "citybrain-hub"
    enabled: bool = True
    # Broker-side files the hub writes when it provisions devices (then signals mosquitto to reload).
    passwd_file: Path | None = None
    acl_file: Path | None = None
    pid_file: Path | None = None


class SecuritySettings(BaseModel):
    # "gm" = domestic-crypto profile (国产化): SM2 signatures, SM3 hashes, SM4 encryption.
    crypto_profile: Literal["intl", "gm"] = "intl"
    session_idle_minutes: int = Field(default=30, ge=1)
    lockout_failures: int = Field(default=5, ge=1)
    lockout_minutes: int = Field(default=15, ge=1)
    login_rate_per_minute: int = Field(default=30, ge=1)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)  # CORS off unless origins are listed
    tls_cert: Path | None = None
    tls_key: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYBRAIN_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("var/hub")
    db_path: Path | None = None  # defaults to data_dir/hub.db
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    device_offline_after_s: int = Field(default=90, ge=5)
    # Background consumers of the stored events (video correlation) run inside this process unless
    # they are run as their own processes (`citybrain hub video correlate`), e.g. to spread CPU.
    inline_consumers: bool = True

    @property
    def database(self) -> Path:
        return self.db_path or self.data_dir / "hub.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def load_settings(path: Path | None = None) -> Settings:
    """Settings from a JSON/YAML file (if given) overlaid by environment variables."""
    if path is None:
        return Settings()
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return Settings(**data)
