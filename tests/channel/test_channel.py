"""Access channel pilot over HTTP with real codes, real keys and a real X25519/WireGuard config (no kernel
interface): issuance, scope (terminal, app key, scene), expiry on an injected clock, revocation by hand and
by code revocation, and the configs parse."""

from __future__ import annotations

import base64
import configparser
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient

from central.channel.service import PEERS_TOPIC, POOL, service_of, verify_token, wg_keypair
from central.channel.store import grants
from central.hub import Hub
from protocol import signing
from tests.codes.conftest import City, make_hub, register_entity

SERVICE = "10.60.1.10"


@pytest.fixture
def chub(tmp_path: Path) -> Iterator[Hub]:
    h = make_hub(tmp_path)
    yield h
    h.close()


@pytest.fixture
def city(chub: Hub) -> Iterator[City]:
    from central.app import create_app

    with TestClient(create_app(hub=chub, start_bridge=False)) as c:
        yield City(chub, c)


class Pilot:
    def __init__(self, city: City) -> None:
        self.city, self.c = city, city.c
        self.app_id = city.approved_scene()  # HEALTH "Clinic pass", code system HC
        self.gw_priv, self.gw_pub = wg_keypair()
        self.now: float | None = None  # the injected clock: wall time until a test sets it
        service_of(city.hub).clock = lambda: time.time() if self.now is None else self.now
        city.ok(city.c.post("/api/v1/iam/roles", headers=city.admin,
                            json={"name": "channel_terminal", "patterns": ["channel.grant"]}), 201)
        self.gate1 = self.apikey("gate-1")
        self.gate2 = self.apikey("gate-2")  # holds channel.grant too, but is not listed on the scene
        self.scene = city.ok(self.c.post("/api/v1/channel/scenes", headers=city.admin, json={
            "application_id": self.app_id, "service_name": "clinic records", "service_addr": SERVICE,
            "service_port": 443, "ttl_s": 600, "gateway_public_key": self.gw_pub,
            "endpoint": "gw.health.city.example:51820", "terminals": ["apikey:gate-1"]}), 201)

    def apikey(self, name: str) -> dict[str, str]:
        r = self.city.ok(self.c.post("/api/v1/iam/apikeys", headers=self.city.admin,
                                     json={"name": name, "role": "channel_terminal", "org": "/city/health"}), 201)
        return {"X-API-Key": r["key"]}

    def code(self) -> str:
        issued = self.city.issue(self.app_id, register_entity(self.city.hub), image="none")
        return str(self.city.ok(issued, 201)["text"])

    def grant(self, text: str, headers: dict[str, str]) -> Any:
        return self.c.post("/api/v1/channel/grants", headers=headers, json={"text": text})


@pytest.fixture
def pilot(city: City) -> Pilot:
    return Pilot(city)


def parse_wg(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # WireGuard keys are case-sensitive
    cp.read_string(text)
    return cp


def test_grant_config_and_token(pilot: Pilot) -> None:
    text = pilot.code()
    out = pilot.city.ok(pilot.grant(text, pilot.gate1), 201)
    g = out["grant"]
    assert g["status"] == "active" and g["via"] == "apikey:gate-1" and g["allowed_ips"] == f"{SERVICE}/32"
    assert 0 < g["expires_at"] - g["issued_at"] <= 600

    cp = parse_wg(out["wireguard_config"])
    assert cp.sections() == ["Interface", "Peer"]
    priv = base64.b64decode(cp["Interface"]["PrivateKey"], validate=True)
    assert len(priv) == 32
    derived = X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64encode(derived).decode() == g["peer_public_key"]  # the config's key is the granted peer
    addr = ipaddress.ip_interface(cp["Interface"]["Address"])
    assert addr.network.prefixlen == 32 and addr.ip in POOL and str(addr.ip) == g["peer_address"]
    assert cp["Peer"]["PublicKey"] == pilot.gw_pub
    assert cp["Peer"]["AllowedIPs"] == f"{SERVICE}/32"  # the scene's service only: no default route
    assert cp["Peer"]["Endpoint"] == "gw.health.city.example:51820"
    with pilot.city.hub.store.read() as db:
        stored = db.all(sa.select(grants))
    assert stored and "PrivateKey" not in str(stored) and cp["Interface"]["PrivateKey"] not in str(stored)

    key = signing.PublicKey.from_dict(pilot.city.ok(pilot.c.get("/api/v1/channel/key")))
    claims = verify_token(out["token"], key)
    assert claims["gid"] == g["id"] and claims["service"] == f"{SERVICE}:443" and claims["peer"] == g["peer_public_key"]
    body, sig = out["token"].split(".")
    forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(body + "==").replace(b"443", b"444")).rstrip(b"=")
    with pytest.raises(ValueError, match="signature"):
        verify_token(forged.decode() + "." + sig, key)

    # The gateway's peer list holds this client, limited to its one address.
    peers = pilot.c.get(f"/api/v1/channel/scenes/{pilot.app_id}/peers", headers=pilot.city.admin).text
    cp = parse_wg(peers)
    assert cp["Peer"]["PublicKey"] == g["peer_public_key"] and cp["Peer"]["AllowedIPs"] == f"{g['peer_address']}/32"
    # ...and is published retained for the gateway over MQTT.
    sent = [p for t, p, _q, r in pilot.city.hub.publisher.sent if t == PEERS_TOPIC.format(app_id=pilot.app_id) and r]  # type: ignore[attr-defined]
    assert g["peer_public_key"] in sent[-1].decode()

    # A second grant gets a different address and key.
    g2 = pilot.city.ok(pilot.grant(text, pilot.gate1), 201)["grant"]
    assert g2["peer_address"] != g["peer_address"] and g2["peer_public_key"] != g["peer_public_key"]


def test_scope(pilot: Pilot) -> None:
    text = pilot.code()
    r = pilot.grant(text, pilot.gate2)
    assert r.status_code == 403 and "not an authorised terminal" in r.json()["detail"]
    assert pilot.grant(text, {}).status_code == 401
    assert pilot.grant(text, pilot.city.issuer).status_code == 403  # the issuer holds no channel.grant

    # The scene's own app key is an authorised app; another application's key is not.
    key = pilot.city.ok(pilot.c.post(f"/api/v1/codes/applications/{pilot.app_id}/appkeys",
                                     headers=pilot.city.issuer, json={"name": "clinic-app"}), 201)["key"]
    assert pilot.grant(text, {"X-App-Key": key}).status_code == 201
    pilot.city.duties([("HEALTH", "pharmacy.pass")])
    other = pilot.city.apply(scene_type="pharmacy.pass", scene_name="Pharmacy pass")
    pilot.city.ok(pilot.city.approve(other["id"], code_system="HP"))
    other_key = pilot.city.ok(pilot.c.post(f"/api/v1/codes/applications/{other['id']}/appkeys",
                                           headers=pilot.city.issuer, json={"name": "pharmacy-app"}), 201)["key"]
    r = pilot.grant(text, {"X-App-Key": other_key})
    assert r.status_code == 403 and "application" in r.json()["detail"]

    # A valid code of a scene that is not a channel opens nothing.
    plain = pilot.city.ok(pilot.city.issue(other["id"], register_entity(pilot.city.hub), image="none"), 201)["text"]
    r = pilot.grant(plain, {"X-App-Key": other_key})
    assert r.status_code == 403 and "not marked as an access channel" in r.json()["detail"]
    # Garbage is refused on the code's verdict, and every refusal is audited.
    assert "malformed" in pilot.grant("HELLO", pilot.gate1).json()["detail"]
    audit = sa.table("iam_audit", sa.column("action"))  # iam's table, read by name only
    with pilot.city.hub.store.read() as db:
        n = db.scalar(sa.select(sa.func.count()).select_from(audit).where(audit.c.action == "channel.grant.refused"))
    assert n >= 4


def test_expiry_on_injected_clock(pilot: Pilot) -> None:
    t0 = time.time()
    pilot.now = t0
    out = pilot.city.ok(pilot.grant(pilot.code(), pilot.gate1), 201)
    gid = out["grant"]["id"]
    key = signing.PublicKey.from_dict(pilot.city.ok(pilot.c.get("/api/v1/channel/key")))
    verify_token(out["token"], key, now=t0 + 599)
    pilot.now = t0 + 601
    with pytest.raises(ValueError, match="expired"):
        verify_token(out["token"], key, now=pilot.now)
    g = pilot.city.ok(pilot.c.get(f"/api/v1/channel/grants/{gid}", headers=pilot.city.admin))
    assert g["status"] == "expired" and g["end_reason"] == "grant lifetime over"
    assert pilot.c.get(f"/api/v1/channel/scenes/{pilot.app_id}/peers", headers=pilot.city.admin).text == ""
    # The address goes back to the pool.
    assert pilot.city.ok(pilot.grant(pilot.code(), pilot.gate1), 201)["grant"]["peer_address"] == \
        out["grant"]["peer_address"]


def test_revocation(pilot: Pilot) -> None:
    text = pilot.code()
    g1 = pilot.city.ok(pilot.grant(text, pilot.gate1), 201)["grant"]
    # By hand.
    r = pilot.city.ok(pilot.c.post(f"/api/v1/channel/grants/{g1['id']}/revoke", headers=pilot.city.admin,
                                   json={"reason": "lost phone"}))
    assert r["status"] == "revoked" and r["end_reason"] == "lost phone"
    assert pilot.c.post(f"/api/v1/channel/grants/{g1['id']}/revoke", headers=pilot.city.admin,
                        json={"reason": "again"}).status_code == 409
    # By revoking the code: the live grant ends and its peer leaves the gateway list; no new grant follows.
    g2 = pilot.city.ok(pilot.grant(text, pilot.gate1), 201)["grant"]
    serial = g2["serial"]
    pilot.city.ok(pilot.c.post("/api/v1/codes/revoke", headers=pilot.city.issuer,
                               json={"serial": serial, "reason": "pass withdrawn"}))
    # Ended by the codes.revoked hook at once, before anyone reads a grant again.
    with pilot.city.hub.store.read() as db:
        status = db.scalar(sa.select(grants.c.status).where(grants.c.id == g2["id"]))
    assert status == "revoked"
    g = pilot.city.ok(pilot.c.get(f"/api/v1/channel/grants/{g2['id']}", headers=pilot.city.admin))
    assert g["status"] == "revoked" and g["end_reason"] == "code revoked"
    assert g2["peer_public_key"] not in pilot.c.get(f"/api/v1/channel/scenes/{pilot.app_id}/peers",
                                                    headers=pilot.city.admin).text
    sent = [p for t, p, _q, _r in pilot.city.hub.publisher.sent if t == PEERS_TOPIC.format(app_id=pilot.app_id)]  # type: ignore[attr-defined]
    assert g2["peer_public_key"] not in sent[-1].decode()
    r = pilot.grant(text, pilot.gate1)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]


def test_scene_rules_and_district_scope(pilot: Pilot) -> None:
    from tests.helpers import auth, token_for

    c, admin = pilot.c, pilot.city.admin
    base = {"application_id": pilot.app_id, "service_name": "x", "service_addr": SERVICE, "service_port": 443,
            "gateway_public_key": pilot.gw_pub, "endpoint": "gw:51820"}
    for bad, field in (({"service_addr": "10.60.1.0/24"}, "service_addr"),
                       ({"service_addr": "10.77.0.9"}, "service_addr"), ({"ttl_s": 86400}, "ttl_s"),
                       ({"gateway_public_key": "abc"}, "gateway_public_key")):
        r = c.post("/api/v1/channel/scenes", headers=admin, json={**base, **bad})
        assert r.status_code == 422 and field in r.text, (bad, r.text)
    pending = pilot.city.apply(scene_type="clinic.pass", scene_name="Second")
    r = c.post("/api/v1/channel/scenes", headers=admin, json={**base, "application_id": pending["id"]})
    assert r.status_code == 409
    # Another district's admin neither manages nor sees this scene or its grants.
    other = auth(token_for(pilot.city.hub, "roads-admin", "district_admin", "/city/roads"))
    assert c.post("/api/v1/channel/scenes", headers=other, json=base).status_code == 404  # out of scope: not found
    assert c.get("/api/v1/channel/scenes", headers=other).json() == []
    pilot.city.ok(pilot.grant(pilot.code(), pilot.gate1), 201)
    assert c.get("/api/v1/channel/grants", headers=other).json() == []
    assert len(c.get("/api/v1/channel/grants", headers=admin).json()) == 1
