"""City code (城市码): the compact signed QR payload, its parser and the offline verifier.

The QR content is a URL so any phone opens the city's service page, while a scan terminal verifies it
with no network. Three segments (see /work/shared/ARCHITECTURE.md, "City code"):

    {guide URL}/{city-managed segment}/{department segment}
    https://code.city.example/c/1.HC.A7K2.SY0.P3101ABC0001X/PASS.SIZJ6O.T2E4XS.K7Q2M9PZ4R8WXNCF.ED1A2B.<sig>

1. guide segment: the filed resolver base URL (only filed and audited URLs may appear);
2. city-managed segment, assigned by the city: format version, code-system id, authorization id (the
   approved issuance application), attribute id (3 chars: S/D static|dynamic, validity class, 0/1
   single-use) and identity id (the entity's unified base identifier);
3. department segment: short department data, issue time and expiry (base36 epoch seconds), serial,
   key id and the signature (RFC 4648 base32, no padding) over everything before it.

Every character after the guide URL is in the QR alphanumeric set (0-9 A-Z . -) and URL-safe, so an
encoder in optimized mode packs it at 5.5 bits/char and a typical code fits QR version <= 10 at EC
level M even with 64-byte Ed25519/SM2 signatures.
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

FORMAT_VERSION = "1"
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

    @property
    def city_segment(self) -> str:
        return ".".join([FORMAT_VERSION, self.code_system, self.auth_id, self.attribute.code(), self.identity_id])

    @cached_property
    def unsigned_text(self) -> str:
        dept = ".".join([self.dept_data, _b36(self.issued_at), _b36(self.expires_at), self.serial, self.kid])
        return f"{self.guide_url}/{self.city_segment}/{dept}"

    def signed_bytes(self) -> bytes:
        """What the department key signs: segments 1-3 up to (not including) the signature."""
        return _SIG_CONTEXT + self.unsigned_text.encode()

    @cached_property
    def text(self) -> str:
        """The QR content."""
        return f"{self.unsigned_text}.{_b32e(self.signature)}"

    @property
    def resolver_path(self) -> str:
        """The part after the guide URL: what the resolver route receives."""
        return self.text[len(self.guide_url) + 1 :]


def _check(pattern: re.Pattern[str], name: str, value: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise CityCodeError(name, f"{value!r} must match {pattern.pattern}")
    return value


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
) -> CityCode:
    """Build and sign a code; raises CityCodeError naming the bad field (never produces an unparsable code)."""
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
    if expires_at >= 36**8:
        raise CityCodeError("expires_at", "too far in the future")
    code = CityCode(guide_url, code_system, auth_id, attr, identity_id, dept_data, issued_at, expires_at, serial, kid)
    return replace(code, signature=key.sign(code.signed_bytes()))


def parse(text: str | bytes) -> CityCode:
    """Parse QR content; raises CityCodeError (field + detail) for anything malformed. Does not verify."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise CityCodeError("text", "not UTF-8") from None
    if not isinstance(text, str):
        raise CityCodeError("text", "must be a string")
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise CityCodeError("text", f"longer than {MAX_TEXT} characters")
    parts = text.rsplit("/", 2)
    if len(parts) != 3:
        raise CityCodeError("text", "expected {guide URL}/{city segment}/{department segment}")
    guide, city, dept = parts
    check_guide_url(guide)
    cf = city.split(".")
    if len(cf) != 5:
        raise CityCodeError("city_segment", f"expected 5 '.'-separated fields, got {len(cf)}")
    if cf[0] != FORMAT_VERSION:
        raise CityCodeError("version", f"unsupported format version {cf[0][:8]!r}")
    df = dept.split(".")
    if len(df) != 6:
        raise CityCodeError("dept_segment", f"expected 6 '.'-separated fields, got {len(df)}")
    attr = Attribute.parse(cf[3])
    _check(_TIME, "issued_at", df[1])
    _check(_TIME, "expires_at", df[2])
    _check(_SIG, "signature", df[5])
    try:
        sig = _b32d(df[5])
    except ValueError:
        raise CityCodeError("signature", "not valid base32") from None
    code = CityCode(
        guide_url=guide,
        code_system=_check(_CODE_SYSTEM, "code_system", cf[1]),
        auth_id=_check(_AUTH, "auth_id", cf[2]),
        attribute=attr,
        identity_id=_check(_IDENTITY, "identity_id", cf[4]),
        dept_data=_check(_DATA, "dept_data", df[0]),
        issued_at=int(df[1], 36),
        expires_at=int(df[2], 36),
        serial=_check(_SERIAL, "serial", df[3]),
        kid=_check(_KID, "kid", df[4]),
        signature=sig,
    )
    # Verify exactly the bytes that were scanned (no re-serialization: a padded time field or other
    # non-canonical variant then fails the signature instead of passing as the canonical code).
    code.__dict__["text"] = text
    code.__dict__["unsigned_text"] = text[: text.rindex(".")]
    return code


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
