"""Access channel rules: which scenes are channels, who may ask for a grant, what a grant contains, and when
it ends. No HTTP types here; routes pass the caller in.

A grant is (1) a token signed with the hub's channel key (the scene's service can check it offline:
`verify_token`) and (2) a WireGuard peer config: a fresh X25519 key pair (base64, as `wg genkey` prints it),
one address from the pilot pool, and `AllowedIPs` = the scene's service address only. The gateway in front
of the service gets the matching [Peer] list (`gateway_peers`, also published retained over MQTT) and drops
a peer as soon as its grant expires or the code behind it is revoked.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from central.channel import store
from central.hub import Hub
from central.iam.audit import record
from central.iam.principal import Principal, under
from central.problems import HubError
from protocol import signing, topics

if TYPE_CHECKING:
    from central.store import Db

POOL = ipaddress.ip_network("10.77.0.0/16")  # pilot client addresses; .1 is the gateway itself
PEERS_TOPIC = f"{topics.ROOT}/channel/{{app_id}}/peers"  # retained, signed peer list for the scene's gateway
MAX_TTL_S = 8 * 3600


class ChannelError(HubError):
    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", status=status, field=field)
        self.detail = detail


def wg_keypair() -> tuple[str, str]:
    """(private, public) as base64 of the raw 32-byte X25519 keys, the format of `wg genkey | wg pubkey`."""
    k = X25519PrivateKey.generate()
    priv = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def check_wg_key(value: str, field: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ChannelError(422, field, "must be a WireGuard key: base64 of 32 bytes")
    return value


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64u_d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_token(token: str, key: signing.PublicKey, now: float | None = None) -> dict[str, Any]:
    """The claims of a grant token if its signature verifies and it is within its validity; else ValueError.
    (Revocation before expiry is known only to the hub and the gateway's peer list.)"""
    try:
        body_s, sig_s = token.split(".")
        body, sig = _b64u_d(body_s), _b64u_d(sig_s)
        claims = json.loads(body)
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"token: malformed ({e})") from None
    if claims.get("kid") != key.kid or not key.verify(body, sig):
        raise ValueError("token: bad signature")
    t = time.time() if now is None else now
    if not claims["nbf"] - 5 <= t < claims["exp"]:
        raise ValueError("token: expired or not yet valid")
    return dict(claims)


def peer_config(private_key: str, address: str, gateway_public_key: str, allowed_ips: str, endpoint: str,
                comment: str) -> str:
    """A wg-quick config for the client side (no DNS, no default route: only the scene's service)."""
    return (
        f"# {comment}\n"
        "[Interface]\n"
        f"PrivateKey = {private_key}\n"
        f"Address = {address}/32\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {gateway_public_key}\n"
        f"AllowedIPs = {allowed_ips}\n"
        f"Endpoint = {endpoint}\n"
        "PersistentKeepalive = 25\n"
    )


class ChannelService:
    def __init__(self, hub: Hub, clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.clock = clock  # injectable so tests can move time past a grant's expiry
        self._lock = threading.Lock()
        self._key: signing.PrivateKey | None = None

    # ---- keys -------------------------------------------------------------------------------------
    @property
    def signing_key(self) -> signing.PrivateKey:
        """The hub's grant-signing key (profile algorithm), created on first use, kept owner-only on disk."""
        with self._lock:
            if self._key is None:
                path: Path = self.hub.settings.keys_dir / "channel" / "grant-signing.json"
                if path.exists():
                    self._key = signing.PrivateKey.from_dict(json.loads(path.read_text()))
                else:
                    self._key = signing.generate_for_profile(self.hub.settings.security.crypto_profile)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        json.dump(self._key.to_dict(), f)
            return self._key

    # ---- scenes -----------------------------------------------------------------------------------
    def _codes(self) -> Any:
        from central.codes.service import service_of

        return service_of(self.hub)

    def application(self, app_id: int) -> dict[str, Any]:
        from central.codes.service import CodesError

        try:
            return dict(self._codes().application(app_id))
        except CodesError as e:
            raise ChannelError(e.status, "application_id", e.detail) from None

    def mark_scene(self, actor: str, app_id: int, service_name: str, service_addr: str, service_port: int,
                   ttl_s: int, gateway_public_key: str, endpoint: str, terminals: list[str]) -> dict[str, Any]:
        app = self.application(app_id)
        if app["status"] != "approved":
            raise ChannelError(409, "application_id", f"application {app_id} is {app['status']}, not approved")
        try:
            addr = ipaddress.ip_address(service_addr)
        except ValueError:
            raise ChannelError(422, "service_addr", "must be one IP address (the scene's service)") from None
        if addr in POOL:
            raise ChannelError(422, "service_addr", f"must lie outside the client pool {POOL}")
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise ChannelError(422, "ttl_s", f"must be 60..{MAX_TTL_S} seconds (grants are short-lived)")
        check_wg_key(gateway_public_key, "gateway_public_key")
        row = {"app_id": app_id, "org": app["org"], "service_name": service_name, "service_addr": str(addr),
               "service_port": service_port, "ttl_s": ttl_s, "gateway_public_key": gateway_public_key,
               "endpoint": endpoint, "terminals": json.dumps(sorted(set(terminals))), "enabled": 1,
               "created_by": actor, "created_at": self.clock()}
        with self.hub.store.tx() as db:
            store.upsert_scene(db, row)
            record(db, actor=actor, action="channel.scene.set", target=f"application:{app_id}", org=app["org"],
                   detail={"service": f"{addr}:{service_port}", "ttl_s": ttl_s, "terminals": sorted(set(terminals))})
        self.publish_peers(app_id)
        return self.scene(app_id)  # type: ignore[return-value]

    def scene(self, app_id: int) -> dict[str, Any] | None:
        with self.hub.store.read() as db:
            r = store.scene(db, app_id)
            return None if r is None else self._scene_dict(db, r)

    def _scene_dict(self, db: Db, d: dict[str, Any]) -> dict[str, Any]:
        from central.codes.store import scene_name

        d["terminals"] = json.loads(d["terminals"])
        d["enabled"] = bool(d["enabled"])
        d["scene_name"] = scene_name(db, d["app_id"])
        return d

    def scenes(self, scopes: list[str]) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            out = [self._scene_dict(db, r) for r in store.all_scenes(db)]
        return [d for d in out if any(under(d["org"], s) for s in scopes)]

    # ---- grants -----------------------------------------------------------------------------------
    def request_grant(self, text: str, principal: Principal | None = None, app_key_app: int | None = None
                      ) -> dict[str, Any]:
        """Verify the code (central/codes' online verify, at this service's clock), check the caller is an
        authorised terminal (principal with channel.grant over the scene, listed by name on the scene) or the
        scene's own app key, then issue. Every refusal is audited."""
        now = self.clock()
        self.sweep()
        result = self._codes().verify_online(text, now=now)
        who = principal.name if principal else f"appkey:{app_key_app}"
        scene = self.scene(int(result["application_id"])) if result.get("application_id") else None

        def refuse(status: int, field: str, why: str) -> ChannelError:
            with self.hub.store.tx() as db:
                record(db, actor=who, action="channel.grant.refused", target=result.get("serial"),
                       org=scene["org"] if scene else None, detail={"why": why, "verdict": result["verdict"]})
            return ChannelError(status, field, why)

        if result["verdict"] != "valid":
            raise refuse(403, "text", f"code is {result['verdict']}: {result['reason']}")
        if scene is None or not scene["enabled"]:
            raise refuse(403, "text", f"scene {result.get('scene')!r} is not marked as an access channel")
        if principal is not None:
            if not principal.allowed("channel.grant", scene["org"]):
                raise refuse(403, "authorization", f"{principal.name} lacks 'channel.grant' on {scene['org']}")
            via = principal.name  # a terminal signs in with its own API key: "apikey:<name>"
            if via not in scene["terminals"]:
                raise refuse(403, "terminal", f"{via} is not an authorised terminal of this scene")
        elif app_key_app is not None:
            if app_key_app != scene["app_id"]:
                raise refuse(403, "x-app-key", f"this app key belongs to application {app_key_app}, not the scene's")
            via = f"appkey:{app_key_app}"
        else:
            raise refuse(401, "authorization", "no caller")
        return self._issue(scene, result, via, now)

    def _issue(self, scene: dict[str, Any], result: dict[str, Any], via: str, now: float) -> dict[str, Any]:
        priv, pub = wg_keypair()
        gid = "G" + secrets.token_hex(8).upper()
        allowed = f"{scene['service_addr']}/32"
        # Never past the code's own expiry: the grant is bound to the code.
        from datetime import datetime

        code_exp = datetime.fromisoformat(result["expires_at"]).timestamp()
        exp = min(now + scene["ttl_s"], code_exp)
        with self.hub.store.tx() as db:
            used = store.active_addresses(db)
            address = next((str(h) for h in POOL.hosts() if h != POOL.network_address + 1 and str(h) not in used), None)
            if address is None:
                raise ChannelError(503, "pool", f"client address pool {POOL} is exhausted")
            store.insert_grant(db, {
                "id": gid, "app_id": scene["app_id"], "org": scene["org"], "serial": result["serial"],
                "identity_id": result["identity_id"], "via": via, "peer_public_key": pub, "peer_address": address,
                "allowed_ips": allowed, "issued_at": now, "expires_at": exp, "status": "active"})
            record(db, actor=via, action="channel.grant", target=gid, org=scene["org"],
                   detail={"serial": result["serial"], "scene": scene["app_id"], "address": address,
                           "expires_at": exp})
        claims = {"v": 1, "gid": gid, "scene": scene["app_id"], "service": f"{scene['service_addr']}:"
                  f"{scene['service_port']}", "serial": result["serial"], "sub": result["identity_id"],
                  "peer": pub, "addr": address, "nbf": int(now), "exp": int(exp), "kid": self.signing_key.kid}
        body = signing.canonical(claims)
        token = _b64u(body) + "." + _b64u(self.signing_key.sign(body))
        self.publish_peers(scene["app_id"])
        cfg = peer_config(priv, address, scene["gateway_public_key"], allowed, scene["endpoint"],
                          f"City Brain access channel {gid} for {scene['service_name']}; valid until {int(exp)}")
        return {"grant": self.grant(gid), "token": token, "claims": claims, "wireguard_config": cfg}

    def grant(self, gid: str) -> dict[str, Any] | None:
        with self.hub.store.read() as db:
            return store.grant(db, gid)

    def grants(self, scopes: list[str], status: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        self.sweep()
        with self.hub.store.read() as db:
            out = store.all_grants(db, status)
        return [g for g in out if any(under(g["org"], s) for s in scopes)][:limit]

    def revoke(self, actor: str, gid: str, reason: str) -> dict[str, Any]:
        g = self.grant(gid)
        if g is None:
            raise ChannelError(404, "grant_id", f"no grant {gid}")
        if g["status"] != "active":
            raise ChannelError(409, "grant_id", f"grant {gid} is already {g['status']}")
        self._end([(gid, g["app_id"], g["org"])], "revoked", reason, actor)
        return self.grant(gid)  # type: ignore[return-value]

    def _end(self, rows: list[tuple[str, int, str]], status: str, reason: str, actor: str) -> None:
        now = self.clock()
        with self.hub.store.tx() as db:
            for gid, _app, org in rows:
                store.end_grant(db, gid, status, now, reason)
                record(db, actor=actor, action=f"channel.grant.{status}", target=gid, org=org, detail={"why": reason})
        for app_id in sorted({r[1] for r in rows}):
            self.publish_peers(app_id)

    def sweep(self) -> dict[str, int]:
        """End active grants whose time is up or whose code was revoked since. Called before every grant
        read and issue, so a revoked code never yields a live peer in what the hub serves or publishes."""
        now = self.clock()
        with self.hub.store.read() as db:
            active = [(r["id"], r["app_id"], r["org"], r["serial"], r["expires_at"]) for r in store.active_grants(db)]
            if not active:
                return {"expired": 0, "revoked": 0}
            why = store.revoked_serials(db, sorted({r[3] for r in active}))
        expired = [(g, a, o) for g, a, o, _s, exp in active if exp <= now]
        revoked = [(g, a, o, why[s]) for g, a, o, s, exp in active if exp > now and s in why]
        if expired:
            self._end(expired, "expired", "grant lifetime over", "system:channel")
        for reason in sorted({r[3] for r in revoked}):
            self._end([r[:3] for r in revoked if r[3] == reason], "revoked", reason, "system:channel")
        return {"expired": len(expired), "revoked": len(revoked)}

    # ---- the gateway side -------------------------------------------------------------------------
    def gateway_peers(self, app_id: int) -> str:
        """[Peer] sections for the scene's WireGuard gateway: one per active grant, AllowedIPs = that client's
        single address. Append to the gateway's [Interface] (its private key never leaves the gateway)."""
        self.sweep()
        with self.hub.store.read() as db:
            rows = store.scene_peers(db, app_id)
        return "".join(f"# grant {r['id']} until {int(r['expires_at'])}\n[Peer]\nPublicKey = {r['peer_public_key']}\n"
                       f"AllowedIPs = {r['peer_address']}/32\n\n" for r in rows)

    def publish_peers(self, app_id: int) -> None:
        """Retained, signed peer list on MQTT so the scene's gateway applies changes without polling."""
        with self.hub.store.read() as db:
            rows = store.scene_peers(db, app_id)
        body = {"app_id": app_id, "ts": self.clock(), "kid": self.signing_key.kid,
                "peers": [{"grant": r["id"], "public_key": r["peer_public_key"],
                           "allowed_ips": f"{r['peer_address']}/32", "expires_at": r["expires_at"]} for r in rows]}
        sig = self.signing_key.sign(signing.canonical(body))
        try:
            self.hub.publish(PEERS_TOPIC.format(app_id=app_id), json.dumps({**body, "sig": signing.b64e(sig)}),
                             qos=1, retain=True)
        except Exception:  # the gateway can still pull GET /scenes/{id}/peers; the next change re-publishes
            pass


def service_of(hub: Hub) -> ChannelService:
    svc = hub.services.get("channel")
    if svc is None:
        svc = hub.services["channel"] = ChannelService(hub)
    return svc  # type: ignore[no-any-return]


def setup(hub: Hub) -> None:
    svc = service_of(hub)
    # A revoked code, entity or department key ends its grants at once, not at the next read.
    hub.hooks.on("codes.revoked", lambda **_: svc.sweep())
