"""Revocations fail closed: no valid list -> no code is valid (and the verdict says why); the rollback
floor survives a deleted or corrupted list file; a list past its maximum age makes verdicts stale
(reject, or warn); the heartbeat reports the list's age; the hub re-signs an unchanged list."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.config import load_config
from edge.link import Link
from edge.scanner.agent import ScannerAgent
from edge.scanner.replay import ReplayGuard
from edge.scanner.trust_store import TrustStore
from edge.scanner.verify import Verifier
from protocol.trust import RevocationList
from tests.scanner.helpers import City, scanner_config


@pytest.fixture
def city() -> City:
    return City()


def verifier(city: City, d: Path, **kw: object) -> Verifier:
    return Verifier(TrustStore(city.root.public, d), ReplayGuard(d / "replay.sqlite"), **kw)  # type: ignore[arg-type]


def aged(city: City, version: int, hours: float, serials: list[str] = ()) -> RevocationList:  # type: ignore[assignment]
    rl = RevocationList(version=version, serials=list(serials),
                        issued_at=datetime.now(UTC) - timedelta(hours=hours))
    rl.sign(city.root)
    return rl


def test_tampered_list_at_boot_fails_closed_and_keeps_the_floor(city: City, tmp_path: Path) -> None:
    v = verifier(city, tmp_path)
    revoked, good = city.code(), city.code()
    assert v.store.apply(city.trust_list(1))[0]
    assert v.store.apply(city.revocations(1))[0]
    genuine_v5 = city.revocations(5, serials=[revoked.serial])
    assert v.store.apply(genuine_v5)[0]
    v.close()

    # Someone edits the stored list to un-revoke the code: refused at boot, and nothing is valid now.
    p = tmp_path / "revocations.json"
    p.write_text(p.read_text().replace(revoked.serial, "SN99999999"))
    v2 = verifier(city, tmp_path)
    assert v2.store.revocation_version is None
    for code in (revoked, good):
        r = v2.verify(code.text)
        assert r.verdict == "no-revocation-list" and not r.ok
        assert "refused at boot" in r.reason and "bad-signature" in r.reason
    # A forged code is still reported as forged, not hidden behind the missing list.
    assert v2.verify(code.text[:-1] + ("1" if code.text[-1] != "1" else "2")).verdict == "bad-signature"
    # The older genuine list is a rollback (the floor survived the refused file) ...
    ok, reason = v2.store.apply(city.revocations(4))
    assert not ok and reason.startswith("rollback") and v2.verify(revoked.text).verdict == "no-revocation-list"
    # ... while the very list the floor remembers (the hub's retained v5) is taken back.
    assert v2.store.apply_bytes("revocations", genuine_v5.model_dump_json().encode()) == (True, "ok")
    assert v2.verify(revoked.text).verdict == "revoked" and v2.verify(good.text).verdict == "valid"
    v2.close()


@pytest.mark.parametrize("damage", ["delete", "corrupt-floor", "delete-floor-file"])
def test_floor_survives_deleted_or_corrupted_files(city: City, tmp_path: Path, damage: str) -> None:
    v = verifier(city, tmp_path)
    assert v.store.apply(city.trust_list(1))[0]
    assert v.store.apply(city.revocations(7))[0]
    v.close()
    (tmp_path / "revocations.json").unlink()
    if damage == "corrupt-floor":
        (tmp_path / "floor.json").write_bytes(b"\x00garbage{")
    elif damage == "delete-floor-file":
        (tmp_path / "floor.json").unlink()
    v2 = verifier(city, tmp_path)
    assert v2.store.floors["revocations"][0] == 7
    r = v2.verify(city.code().text)
    assert r.verdict == "no-revocation-list" and "missing" in r.reason
    ok, reason = v2.store.apply(city.revocations(6))
    assert not ok and "highest seen 7" in reason
    assert v2.store.apply(city.revocations(8))[0] and v2.verify(city.code().text).verdict == "valid"
    assert json.loads((tmp_path / "floor.json").read_text())["revocations"][0] == 8
    v2.close()


def test_stale_list_rejects_or_warns(city: City, tmp_path: Path) -> None:
    v = verifier(city, tmp_path)  # default: 24 h, reject
    assert v.store.apply(city.trust_list(1))[0]
    assert v.store.apply(aged(city, 1, hours=23))[0]
    code = city.code()
    assert v.verify(code.text).verdict == "valid"
    revoked = city.code()
    assert v.store.apply(aged(city, 2, hours=30, serials=[revoked.serial]))[0]
    r = v.verify(code.text)
    assert r.verdict == "stale" and not r.ok and "30.0 h old (max 24 h)" in r.reason
    assert v.verify(revoked.text).verdict == "revoked"  # what the list does say still holds
    once = city.code(attribute="DH1")
    assert v.verify(once.text).verdict == "stale"
    warn = Verifier(v.store, v.replay, max_list_age_s=3600, on_stale="warn")
    r = warn.verify(code.text)
    assert r.verdict == "valid" and r.stale and "stale" in r.reason and r.to_dict()["stale"] is True
    # A stale rejection did not use up the single-use code.
    assert warn.verify(once.text).verdict == "valid" and warn.verify(once.text).verdict == "replayed"
    assert v.store.apply(city.revocations(3))[0]  # a fresh list: valid again
    assert v.verify(code.text).verdict == "valid" and not v.verify(code.text).stale
    v.close()


def test_config_settings_and_heartbeat_list_age(city: City, tmp_path: Path) -> None:
    cfg = load_config(scanner_config(tmp_path, city, max_list_age_s=7200, on_stale="warn"))
    link = Link(cfg)  # never started: the heartbeat is built locally
    agent = ScannerAgent(cfg, link)
    try:
        assert (agent.verifier.max_list_age_s, agent.verifier.on_stale) == (7200, "warn")
        agent.verifier.store.apply(city.trust_list(1))
        link.stats_provider = agent.stats
        assert link.heartbeat().revocation_age_s is None
        agent.verifier.store.apply(aged(city, 1, hours=3))
        hb = link.heartbeat()
        assert hb.revocation_age_s is not None and 3 * 3600 - 5 < hb.revocation_age_s < 3 * 3600 + 60
        assert agent.handle_text(city.code().text).stale
    finally:
        agent.close()
        link.outbox.close()
    with pytest.raises(Exception, match="on_stale"):
        load_config(scanner_config(tmp_path, city, on_stale="ignore"))


def test_schema_file_has_the_scanner_settings() -> None:
    """firmware_configs/device-config.schema.json was regenerated (`citybrain firmware schema`; the spine's
    test checks the whole file against the model)."""
    path = Path(__file__).resolve().parents[2] / "firmware_configs" / "device-config.schema.json"
    props = json.loads(path.read_text())["$defs"]["ScannerSection"]["properties"]
    assert props["max_list_age_s"]["default"] == 86400 and props["on_stale"]["default"] == "reject"
    assert props["decoder"]["default"] == "zxing"


def test_hub_re_signs_an_unchanged_revocation_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from central.codes import service as codes_service
    from tests.codes.conftest import make_hub

    hub = make_hub(tmp_path)
    try:
        svc = codes_service.service_of(hub)
        svc.refresh_revocations()
        assert svc.current("revocations") is None  # the first list is republish_lists' job
        v1 = svc.publish_revocations()
        svc.refresh_revocations()
        assert svc.current("revocations")["version"] == v1  # fresh: nothing to do  # type: ignore[index]
        monkeypatch.setattr(codes_service, "REVOCATIONS_REFRESH_S", 0)
        time.sleep(0.01)
        svc.refresh_revocations()
        cur = svc.current("revocations")
        assert cur is not None and cur["version"] == v1 + 1
        assert RevocationList.model_validate(cur).age_s(time.time()) < 60
    finally:
        hub.close()
