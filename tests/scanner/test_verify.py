"""Offline verification against the terminal's trust store: verdicts, trust-list safety, persistence."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.scanner.replay import ReplayGuard
from edge.scanner.trust_store import RevocationIndex, TrustStore
from edge.scanner.verify import Verifier
from protocol import signing
from tests.scanner.helpers import City


@pytest.fixture
def city() -> City:
    return City()


def make_verifier(city: City, d: Path, skew_s: float = 300, **kw: object) -> Verifier:
    store = TrustStore(city.root.public, d)
    return Verifier(store, ReplayGuard(d / "replay.sqlite", skew_s), skew_s, **kw)  # type: ignore[arg-type]


def synced(city: City, d: Path, **kw: object) -> Verifier:
    v = make_verifier(city, d, **kw)
    assert v.store.apply(city.trust_list(1)) == (True, "ok")
    assert v.store.apply(city.revocations(1)) == (True, "ok")
    return v


def test_valid_code_passes_offline(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    code = city.code()
    r = v.verify(code.text)
    assert (r.verdict, r.reason) == ("valid", "ok")
    assert (r.serial, r.dept, r.code_system) == (code.serial, "HEALTH", "HC")


def test_altered_byte_is_bad_signature(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    text = city.code().text
    # Change one character of the signed part (dept data "PASS" -> "PAST"): still parses, signature fails.
    forged = text.replace("/PASS.", "/PAST.")
    assert forged != text
    assert v.verify(forged).verdict == "bad-signature"
    # ... and a flipped signature digit.
    i = len(text) - 3
    flipped = text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:]
    assert v.verify(flipped).verdict == "bad-signature"


def test_expired_and_clock_skew(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path, skew_s=120)
    now = int(time.time())
    code = city.code(issued_at=now - 4000, lifetime_s=3600)  # expired 400 s ago
    r = v.verify(code.text, now=now)
    assert r.verdict == "expired" and "expires_at" in r.reason
    # Expired 60 s ago is inside the 120 s skew tolerance: a terminal's clock may be behind.
    code2 = city.code(issued_at=now - 3660, lifetime_s=3600)
    assert v.verify(code2.text, now=now).verdict == "valid"
    # A zero-skew terminal refuses the same code.
    strict = Verifier(v.store, None, skew_s=0)
    assert strict.verify(code2.text, now=now).verdict == "expired"


def test_revoked_after_sync(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    code = city.code()
    other = city.code(identity_id="E3101XYZ0002Q")
    assert v.verify(code.text).verdict == "valid"
    ok, _ = v.store.apply(city.revocations(2, serials=[code.serial], identities=["E3101XYZ0002Q"]))
    assert ok
    r = v.verify(code.text)
    assert r.verdict == "revoked" and code.serial in r.reason
    assert v.verify(other.text).verdict == "revoked"
    # A revoked code that has also expired still reports revoked (revocation before policy).
    old = city.code(issued_at=int(time.time()) - 90000, lifetime_s=3600, serial="OLDSERIAL1")
    v.store.apply(city.revocations(3, serials=[code.serial, "OLDSERIAL1"]))
    assert v.verify(old.text).verdict == "revoked"


def test_rolled_back_and_forged_lists_refused(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    code = city.code()
    assert v.store.apply(city.revocations(5, serials=[code.serial]))[0]
    # Rollback: an older (correctly signed) list that would un-revoke the code.
    ok, reason = v.store.apply(city.revocations(4))
    assert not ok and reason.startswith("rollback")
    # Forged: newer version signed by someone else.
    ok, reason = v.store.apply(city.revocations(9, signer=signing.generate()))
    assert not ok and reason.startswith("bad-signature")
    # Forged trust list adding an attacker's key.
    mallory = signing.generate()
    ok, _ = v.store.apply(city.trust_list(7, keys=[city.trusted(mallory)], signer=mallory))
    assert not ok
    assert v.store.revocation_version == 5 and v.store.trust_version == 1
    assert v.verify(code.text).verdict == "revoked"
    assert v.verify(city.code(mallory).text).verdict == "unknown-key"
    st = v.store.stats()
    assert st["revocations_refused"] == 2 and st["trust_refused"] == 1 and "bad-signature" in str(st["last_refusal"])
    # The same list arriving again (retained message on reconnect) is not counted as an attack.
    raw = (tmp_path / "revocations.json").read_bytes()
    ok, reason = v.store.apply_bytes("revocations", raw)
    assert (ok, reason) == (False, "duplicate: already held") and v.store.stats()["revocations_refused"] == 2


def test_malformed_payload_list_names_field(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    ok, reason = v.store.apply_bytes("revocations", b'{"version": 0}')
    assert not ok and reason.startswith("malformed: version")


def test_unknown_department_key_and_wrong_system(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    stranger = signing.generate()
    r = v.verify(city.code(stranger).text)
    assert r.verdict == "unknown-key" and stranger.kid.upper() in r.reason
    assert v.verify(city.code(code_system="TX").text).verdict == "wrong-system"
    assert v.verify("https://evil.example/x").verdict == "malformed"
    assert v.verify("").verdict == "malformed"


def test_unfiled_guide_url(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path, allowed_url_prefixes=["https://other.example/"])
    assert v.verify(city.code().text).verdict == "unfiled-url"


def test_no_trust_list_yet(city: City, tmp_path: Path) -> None:
    v = make_verifier(city, tmp_path)
    r = v.verify(city.code().text)
    assert r.verdict == "unknown-key" and "never synced" in r.reason


def test_single_use_accepted_once_even_after_reboot(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    once = city.code(attribute="DH1")
    assert v.verify(once.text).verdict == "valid"
    r = v.verify(once.text)
    assert r.verdict == "replayed" and "already accepted" in r.reason
    multi = city.code(attribute="SY0")
    assert v.verify(multi.text).verdict == v.verify(multi.text).verdict == "valid"
    v.close()
    v2 = make_verifier(city, tmp_path)  # reboot: same data dir, no network
    assert v2.verify(once.text).verdict == "replayed"


def test_reboot_without_network_still_verifies(city: City, tmp_path: Path) -> None:
    v = synced(city, tmp_path)
    revoked = city.code()
    v.store.apply(city.revocations(2, serials=[revoked.serial]))
    v.close()
    v2 = make_verifier(city, tmp_path)
    assert (v2.store.trust_version, v2.store.revocation_version) == (1, 2)
    assert v2.verify(city.code().text).verdict == "valid"
    assert v2.verify(revoked.text).verdict == "revoked"
    # A list file tampered with on disk is not trusted at boot.
    p = tmp_path / "revocations.json"
    p.write_text(p.read_text().replace(revoked.serial, "SN99999999"))
    v3 = make_verifier(city, tmp_path)
    assert v3.store.revocation_version is None and v3.store.stats()["revocations_refused"] == 1
    # A different pinned root (re-provisioned terminal) does not trust lists signed by the old one.
    assert TrustStore(signing.generate().public, tmp_path).trust_version is None


def test_revocation_index_exact() -> None:
    idx = RevocationIndex(["ABC1", "zz99", "SN00000001", "A"])
    assert "ABC1" in idx and "ZZ99" in idx and "A" in idx and "SN00000001" in idx
    assert "ABC" not in idx and "ABC10" not in idx and "SN0000000" not in idx and "B" not in idx
    assert "X" * 100 not in idx and "" not in idx
    assert "A" not in RevocationIndex([])


def test_domestic_profile_sm2(tmp_path: Path) -> None:
    """国产化 (domestic crypto) profile: SM2 root and department keys work the same way offline."""
    city = City(root=signing.generate("sm2"), dept=signing.generate("sm2"))
    v = synced(city, tmp_path)
    code = city.code()
    assert v.verify(code.text).verdict == "valid"
    assert v.verify(code.text.replace("/PASS.", "/PAST.")).verdict == "bad-signature"
    v.close()
    assert make_verifier(city, tmp_path).verify(code.text).verdict == "valid"  # lists re-verified at boot
