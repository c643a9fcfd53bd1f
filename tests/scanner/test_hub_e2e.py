"""Codes issued by the real hub (HTTP API, hub-signed trust and revocation lists over a real mosquitto),
verified by the scan terminal offline; scans made while the broker is down reach the hub's supervision
counts once it returns, each once."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.broker import Broker
from central.codes.store import issued as codes_issued
from central.codes.store import lists, scans
from central.hub import Hub
from edge.config import load_config
from edge.scanner.verify import Verifier, data_dir_for
from protocol import citycode, signing, topics
from tests.codes.conftest import City, register_entity
from tests.conftest import make_settings
from tests.helpers import wait_for
from tests.scanner.helpers import running_terminal


@pytest.fixture
def live_hub(tmp_path: Path, broker: Broker) -> Iterator[tuple[Hub, TestClient]]:
    from central.app import build_hub, create_app

    hub = build_hub(make_settings(tmp_path, broker))
    with TestClient(create_app(hub=hub, start_bridge=True)) as c:
        assert hub.publisher.wait_connected(10)  # type: ignore[attr-defined]
        yield hub, c
    hub.close()


def scans_of(hub: Hub, serial: str) -> list[tuple[str, str]]:
    with hub.store.read() as db:
        return [tuple(r) for r in db.run(sa.select(scans.c.scan_id, scans.c.verdict).where(scans.c.serial == serial))]


def test_hub_issued_codes_verified_offline(live_hub: tuple[Hub, TestClient], broker: Broker,
                                           tmp_path: Path) -> None:
    hub, c = live_hub
    city = City(hub, c)
    app_id = city.approved_scene()
    root = city.ok(c.get("/api/v1/codes/root"))
    issued = [city.ok(city.issue(app_id, register_entity(hub)), 201) for _ in range(3)]
    good, doomed, lost = (citycode.parse(i["text"]) for i in issued)
    issued = issued[:2]
    # Revocation list v1 (revokes `lost`): the terminal gets it retained when it first connects.
    city.ok(c.post("/api/v1/codes/revoke", headers=city.issuer, json={"serial": lost.serial, "reason": "lost"}))

    # Provision the terminal through the hub (broker user + ACL), pin the root, point it at a drop dir.
    _, dev = hub.services["devices"].provision("gate1", "scanner", "Gate 1", device="term1")  # type: ignore[attr-defined]
    drop = tmp_path / "drop"
    drop.mkdir()
    dev["outbox"] = {"path": str(tmp_path / "term1" / "outbox.db")}
    dev["scanner"] = {"city_root_key": root, "data_dir": str(tmp_path / "term1"), "source": str(drop),
                      "decoder": "zxing", "location": "gate-1", "batch_interval_s": 0.2}
    cfg_path = tmp_path / "term1.json"
    cfg_path.write_text(json.dumps(dev))
    cfg = load_config(cfg_path)

    with running_terminal(cfg) as (link, st):
        wait_for(lambda: st().get("trust_version") and st().get("revocation_version"), what="hub lists synced")

        # Revoked after the terminal synced: the hub's new revocation list reaches it.
        city.ok(c.post("/api/v1/codes/revoke", headers=city.issuer, json={"serial": doomed.serial, "reason": "lost"}))
        rev_v = hub.services["codes"].current("revocations")["version"]  # type: ignore[attr-defined]
        wait_for(lambda: st().get("revocation_version") == rev_v, what="revocation list synced")
        # Rolled back: the hub's own older (genuinely signed) list replayed on the topic is refused.
        with hub.store.read() as db:
            old = db.scalar(sa.select(lists.c.body).where(lists.c.kind == "revocations").order_by(lists.c.version)
                            .limit(1))
        assert json.loads(old)["version"] < rev_v
        hub.publish(topics.REVOCATIONS, old, qos=1, retain=True)
        wait_for(lambda: st().get("revocations_refused") == 1, what="rollback refused")
        assert st()["revocation_version"] == rev_v and "rollback" in str(st()["last_refusal"])

        # Broker down: the terminal scans the hub's own PNGs offline.
        broker.stop()
        wait_for(lambda: not link.connected, what="link down")
        for i, item in enumerate(issued):
            (drop / f"{i}.png").write_bytes(base64.b64decode(item["png_b64"]))
        wait_for(lambda: st().get("scans_valid") == 1 and st().get("scans_revoked") == 1, what="offline verdicts")

        # A rebooted terminal with no network (same data dir) gives the same verdicts, and refuses forgeries.
        v = Verifier.from_config(cfg.scanner, data_dir_for(cfg))  # type: ignore[arg-type]
        assert v.verify(good.text).verdict == "valid"
        assert v.verify(doomed.text).verdict == "revoked"
        other = "X" if good.serial[-1] != "X" else "Y"  # a serial may already end in X: always change it
        forged = good.text.replace(f".{good.serial}.", f".{good.serial[:-1]}{other}.")
        assert forged != good.text and v.verify(forged).verdict == "bad-signature"
        stranger = citycode.build(key=signing.generate(), guide_url=good.guide_url, code_system=good.code_system,
                                  auth_id=good.auth_id, attribute=good.attribute, identity_id=good.identity_id,
                                  serial="FORGED0001", issued_at=good.issued_at, expires_at=good.expires_at)
        assert v.verify(stranger.text).verdict == "unknown-key"
        expired_at = good.expires_at + 3600
        assert v.verify(good.text, now=expired_at).verdict == "expired"
        v.close()

        time.sleep(0.5)  # the agent moves its last records to the outbox
        assert link.outbox.depth() >= 1
        broker.start()
        wait_for(lambda: scans_of(hub, good.serial) and scans_of(hub, doomed.serial), timeout=30,
                 what="offline scans ingested by the hub")
        time.sleep(1.0)
        assert [v for _, v in scans_of(hub, good.serial)] == ["valid"]
        assert [v for _, v in scans_of(hub, doomed.serial)] == ["revoked"]
        with hub.store.read() as db:
            assert db.scalar(sa.select(codes_issued.c.scans).where(codes_issued.c.serial == good.serial)) == 1
