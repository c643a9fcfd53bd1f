"""Answers of the devices API (response models). The request bodies stay beside their routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from central.schema import Out

Kind = Literal["camera", "scanner"]


class DeviceOut(Out):
    """A provisioned device and what it last said about itself. `state` is the hub's verdict (online only
    while the broker says so and heartbeats are not overdue); `status` what the broker last reported."""

    id: str = Field(description="site/device")
    site: str
    device: str
    kind: Kind
    name: str | None
    org_path: str
    state: Literal["online", "offline"]
    status: Literal["unknown", "online", "offline"] | None
    status_at: str | None
    last_heartbeat_at: str | None
    queue_depth: int
    queue_dropped: int
    # the device's last heartbeat as it sent it (protocol.messages.Heartbeat); not re-validated here, so
    # a device on an older contract still lists
    heartbeat: dict[str, Any] | None


class DeviceEventOut(Out):
    """One event the bridge stored for a device; `payload` is the event message as the device sent it."""

    event_id: str
    kind: str
    ts: str
    received_at: str
    phase: str | None
    incident_id: str | None
    camera: str | None
    zone: str | None
    score: float | None
    count: int | None
    payload: dict[str, Any]


class MqttConfigOut(Out):
    """How the device reaches the broker; `ca_file` only when the hub offers TLS."""

    host: str
    port: int
    username: str
    password: str = Field(description="shown once, in this answer only")
    tls: bool
    ca_file: str | None = None


class OutboxConfigOut(Out):
    """Where the device keeps its durable outbox."""

    path: str


class CityRootKeyOut(Out):
    """The city root public key as protocol.signing writes it (PublicKey.to_dict)."""

    alg: str
    kid: str
    pub: str


class ScannerConfigOut(Out):
    """A scan terminal's section: the city root key it verifies codes with (filled by codes)."""

    city_root_key: CityRootKeyOut


class DeviceConfigOut(Out):
    """The ready config of a freshly provisioned device (edge/config.py's DeviceConfig reads it)."""

    schema_version: int
    site: str
    device: str
    kind: Kind
    name: str
    mqtt: MqttConfigOut
    outbox: OutboxConfigOut
    heartbeat_s: int
    scanner: ScannerConfigOut | None = None


class ProvisionedOut(Out):
    """A new device and its config."""

    device: DeviceOut
    config: DeviceConfigOut


class CommandOut(Out):
    """A command queued for a device; its ack arrives later over MQTT."""

    cmd_id: str


class BrokerAuthnOut(Out):
    """EMQX 5 HTTP authentication answer: `allow` or `deny` (never `ignore`: the hub is the authority for
    every account it knows, and an unknown one is refused, not passed down the chain)."""

    result: Literal["allow", "deny"]
    is_superuser: bool = Field(description="always false: the hub's own user is held to its rules too")


class BrokerAuthzOut(Out):
    """EMQX 5 HTTP authorization answer for one publish or subscribe."""

    result: Literal["allow", "deny"]
