"""One settings model for the hub, Frigate-style. Sources, lowest to highest: defaults < the YAML/JSON file
(`-c`, else `$CITYBRAIN_CONFIG`) < environment `CITYBRAIN_*` (nested with `__`) < command-line options.
The order is pydantic-settings' own (`Settings.settings_customise_sources`), so nested values merge per
field: `CITYBRAIN_MQTT__PORT` overrides the file's `mqtt.port` and keeps its `mqtt.host`."""

from __future__ import annotations

import os
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "CITYBRAIN_"
CONFIG_ENV = "CITYBRAIN_CONFIG"
# The file the Settings being built reads; a context variable so concurrent loads (threads, tests) of
# different files do not see each other's.
_config_file: ContextVar[Path | None] = ContextVar("citybrain_config_file", default=None)


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=18830, ge=1, le=65535)
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    username: str = "hub"
    password: str = ""
    ca_file: Path | None = None
    client_id: str = "citybrain-hub"
    # Ingest as a pool: every hub process (and `citybrain hub bridge`) subscribes through the shared
    # subscription `$share/<share_group>/...`, so the broker hands each device message to one of them. Pool
    # members use clean sessions and their own client ids (`<client_id>-<host>-<pid>`): a broker queues a
    # shared message even for an offline persistent member (mosquitto 2.0 does), so a dead member's session
    # would swallow its share. What was in flight to a member that dies is re-sent by the edge, whose outbox
    # keeps every message until a hub receipts it. None: one bridge with a persistent session (the default).
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    enabled: bool = True
    # Where provisioning puts device credentials and ACLs (central/devices/brokerauth.py). `mosquitto`: the
    # broker-side files below, then a SIGHUP through pid_file. `hooks`: nowhere but the hub's database; the
    # broker (EMQX 5) asks the hub's HTTP authentication/authorization endpoints, sending `hook_secret`.
    auth_backend: Literal["mosquitto", "hooks"] = "mosquitto"
    passwd_file: Path | None = None
    acl_file: Path | None = None
    pid_file: Path | None = None
    # The shared secret the broker sends as `Authorization: Bearer <secret>` to /api/v1/devices/mqtt/authn
    # and /authz; unset: those endpoints refuse every call.
    hook_secret: str | None = Field(default=None, min_length=16, validate_default=True)

    @field_validator("hook_secret")
    @classmethod
    def _hooks_need_secret(cls, v: str | None, info: ValidationInfo) -> str | None:
        # a field validator (not a model one): the error then names mqtt.hook_secret, and never echoes the
        # mqtt section with its password
        if v is None and info.data.get("auth_backend") == "hooks":
            raise ValueError("auth_backend hooks needs it (the broker sends it with each hook call)")
        return v


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
    # Bearer token Prometheus scrapes /metrics with (its `authorization` setting); unset: /metrics is open,
    # for a hub whose port only the monitoring network reaches.
    metrics_token: str | None = Field(default=None, min_length=16)


class RetentionSettings(BaseModel):
    """Days each kind of row is kept (None: for ever). Audit logs: at least 180 days, the floor China's
    Cybersecurity Law (art. 21) and MLPS level 3 set for network logs."""

    events_days: int | None = Field(default=90, ge=1)
    scans_days: int | None = Field(default=180, ge=1)
    cdrs_days: int | None = Field(default=365, ge=1)
    # The hub keeps ONE heartbeat per device (the latest, on its `devices` row, overwritten by the next):
    # nothing accumulates, so no store offers a "heartbeats" purge and a device's latest always stays.
    heartbeats_days: int | None = Field(default=None, ge=1)
    audit_days: int | None = Field(default=None, ge=180)
    interval_s: int = Field(default=3600, ge=10)


class WebhooksSettings(BaseModel):
    """The webhook outbox (central/webhooks): tries, back-off, leases and secret rotation."""

    max_attempts: int = Field(default=8, ge=1, le=100)  # then the delivery is dead (replayable)
    backoff_base_s: float = Field(default=2.0, gt=0)  # full jitter up to base * 2^(tries-1), at least base
    backoff_cap_s: float = Field(default=3600.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)  # a claimed delivery is one sender's for this long
    timeout_s: float = Field(default=10.0, gt=0)
    rotation_overlap_s: float = Field(default=86400.0, ge=0)  # the old secret still signs this long
    batch: int = Field(default=50, ge=1, le=1000)
    poll_s: float = Field(default=1.0, gt=0)
    # Run the `webhooks-deliver` worker in this hub process (any number may: claims are leased). Off for a
    # process that only enqueues, and for tests that deliver by calling `deliver_due()` themselves.
    worker: bool = True


class DialerSettings(BaseModel):
    """What the hub assumes of its dialer engines when it creates a task (the engines' own options rule)."""

    # Template languages the engines have a speech model for (`citybrain hub dialer run --asr-model
    # LANG=DIR`; pocketsphinx's bundled model is en only). A task in another language is DTMF-only, and
    # its creation answers a warning saying so.
    asr_languages: list[Literal["zh", "en"]] = Field(default_factory=lambda: ["en"])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("var/hub")
    db_path: Path | None = None  # the SQLite file when database_url is not set (default data_dir/hub.db)
    # The backend: sqlite:///<file> (embedded default) or postgresql://user:pass@host:port/db (psycopg 3).
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    device_offline_after_s: int = Field(default=90, ge=5)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    dialer: DialerSettings = Field(default_factory=DialerSettings)
    # Snapshots and call recordings (files + checksums; the database holds references). Default data_dir/media.
    media_dir: Path | None = None
    # Background consumers of the stored events (video correlation) run inside this process unless
    # they are run as their own processes (`citybrain hub video correlate`), e.g. to spread CPU.
    inline_consumers: bool = True
    # `hub serve`'s log lines: readable text, or one JSON object per line (with the request id) for a collector.
    log_format: Literal["text", "json"] = "text"
    # The hub's time zone (IANA name): dates on pages people read (the code page, the console) are shown in it.
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import available_timezones

        if v not in available_timezones():  # names only: ZoneInfo() would also try file paths
            raise ValueError(f"unknown time zone {v[:64]!r} (an IANA name such as Asia/Shanghai)")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: keyword arguments (the CLI's options) > CITYBRAIN_* > the file. YAML reads JSON too.
        file = _SettingsFile(settings_cls, yaml_file=_config_file.get())
        return init_settings, env_settings, dotenv_settings, file_secret_settings, file

    @property
    def database(self) -> Path:
        """The SQLite file (meaningful only when `database_url` is not a PostgreSQL URL)."""
        if self.database_url and self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return self.db_path or self.data_dir / "hub.db"

    @property
    def store_url(self) -> str:
        """What the store connects to: `database_url`, else the SQLite file."""
        return self.database_url or f"sqlite:///{self.database}"

    @property
    def media_root(self) -> Path:
        return self.media_dir or self.data_dir / "media"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


class SettingsError(ValueError):
    """Settings that cannot be loaded; one line per problem, each naming the field and where it came from."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _SettingsFile(YamlConfigSettingsSource):
    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            raise SettingsError([f"config: {file_path}: expected a mapping of settings, got a {type(data).__name__}"])
        return data


def config_path(path: Path | None = None) -> Path | None:
    """The settings file: the given one, else $CITYBRAIN_CONFIG, else none."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return path


def load_settings(path: Path | None = None, **options: Any) -> Settings:
    """Settings from the file (`path`, else $CITYBRAIN_CONFIG), overridden by CITYBRAIN_* environment
    variables, overridden by `options` (command-line options; None means "not given"). Every command that
    builds the hub's settings comes through here, so they all resolve the same way."""
    path = config_path(path)
    if path is not None and not path.is_file():
        raise SettingsError([f"config: {path}: no such file"])
    given = {k: v for k, v in options.items() if v is not None}
    token = _config_file.set(path)
    try:
        return Settings(**given)
    except ValidationError as e:
        raise SettingsError([_describe(err, path, given) for err in e.errors()]) from None
    except SettingsError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, OSError) as e:  # unreadable, or not a mapping at the top
        raise SettingsError([f"config: {path}: {' '.join(str(e).split())}"]) from None
    finally:
        _config_file.reset(token)


def _describe(err: Any, path: Path | None, options: dict[str, Any]) -> str:
    """`mqtt.port: Input should be ... (got 70000) [from environment CITYBRAIN_MQTT__PORT]`: the field, why,
    and the source that set it (the highest one holding it, as the precedence says)."""
    loc = [str(x) for x in err["loc"]]
    env_names = {k.upper() for k in os.environ}
    env = next((ENV_PREFIX + "__".join(loc[:i]).upper() for i in range(len(loc), 0, -1)
                if ENV_PREFIX + "__".join(loc[:i]).upper() in env_names), None)
    if loc and loc[0] in options:
        source = f"option --{loc[0].replace('_', '-')}"
    elif env:
        source = f"environment {env}"
    else:
        source = str(path) if path else "defaults"
    secret = any(part.endswith(("password", "key", "secret", "token")) for part in loc)  # hook_secret too
    got = "" if secret or err["type"] == "extra_forbidden" else f" (got {err['input']!r})"
    return f"{'.'.join(loc) or 'settings'}: {err['msg']}{got} [from {source}]"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
