"""protocol.citycode: build/parse round trip, QR size, every offline verdict, canonical encodings only
(v2 and legacy v1), a no-crash fuzz, and a property test that the offline verifier and the hub's online
verify give the same verdict on every mutation of real issued codes."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import qrcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pyzbar.pyzbar import ZBarSymbol
from pyzbar.pyzbar import decode as zbar_decode

from protocol import citycode, signing
from protocol.citycode import Attribute, CityCodeError, build, parse, verify_offline
from protocol.trust import RevocationList, TrustedKey, TrustList

GUIDE = "https://code.city.example/c"
NOW = 1_760_000_000


def _trust(key: signing.PrivateKey, root: signing.PrivateKey, **kw: object) -> TrustList:
    tk = TrustedKey(
        kid=key.kid,
        alg=key.alg,
        pub=signing.b64e(key.public_raw),
        dept=str(kw.get("dept", "HEALTH")),
        code_systems=list(kw.get("code_systems", ["HC"])),  # type: ignore[call-overload]
        not_before=datetime.fromtimestamp(NOW - 86400, UTC),
        not_after=datetime.fromtimestamp(NOW + 86400 * 400, UTC),
    )
    t = TrustList(version=1, keys=[tk])
    t.sign(root)
    return t


def _code(key: signing.PrivateKey, **kw: object) -> citycode.CityCode:
    args: dict[str, object] = dict(
        key=key,
        guide_url=GUIDE,
        code_system="HC",
        auth_id="A0001",
        attribute="SY0",
        identity_id="P3101ABC00000001X",
        serial="K7Q2M9PZ4R8WXNCF",
        issued_at=NOW,
        expires_at=NOW + 86400 * 30,
        dept_data="PASS",
    )
    args.update(kw)
    return build(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["intl", "gm"])
def keys(request: pytest.FixtureRequest) -> tuple[signing.PrivateKey, signing.PrivateKey]:
    return signing.generate_for_profile(request.param), signing.generate_for_profile(request.param)


def test_round_trip_and_verdicts(keys: tuple[signing.PrivateKey, signing.PrivateKey]) -> None:
    dept, root = keys
    trust = _trust(dept, root)
    rev = RevocationList(version=1)
    code = _code(dept)
    assert parse(code.text) == code
    assert code.text.startswith(GUIDE + "/2.HC.A0001.SY0.")
    # everything after the guide URL is QR-alphanumeric and URL-safe
    assert set(code.resolver_path) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ./-")

    v, reason, parsed = verify_offline(code.text, trust, rev, NOW + 10, 60)
    assert (v, reason) == ("valid", "ok") and parsed == code
    assert citycode.trusted_key(code, trust).dept == "HEALTH"  # type: ignore[union-attr]

    # altered city-managed value -> signature fails
    altered = code.text.replace(".A0001.", ".A0002.")
    assert verify_offline(altered, trust, rev, NOW, 60)[0] == "bad-signature"
    # forged: same fields signed by a key the city never trusted, under the real kid
    forger = signing.generate(dept.alg, kid=dept.kid)
    assert verify_offline(_code(forger).text, trust, rev, NOW, 60)[0] == "bad-signature"
    # unknown key
    other = signing.generate(dept.alg)
    assert verify_offline(_code(other).text, trust, rev, NOW, 60)[0] == "unknown-key"
    # expired / not yet valid (skew honoured)
    assert verify_offline(code.text, trust, rev, code.expires_at + 30, 60)[0] == "valid"
    v, reason, _ = verify_offline(code.text, trust, rev, code.expires_at + 61, 60)
    assert v == "expired" and reason.startswith("expires_at")
    assert verify_offline(code.text, trust, rev, NOW - 3600, 60)[0] == "expired"
    # wrong code system for this key
    other_sys = _code(dept, code_system="TRANS")
    v, reason, _ = verify_offline(other_sys.text, trust, rev, NOW, 60)
    assert v == "wrong-system" and "TRANS" in reason
    # unfiled URL
    v, _, _ = verify_offline(code.text, trust, rev, NOW, 60, allowed_url_prefixes=["https://other.example/"])
    assert v == "unfiled-url"
    assert verify_offline(code.text, trust, rev, NOW, 60, allowed_url_prefixes=[GUIDE])[0] == "valid"
    # malformed
    assert verify_offline("hello", trust, rev, NOW, 60)[0] == "malformed"
    assert verify_offline(b"\xff\xfe", trust, rev, NOW, 60)[0] == "malformed"


def test_revocations_by_serial_identity_and_key() -> None:
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    code = _code(dept)
    for field, value in [("serials", code.serial), ("identities", code.identity_id), ("kids", dept.kid)]:
        rev = RevocationList(version=2, **{field: [value]})
        v, reason, _ = verify_offline(code.text, trust, rev, NOW, 60)
        assert v == "revoked", field
    # the cache must see a new list (and an in-place edit) rather than serve a stale index
    rev = RevocationList(version=3)
    assert verify_offline(code.text, trust, rev, NOW, 60)[0] == "valid"
    rev.serials.append(code.serial)
    assert verify_offline(code.text, trust, rev, NOW, 60)[0] == "revoked"


def test_key_outside_validity_window_is_unknown() -> None:
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    late = _code(dept, issued_at=NOW + 86400 * 500, expires_at=NOW + 86400 * 501)
    assert verify_offline(late.text, trust, None, NOW + 86400 * 500, 60)[0] == "unknown-key"


def test_build_refuses_bad_fields() -> None:
    key = signing.generate("ed25519")
    with pytest.raises(CityCodeError) as e:
        _code(key, identity_id="lower-case")
    assert e.value.field == "identity_id"
    with pytest.raises(CityCodeError) as e:
        _code(key, guide_url="ftp://x/")
    assert e.value.field == "guide_url"
    with pytest.raises(CityCodeError) as e:  # dynamic minute-class code living a day
        _code(key, attribute=Attribute("dynamic", "M", True), expires_at=NOW + 86400)
    assert e.value.field == "expires_at"
    with pytest.raises(CityCodeError) as e:
        _code(key, attribute="SQ0")
    assert e.value.field == "attribute"
    a = Attribute.parse("DM1")
    assert a.kind == "dynamic" and a.single_use and a.max_lifetime_s == 900


@pytest.mark.parametrize("profile", ["intl", "gm"])
def test_fits_qr_version_11_at_level_q_and_decodes(profile: str) -> None:
    key = signing.generate_for_profile(profile)  # type: ignore[arg-type]
    # The largest department data with a 36-char lower-case guide URL still fits version 11 at level Q.
    for guide, data in [("https://code.city-hub.example.gov.cn/c", "GATE-12-NORTH"),
                        ("https://code.city-hub.example.gov/c", "X" * 24), ("http://127.0.0.1:8080/c", "")]:
        code = _code(key, guide_url=guide, dept_data=data, identity_id="P3101010123456789K")
        assert citycode.qr_bits(code) <= citycode.QR_MAX_BITS
        qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_Q)
        qr.add_data(code.text, optimize=20)
        qr.make(fit=True)
        assert qr.version <= 11, (qr.version, len(code.text))
        buf = io.BytesIO()
        qr.make_image().save(buf, format="PNG")
        decoded = zbar_decode(Image.open(io.BytesIO(buf.getvalue())), symbols=[ZBarSymbol.QRCODE])
        assert decoded[0].data.decode() == code.text
    # A code that would need version 12 is refused at issue, naming what to shorten.
    with pytest.raises(CityCodeError) as e:
        _code(key, guide_url="https://code.city-hub.example.gov.cn/c", dept_data="X" * 24)
    assert e.value.field == "dept_data" and "version 11" in e.value.detail


def test_legacy_v1_codes_still_verify() -> None:
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    old = _code(dept, version="1")
    assert old.text.startswith(GUIDE + "/1.HC.A0001.SY0.") and old.text.count(".") > _code(dept).text.count(".")
    assert parse(old.text) == old
    assert verify_offline(old.text, trust, None, NOW, 60)[0] == "valid"
    assert citycode.serial_of(*old.resolver_path.split("/")) == old.serial
    assert citycode.serial_of(*_code(dept).resolver_path.split("/")) == old.serial
    assert citycode.serial_of("garbage", "x") == ""


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def test_v1_base32_trailing_bits_refused() -> None:
    """The reported hole: a 64-byte signature is 103 base32 chars whose last char carries 2 bits, so 7 other
    chars decode to the same bytes. Only the canonical one may parse; the others are malformed."""
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    old = _code(dept, version="1")
    head, last = old.text[:-1], old.text[-1]
    same_bytes = [c for c in _B32 if citycode._b32d(old.text.rsplit(".", 1)[1][:-1] + c) == old.signature]
    assert len(same_bytes) == 8 and last in same_bytes
    for c in same_bytes:
        v, reason, _ = verify_offline(head + c, trust, None, NOW, 60)
        assert (v == "valid") == (c == last), (c, v, reason)
        if c != last:
            assert v == "malformed" and reason.startswith("signature: not in canonical encoding")


def test_every_non_canonical_spelling_refused() -> None:
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    old, new = _code(dept, version="1"), _code(dept)
    iat = old.text.split("/")[-1].split(".")[1]
    variants = {
        "issued_at": old.text.replace(f".{iat}.", f".0{iat}."),  # base36 with a leading zero
        "text": new.text + "\n",
        "signature": new.text[: -citycode._SIG_DIGITS] + str(2**512 + 5),  # 155 digits, above 2**512
    }
    for field_name, text in variants.items():
        with pytest.raises(CityCodeError) as e:
            parse(text)
        assert e.value.field == field_name, (field_name, str(e.value))
        assert verify_offline(text, trust, None, NOW, 60)[0] == "malformed"
    with pytest.raises(CityCodeError):
        parse(" " + new.text)
    with pytest.raises(CityCodeError):  # lower-case base32
        parse(old.text[:-5] + old.text[-5:].lower())
    zero_life = new.text[: -citycode._SIG_DIGITS - citycode._LIFE_DIGITS] + "0" * 9 + new.text[-citycode._SIG_DIGITS:]
    assert verify_offline(zero_life, trust, None, NOW, 60)[0] == "malformed"


def test_verify_reuses_its_key_and_revocation_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification stays cheap because the trust and revocation indexes are built once per list version,
    not per code (the speed itself is measured by bench/scanner.py, never timed here)."""
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    rev = RevocationList(version=1, serials=[f"S{i:08d}" for i in range(50_000)])
    text = _code(dept).text
    built: list[str] = []
    for name in ("_TrustIndex", "_RevIndex"):
        cls = getattr(citycode, name)
        monkeypatch.setattr(citycode, name, type(name, (cls,), {
            "__init__": lambda self, obj, _c=cls, _n=name: (built.append(_n), _c.__init__(self, obj))[1]}))
    for _ in range(2000):
        assert verify_offline(text, trust, rev, NOW, 60)[0] == "valid"
    assert sorted(built) == ["_RevIndex", "_TrustIndex"]  # once each for 2,000 verifications
    newer = RevocationList(version=2, serials=[*rev.serials, "S99999999"])
    assert verify_offline(text, trust, newer, NOW, 60)[0] == "valid"
    assert sorted(built) == ["_RevIndex", "_RevIndex", "_TrustIndex"]  # a new version: its own index


_TRUST = _trust(signing.generate("ed25519"), signing.generate("ed25519"))
_VALID = _code(signing.generate("ed25519")).text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_bytes_never_crash(data: bytes) -> None:
    v, reason, _ = verify_offline(data, _TRUST, RevocationList(version=1), NOW, 60)
    assert v in {"malformed", "unknown-key", "bad-signature"} and reason


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_VALID) - 1), st.sampled_from(list("0AZ.-/79~ \x00é")))
def test_fuzz_single_char_mutation(pos: int, ch: str) -> None:
    mutated = _VALID[:pos] + ch + _VALID[pos + 1 :]
    v, _, _ = verify_offline(mutated, _TRUST, None, NOW, 60)
    # no mutation of a code (signed by an untrusted key here) can turn it valid
    assert v in {"malformed", "unknown-key", "bad-signature"}
    try:
        parse(mutated)
    except CityCodeError as e:
        assert e.field


def test_datetime_now_accepted() -> None:
    dept, root = signing.generate("ed25519"), signing.generate("ed25519")
    trust = _trust(dept, root)
    code = _code(dept)
    now = datetime.fromtimestamp(NOW, UTC) + timedelta(minutes=1)
    assert verify_offline(code.text, trust, None, now, 60)[0] == "valid"


# ---- offline and online agree ---------------------------------------------------------------------

_MUT_CHARS = list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcz.-/:=_ \t\n\x00é")


def _mutations() -> st.SearchStrategy[tuple[str, int, str]]:
    # Negative positions count from the end: the signature's encoding is where unused bits hide.
    pos = st.one_of(st.integers(min_value=0, max_value=10**6), st.integers(min_value=-12, max_value=-1))
    return st.tuples(st.sampled_from(["sub", "ins", "del", "case"]), pos, st.sampled_from(_MUT_CHARS))


def _mutate(text: str, op: str, pos: int, ch: str) -> str:
    i = pos % (len(text) + (op == "ins"))  # Python's modulo maps -1 to the last position
    if op == "sub":
        return text[:i] + ch + text[i + 1 :]
    if op == "ins":
        return text[:i] + ch + text[i:]
    if op == "del":
        return text[:i] + text[i + 1 :]
    return text[:i] + text[i].swapcase() + text[i + 1 :]


def test_offline_and_online_verdicts_agree_on_mutations(city: Any, tmp_path: Any) -> None:
    """Real codes issued by the hub, mutated (substitution, insertion, deletion, case flip): the terminal's
    offline verdict (edge Verifier over protocol.citycode, with the hub's signed lists) equals the hub's
    online verdict (POST /codes/verify) on every input, and only the unmutated code is valid."""
    from edge.scanner.trust_store import TrustStore
    from edge.scanner.verify import Verifier
    from tests.codes.conftest import register_entity

    app_id = city.approved_scene()
    texts = [city.ok(city.issue(app_id, register_entity(city.hub), image="none"), 201)["text"] for _ in range(2)]
    texts.append(city.ok(city.issue(app_id, register_entity(city.hub), image="none", dept_data="WARD-3"), 201)["text"])
    root = signing.PublicKey.from_dict(city.ok(city.c.get("/api/v1/codes/root")))
    store = TrustStore(root, tmp_path / "terminal")
    for kind in ("trust", "revocations"):
        ok, why = store.apply_bytes(kind, city.c.get(f"/api/v1/codes/{kind}").content)  # type: ignore[arg-type]
        assert ok, why
    terminal = Verifier(store, None)

    def both(text: str) -> tuple[str, str]:
        r = city.c.post("/api/v1/codes/verify", headers=city.issuer, json={"text": text})
        # The API refuses some junk (e.g. control characters) before verifying: its "malformed".
        online = r.json()["verdict"] if r.status_code == 200 else "malformed" if r.status_code == 422 else r.text
        return terminal.verify(text).verdict, online

    for t in texts:
        assert both(t) == ("valid", "valid")
    # Exhaustively: every substitution in the last 6 characters (where a base32 tail hid 7 twins of a code).
    t = texts[0]
    for i in range(len(t) - 6, len(t)):
        for ch in _MUT_CHARS[:42]:
            mutated = t[:i] + ch + t[i + 1 :]
            offline, online = both(mutated)
            assert offline == online and (offline == "valid") == (mutated == t), (i, ch, offline, online)

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(texts), _mutations())
    def check(text: str, mutation: tuple[str, int, str]) -> None:
        mutated = _mutate(text, *mutation)
        offline, online = both(mutated)
        assert offline == online, (mutation, mutated, offline, online)
        assert (offline == "valid") == (mutated == text), (mutation, mutated, offline)

    check()
