"""Answer models of /api/v1/channel (issue 16: the OpenAPI document says what each route returns). The input
models stay beside their routes in routes.py. Keys and types follow central/channel/service.py and the
columns of central/channel/store.py; times are Unix seconds (floats) as stored."""

from __future__ import annotations

from typing import Literal

from central.schema import Out
from protocol.signing import Algorithm

GrantStatus = Literal["active", "expired", "revoked"]


# ---- answers ---------------------------------------------------------------------------------------------
class SigningKeyOut(Out):
    """The hub's grant-signing public key, for scene services that verify grant tokens offline."""

    alg: Algorithm
    kid: str
    pub: str  # base64 of the raw public key


class ChannelSceneOut(Out):
    """A city-code scene marked as an access channel: the one service its grants reach and who may ask."""

    app_id: int
    org: str
    service_name: str
    service_addr: str
    service_port: int
    ttl_s: int
    gateway_public_key: str
    endpoint: str  # the gateway's host:port
    terminals: list[str]  # principal names of the authorised terminals
    enabled: bool
    created_by: str
    created_at: float
    scene_name: str | None  # the codes application's scene name


class GrantOut(Out):
    """One access grant: the peer it admits, for how long, and how it ended (never the peer's private key)."""

    id: str
    app_id: int
    org: str
    serial: str  # the city code it was granted for
    identity_id: str
    via: str  # the terminal ("apikey:<name>") or "appkey:<application id>" that asked
    peer_public_key: str
    peer_address: str
    allowed_ips: str
    issued_at: float
    expires_at: float
    status: GrantStatus
    ended_at: float | None
    end_reason: str | None


class GrantClaimsOut(Out):
    """The claims inside a grant token (what a scene service reads after checking the signature)."""

    v: int
    gid: str
    scene: int
    service: str  # "address:port"
    serial: str
    sub: str  # the code's identity
    peer: str
    addr: str
    nbf: int
    exp: int
    kid: str


class IssuedGrantOut(Out):
    """A fresh grant: its row, the signed token and its claims, and the client's WireGuard config (which holds
    the peer's private key: shown only in this answer)."""

    grant: GrantOut
    token: str
    claims: GrantClaimsOut
    wireguard_config: str
