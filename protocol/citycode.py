"""City code (城市码): the compact signed QR payload, its parser and the offline verifier.

The QR content is a URL so any phone opens the city's service page, while a scan terminal verifies it
with no network. Three segments (see docs/ARCHITECTURE.md, "City code"):

    {guide URL}/{city-managed segment}/{department segment}
    v2: https://code.city.example/c/2.HC.A7K2.SY0.P3101ABC0001X/PASS.K7Q2M9PZ4R8WXNCF.ED1A2B.<174 digits>
    v1: https://code.city.example/c/1.HC.A7K2.SY0.P3101ABC0001X/PASS.SIZJ6O.T2E4XS.K7Q2M9PZ4R8WXNCF.ED1A2B.<sig>

1. guide segment: the filed resolver base URL (only filed and audited URLs may appear);
2. city-managed segment, assigned by the city: format version, code-system id, authorization id (the
   approved issuance application), attribute id (3 chars: S/D static|dynamic, validity class, 0/1
   single-use) and identity id (the entity's unified base identifier);
3. department segment: short department data, serial, key id, then one fixed-width decimal run: issue
   time (10 digits, epoch s), lifetime (9 digits, s) and the 64-byte signature as a 155-digit big-endian
   integer, signed over everything before the run. (v1, still verified: issue time and expiry in base36,
   serial, key id, signature in RFC 4648 base32 without padding.)

Why decimal: a QR encoder packs digits at 3.33 bits each against 5.5 bits per alphanumeric char, so the
v2 tail costs ~55 bits less than v1's, which keeps a code with a 38-char guide URL and 24 chars of
department data inside QR version 11 at error-correction level Q (v1 needed version 12).

Canonical encoding: `parse` re-renders what it parsed and refuses any text that differs (base32 trailing
bits, base36 leading zeros, case, whitespace, ...), so one code has exactly one accepted spelling and the
terminal (offline) and the hub (online) see the same text and give the same verdict.
"""

from __future__ import annotations

import base64
import re
import threading
import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Literal

from protocol import signing
from protocol.trust import RevocationList, TrustedKey, TrustList

FORMAT_VERSION = "2"  # what `build` writes; parse also reads LEGACY_VERSIONS
LEGACY_VERSIONS = ("1",)
SIG_BYTES = 64  # Ed25519 and SM2 (raw r||s) both
_ISSUED_DIGITS, _LIFE_DIGITS, _SIG_DIGITS = 10, 9, 155  # 10**155 > 2**512
_TAIL_DIGITS = _ISSUED_DIGITS + _LIFE_DIGITS + _SIG_DIGITS
# Data bits of a QR symbol at version 11, error-correction level Q (ISO/IEC 18004 table 7): `build` refuses
# a code that needs more, so every code keeps Q's ~25 % damage margin at <= 61x61 modules.
QR_MAX_VERSION, QR_MAX_BITS = 11, 1440
_QR_ALNUM = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
MAX_TEXT = 1024  # longer than any code we build; refuse before doing any work
# Domain separation: a code signature can never be replayed as some other signed object.
_SIG_CONTEXT = b"citycode/v1\n"

# Validity classes (the middle char of the attribute id) -> longest lifetime allowed, in seconds.
VALIDITY_CLASSES: dict[str, int] = {
    "M": 15 * 60,  # minutes: dynamic on-screen codes that refresh
    "H": 24 * 3600,  # hours: day passes
    "D": 31 * 86400,  # days
    "Y": 366 * 86400,  # a year
    "L": 10 * 366 * 86400,  # long-term printed codes (doorplates, equipment)
}

Verdict = Literal[
    "valid", "expired", "revoked", "unknown-key", "bad-signature", "malformed", "wrong-system", "unfiled-url"
]

_CODE_SYSTEM = re.compile(r"^[0-9A-Z]{1,8}$")
_AUTH = re.compile(r"^[0-9A-Z-]{1,20}$")
_IDENTITY = re.compile(r"^[0-9A-Z-]{1,40}$")
_DATA = re.compile(r"^[0-9A-Z-]{0,24}$")
_TIME = re.compile(r"^[0-9A-Z]{1,8}$")
_SERIAL = re.compile(r"^[0-9A-Z]{4,32}$")
_KID = re.compile(r"^[0-9A-Z-]{4,32}$")
_SIG = re.compile(r"^[A-Z2-7]{8,400}$")
_TAIL = re.compile(rf"^[0-9]{{{_TAIL_DIGITS}}}$")
_ATTR = re.compile(r"^[SD][A-Z][01]$")
_GUIDE = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[!-~]{1,200}$")  # printable ASCII, no spaces


class CityCodeError(ValueError):
    """A code that cannot be parsed or built; `field` names the offending part."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


@dataclass(frozen=True)
class Attribute:
    """Attribute id: static/dynamic, validity class, and single-use (scan terminals refuse a replay)."""

    kind: Literal["static", "dynamic"] = "static"
    validity: str = "Y"
    single_use: bool = False

    def code(self) -> str:
        return f"{'S' if self.kind == 'static' else 'D'}{self.validity}{int(self.single_use)}"

    @classmethod
    def parse(cls, text: str) -> Attribute:
        if not _ATTR.match(text):
            raise CityCodeError("attribute", f"{text!r} must be [S|D][class][0|1]")
        if text[1] not in VALIDITY_CLASSES:
            raise CityCodeError("attribute", f"unknown validity class {text[1]!r}; known: {''.join(VALIDITY_CLASSES)}")
        return cls(kind="static" if text[0] == "S" else "dynamic", validity=text[1], single_use=text[2] == "1")

    @property
    def max_lifetime_s(self) -> int:
        return VALIDITY_CLASSES[self.validity]


def _b36(n: int) -> str:
    if n < 0:
        raise CityCodeError("time", "must not be negative")
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _b32e(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _b32d(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


@dataclass(frozen=True)
class CityCode:
    guide_url: str
    code_system: str
    auth_id: str
    attribute: Attribute
    identity_id: str
    dept_data: str
    issued_at: int  # epoch seconds
    expires_at: int
    serial: str
    kid: str  # uppercase in the code; matched case-insensitively against the trust list
    signature: bytes = field(default=b"", repr=False)
    version: str = FORMAT_VERSION

    @property
    def city_segment(self) -> str:
        return ".".join([self.version, self.code_system, self.auth_id, self.attribute.code(), self.identity_id])

    @cached_property
    def unsigned_text(self) -> str:
        if self.version == "1":
            dept = ".".join([self.dept_data, _b36(self.issued_at), _b36(self.expires_at), self.serial, self.kid])
            return f"{self.guide_url}/{self.city_segment}/{dept}"
        times = f"{self.issued_at:0{_ISSUED_DIGITS}d}{self.expires_at - self.issued_at:0{_LIFE_DIGITS}d}"
        return f"{self.guide_url}/{self.city_segment}/{self.dept_data}.{self.serial}.{self.kid}.{times}"

    def signed_bytes(self) -> bytes:
        """What the department key signs: segments 1-3 up to (not including) the signature."""
        return _SIG_CONTEXT + self.unsigned_text.encode()

    @cached_property
    def text(self) -> str:
        """The QR content (the one canonical spelling of this code)."""
        if self.version == "1":
            return f"{self.unsigned_text}.{_b32e(self.signature)}"
        return f"{self.unsigned_text}{int.from_bytes(self.signature, 'big'):0{_SIG_DIGITS}d}"

    @property
    def resolver_path(self) -> str:
        """The part after the guide URL: what the resolver route receives."""
        return self.text[len(self.guide_url) + 1 :]


def _check(pattern: re.Pattern[str], name: str, value: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise CityCodeError(name, f"{value!r} must match {pattern.pattern}")
    return value


def qr_bits(code: CityCode) -> int:
    """Data bits an optimizing QR encoder needs for `code.text` (versions 10-26 header sizes): the guide URL
    in byte mode (alphanumeric if it is all upper case), the rest alphanumeric, v2's digit tail numeric."""
    def alnum(n: int) -> int:
        return 4 + 11 + 11 * (n // 2) + 6 * (n % 2)

    guide = code.guide_url + "/"
    bits = alnum(len(guide)) if set(guide) <= _QR_ALNUM else 4 + 16 + 8 * len(guide.encode())
    rest = len(code.text) - len(guide)
    if code.version == "1":
        return bits + alnum(rest)
    n = _TAIL_DIGITS
    return bits + alnum(rest - n) + 4 + 12 + 10 * (n // 3) + (0, 4, 7)[n % 3]


def check_guide_url(url: str) -> str:
    """A guide URL: http(s), printable ASCII, no trailing slash, no query or fragment."""
    _check(_GUIDE, "guide_url", url)
    if url.endswith("/") or "?" in url or "#" in url:
        raise CityCodeError("guide_url", "no trailing '/', query or fragment allowed")
    rest = url.split("//", 1)[1]
    if not rest or rest.startswith("/"):
        raise CityCodeError("guide_url", "host missing")
    return url


def build(
    *,
    key: signing.PrivateKey,
    guide_url: str,
    code_system: str,
    auth_id: str,
    attribute: Attribute | str,
    identity_id: str,
    serial: str,
    issued_at: int,
    expires_at: int,
    dept_data: str = "",
    version: str = FORMAT_VERSION,
) -> CityCode:
    """Build and sign a code; raises CityCodeError naming the bad field (never produces an unparsable code).
    `version` "1" writes the legacy layout (kept for tests of codes issued before v2)."""
    if version not in (FORMAT_VERSION, *LEGACY_VERSIONS):
        raise CityCodeError("version", f"unknown format version {version!r}")
    attr = attribute if isinstance(attribute, Attribute) else Attribute.parse(attribute)
    Attribute.parse(attr.code())  # validates a hand-built Attribute too
    check_guide_url(guide_url)
    _check(_CODE_SYSTEM, "code_system", code_system)
    _check(_AUTH, "auth_id", auth_id)
    _check(_IDENTITY, "identity_id", identity_id)
    _check(_DATA, "dept_data", dept_data)
    _check(_SERIAL, "serial", serial)
    kid = _check(_KID, "kid", key.kid.upper())
    issued_at, expires_at = int(issued_at), int(expires_at)
    if issued_at < 0 or expires_at <= issued_at:
        raise CityCodeError("expires_at", "must be after issued_at (and both non-negative)")
    if expires_at - issued_at > attr.max_lifetime_s:
        raise CityCodeError("expires_at", f"lifetime exceeds validity class {attr.validity!r}")
    if expires_at >= 36**8 or (version != "1" and issued_at >= 10**_ISSUED_DIGITS):
        raise CityCodeError("expires_at", "too far in the future")
    code = CityCode(guide_url, code_system, auth_id, attr, identity_id, dept_data, issued_at, expires_at, serial, kid,
                    version=version)
    sig = key.sign(code.signed_bytes())
    if len(sig) != SIG_BYTES:  # the fixed-width v2 tail holds exactly 64 bytes
        raise CityCodeError("signature", f"{len(sig)}-byte signature; codes carry {SIG_BYTES}-byte signatures")
    code = replace(code, signature=sig)
    if version == FORMAT_VERSION and (bits := qr_bits(code)) > QR_MAX_BITS:
        raise CityCodeError("dept_data" if dept_data else "guide_url",
                            f"code needs {bits} QR data bits, version {QR_MAX_VERSION} at level Q holds {QR_MAX_BITS}:"
                            " shorten the department data or the guide URL")
    return code


def parse(text: str | bytes) -> CityCode:
    """Parse QR content; raises CityCodeError (field + detail) for anything malformed or not in its one
    canonical spelling. Does not verify."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise CityCodeError("text", "not UTF-8") from None
    if not isinstance(text, str):
        raise CityCodeError("text", "must be a string")
    if len(text) > MAX_TEXT:
        raise CityCodeError("text", f"longer than {MAX_TEXT} characters")
    if text != text.strip():
        raise CityCodeError("text", "leading or trailing whitespace")
    parts = text.rsplit("/", 2)
    if len(parts) != 3:
        raise CityCodeError("text", "expected {guide URL}/{city segment}/{department segment}")
    guide, city, dept = parts
    check_guide_url(guide)
    cf = city.split(".")
    if len(cf) != 5:
        raise CityCodeError("city_segment", f"expected 5 '.'-separated fields, got {len(cf)}")
    version = cf[0]
    if version not in (FORMAT_VERSION, *LEGACY_VERSIONS):
        raise CityCodeError("version", f"unsupported format version {version[:8]!r}")
    attr = Attribute.parse(cf[3])
    df = dept.split(".")
    if version == "1":
        if len(df) != 6:
            raise CityCodeError("dept_segment", f"expected 6 '.'-separated fields, got {len(df)}")
        data, serial, kid = df[0], df[3], df[4]
        _check(_TIME, "issued_at", df[1])
        _check(_TIME, "expires_at", df[2])
        issued, expires = int(df[1], 36), int(df[2], 36)
        _check(_SIG, "signature", df[5])
        try:
            sig = _b32d(df[5])
        except ValueError:
            raise CityCodeError("signature", "not valid base32") from None
    else:
        if len(df) != 4:
            raise CityCodeError("dept_segment", f"expected 4 '.'-separated fields, got {len(df)}")
        data, serial, kid, tail = df
        if not _TAIL.match(tail):
            raise CityCodeError("signature", f"expected {_TAIL_DIGITS} digits (issue time, lifetime, signature)")
        issued = int(tail[:_ISSUED_DIGITS])
        life = int(tail[_ISSUED_DIGITS : _ISSUED_DIGITS + _LIFE_DIGITS])
        if life < 1:
            raise CityCodeError("expires_at", "lifetime must be at least 1 s")
        expires = issued + life
        n = int(tail[_ISSUED_DIGITS + _LIFE_DIGITS :])
        if n >= 1 << (8 * SIG_BYTES):
            raise CityCodeError("signature", f"larger than {SIG_BYTES} bytes")
        sig = n.to_bytes(SIG_BYTES, "big")
    code = CityCode(
        guide_url=guide,
        code_system=_check(_CODE_SYSTEM, "code_system", cf[1]),
        auth_id=_check(_AUTH, "auth_id", cf[2]),
        attribute=attr,
        identity_id=_check(_IDENTITY, "identity_id", cf[4]),
        dept_data=_check(_DATA, "dept_data", data),
        issued_at=issued,
        expires_at=expires,
        serial=_check(_SERIAL, "serial", serial),
        kid=_check(_KID, "kid", kid),
        signature=sig,
        version=version,
    )
    # One code, one spelling: what was scanned must be exactly what this code renders to. This refuses the
    # whole class of alternative encodings of the same values (base32 trailing bits, base36 leading
    # zeros, ...) that would otherwise verify offline while the hub, matching its stored text, said forged.
    if code.text != text:
        field_name = _first_difference(code, text)
        raise CityCodeError(field_name, "not in canonical encoding")
    return code


def _first_difference(code: CityCode, text: str) -> str:
    """Name the field where `text` departs from the canonical rendering (for the error message)."""
    canon = code.text
    i = next((k for k, (a, b) in enumerate(zip(canon, text, strict=False)) if a != b), min(len(canon), len(text)))
    city_start = len(code.guide_url) + 1
    dept_start = city_start + len(code.city_segment) + 1
    if i < city_start:
        return "guide_url"
    if i < dept_start:
        return ["version", "code_system", "auth_id", "attribute", "identity_id"][min(canon[city_start:i].count("."), 4)]
    if code.version == "1":
        names = ["dept_data", "issued_at", "expires_at", "serial", "kid", "signature"]
        return names[min(canon[dept_start:i].count("."), 5)]
    k = canon[dept_start:i].count(".")
    if k < 3:
        return ["dept_data", "serial", "kid"][k]
    tail = i - (len(code.unsigned_text) - _ISSUED_DIGITS - _LIFE_DIGITS)
    if tail < _ISSUED_DIGITS:
        return "issued_at"
    return "expires_at" if tail < _ISSUED_DIGITS + _LIFE_DIGITS else "signature"


def serial_of(city_segment: str, dept_segment: str) -> str:
    """The serial in a resolver path's segments ("" when they are not a city code's), for a record lookup
    before full verification."""
    version = city_segment.split(".", 1)[0]
    fields = dept_segment.split(".")
    if version == "1" and len(fields) == 6:
        return fields[3].upper()
    if version == FORMAT_VERSION and len(fields) == 4:
        return fields[1].upper()
    return ""


# ---- offline verification ----------------------------------------------------------------------


class _TrustIndex:
    """Public keys of one trust-list version, loaded once (kid uppercased, as it appears in codes)."""

    def __init__(self, trust: TrustList) -> None:
        self.keys: dict[str, tuple[TrustedKey, signing.PublicKey]] = {}
        for k in trust.keys:
            try:
                self.keys[k.kid.upper()] = (k, k.public_key())
            except ValueError:  # an undecodable key in the list is simply not trusted
                continue


class _RevIndex:
    def __init__(self, rev: RevocationList) -> None:
        self.serials = frozenset(s.upper() for s in rev.serials)
        self.identities = frozenset(s.upper() for s in rev.identities)
        self.kids = frozenset(s.upper() for s in rev.kids)


def _fingerprint(obj: TrustList | RevocationList) -> tuple[object, ...]:
    # A new list from the hub has a new version/signature; the lengths catch in-place edits in tests.
    lens = (len(obj.keys),) if isinstance(obj, TrustList) else (len(obj.serials), len(obj.identities), len(obj.kids))
    return (obj.version, obj.signature, obj.issued_at, *lens)


class _Cache:
    """Per-object index cache keyed by id() with a weakref guard, so a reused id never hits stale data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, tuple[weakref.ref[object], tuple[object, ...], object]] = {}

    def get(self, obj: TrustList | RevocationList, make: type) -> object:
        fp = _fingerprint(obj)
        hit = self._items.get(id(obj))
        if hit is not None and hit[0]() is obj and hit[1] == fp:
            return hit[2]
        idx = make(obj)
        with self._lock:
            if len(self._items) > 16:  # devices hold one or two lists; drop dead entries
                self._items = {k: v for k, v in self._items.items() if v[0]() is not None}
            self._items[id(obj)] = (weakref.ref(obj), fp, idx)
        return idx


_cache = _Cache()


def _epoch(now: datetime | float | int) -> float:
    return now.timestamp() if isinstance(now, datetime) else float(now)


def trusted_key(code: CityCode, trust: TrustList) -> TrustedKey | None:
    """The trust-list entry that signs `code` (e.g. to learn its department)."""
    hit = _cache.get(trust, _TrustIndex).keys.get(code.kid)  # type: ignore[attr-defined]
    return hit[0] if hit else None


def verify_offline(
    text: str | bytes,
    trust: TrustList,
    revocations: RevocationList | None,
    now: datetime | float | int,
    skew_s: float = 300,
    allowed_url_prefixes: list[str] | tuple[str, ...] | None = None,
) -> tuple[Verdict, str, CityCode | None]:
    """Verify a scanned code with no network. Returns (verdict, reason, parsed-or-None); never raises
    on bad input. Order: malformed -> unknown-key -> bad-signature -> revoked -> wrong-system ->
    unfiled-url -> expired, so a forged code is reported as forged before any policy verdict."""
    try:
        code = parse(text)
    except CityCodeError as e:
        return "malformed", str(e), None
    except Exception as e:  # defensive: the scanner loop must never die on a crafted code
        return "malformed", f"text: {type(e).__name__}", None
    tidx: _TrustIndex = _cache.get(trust, _TrustIndex)  # type: ignore[assignment]
    hit = tidx.keys.get(code.kid)
    if hit is None:
        return "unknown-key", f"kid: {code.kid} is not in trust list v{trust.version}", code
    tk, pub = hit
    if not pub.verify(code.signed_bytes(), code.signature):
        return "bad-signature", f"signature: does not verify under key {code.kid}", code
    t = _epoch(now)
    if revocations is not None:
        ridx: _RevIndex = _cache.get(revocations, _RevIndex)  # type: ignore[assignment]
        if code.kid in ridx.kids:
            return "revoked", f"kid: key {code.kid} revoked (list v{revocations.version})", code
        if code.serial in ridx.serials:
            return "revoked", f"serial: code {code.serial} revoked (list v{revocations.version})", code
        if code.identity_id in ridx.identities:
            return "revoked", f"identity_id: all codes of {code.identity_id} revoked", code
    if not (tk.not_before.timestamp() - skew_s <= code.issued_at <= tk.not_after.timestamp() + skew_s):
        return "unknown-key", f"kid: key {code.kid} was not valid at the code's issue time", code
    if tk.code_systems and code.code_system not in tk.code_systems:
        return "wrong-system", f"code_system: key {code.kid} may not sign {code.code_system!r}", code
    if allowed_url_prefixes is not None and not any(code.guide_url.startswith(p) for p in allowed_url_prefixes):
        return "unfiled-url", f"guide_url: {code.guide_url[:80]!r} is not a filed URL", code
    if code.expires_at - code.issued_at > code.attribute.max_lifetime_s:
        return "malformed", f"expires_at: lifetime exceeds validity class {code.attribute.validity!r}", code
    if t > code.expires_at + skew_s:
        return "expired", f"expires_at: expired {int(t - code.expires_at)} s ago", code
    if code.issued_at > t + skew_s:
        return "expired", f"issued_at: not yet valid ({int(code.issued_at - t)} s in the future)", code
    return "valid", "ok", code
