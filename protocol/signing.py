"""Sign and verify with key ids, behind one interface for both crypto profiles.

Profiles: ``intl`` (Ed25519 signatures, SHA-256 hashes) and ``gm`` — the domestic-crypto profile
(国产化: SM2 signatures, SM3 hashes; SM2 native through tongsuopy). Callers hold `PrivateKey`/`PublicKey`
objects and never branch on the algorithm, so a new algorithm is one more entry in `_ALGS`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

Algorithm = Literal["ed25519", "sm2"]
Profile = Literal["intl", "gm"]
PROFILE_ALG: dict[str, Algorithm] = {"intl": "ed25519", "gm": "sm2"}


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest(data: bytes, profile: Profile = "intl") -> bytes:
    """SHA-256, or SM3 under the domestic profile (OpenSSL's SM3 via cryptography: same output as gmssl)."""
    if profile == "gm":
        h = hashes.Hash(hashes.SM3())
        h.update(data)
        return h.finalize()
    return hashlib.sha256(data).digest()


def canonical(obj: Any) -> bytes:
    """The bytes that get signed: compact JSON with sorted keys, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _Alg(Protocol):
    def generate(self) -> tuple[bytes, bytes]: ...
    def sign(self, private: bytes, data: bytes) -> bytes: ...
    def verify(self, public: bytes, data: bytes, sig: bytes) -> bool: ...


K = TypeVar("K")


class _KeyCache(Generic[K]):
    """Loaded key objects by their raw bytes (loading costs as much as a signature); cleared when full."""

    MAX = 4096

    def __init__(self, load: Callable[[bytes], K]) -> None:
        self._load = load
        self._keys: dict[bytes, K] = {}

    def get(self, raw: bytes) -> K:
        key = self._keys.get(raw)
        if key is None:
            if len(self._keys) >= self.MAX:
                self._keys.clear()
            key = self._keys[raw] = self._load(raw)
        return key


class _Ed25519:
    def __init__(self) -> None:
        self._priv = _KeyCache(Ed25519PrivateKey.from_private_bytes)
        self._pub = _KeyCache(Ed25519PublicKey.from_public_bytes)

    def generate(self) -> tuple[bytes, bytes]:
        key = Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization as s

        priv = key.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
        pub = key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
        return priv, pub

    def sign(self, private: bytes, data: bytes) -> bytes:
        return self._priv.get(private).sign(data)

    def verify(self, public: bytes, data: bytes, sig: bytes) -> bool:
        try:
            self._pub.get(public).verify(sig, data)
            return True
        except (InvalidSignature, ValueError):
            return False


# SM2 curve order (GB/T 32918.5): private keys lie in [1, n-2], signature halves r and s in [1, n-1].
_SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123


class _Tongsuo:
    """The parts of tongsuopy SM2 needs, imported on first use (an intl-only terminal never loads Tongsuo)."""

    def __init__(self) -> None:
        from tongsuopy.crypto import hashes as th
        from tongsuopy.crypto import serialization as ts
        from tongsuopy.crypto.asymciphers import ec
        from tongsuopy.crypto.exceptions import InvalidSignature as TongsuoInvalidSignature

        self.ec, self.serialization, self.invalid = ec, ts, TongsuoInvalidSignature
        self.curve = ec.SM2()
        # With an SM2 key, ECDSA(SM3) selects Tongsuo's SM2 scheme: e = SM3(Z || M), Z over the default
        # user id 1234567812345678, exactly what gmssl's sign_with_sm3 / verify_with_sm3 compute.
        self.scheme = ec.ECDSA(th.SM3())


class _SM2:
    """SM2 with SM3 (GB/T 32918), native through tongsuopy (Tongsuo, the OpenSSL fork with the GM
    algorithms). Keys are raw big-endian bytes (priv 32, pub 64 = x || y) and signatures raw r || s (64),
    as gmssl made them: keys, codes and lists signed before the switch keep verifying. gmssl stays in the
    tests as the oracle."""

    def __init__(self) -> None:
        self._lib: _Tongsuo | None = None
        self._priv: _KeyCache[Any] = _KeyCache(self._load_private)
        self._pub: _KeyCache[Any] = _KeyCache(self._load_public)

    @property
    def lib(self) -> _Tongsuo:
        if self._lib is None:
            self._lib = _Tongsuo()
        return self._lib

    def _load_private(self, raw: bytes) -> Any:
        d = int.from_bytes(raw, "big")
        # d = n-1 makes 1 + d non-invertible: Tongsuo's signing loop would never end.
        if len(raw) != 32 or not 1 <= d <= _SM2_N - 2:
            raise ValueError("priv: not an SM2 private key (32 bytes, 1 <= d <= n-2)")
        return self.lib.ec.derive_private_key(d, self.lib.curve)

    def _load_public(self, raw: bytes) -> Any:
        if len(raw) != 64:
            raise ValueError("pub: an SM2 public key is 64 bytes (x || y)")
        # oct2point refuses coordinates >= p and points off the curve (ValueError).
        return self.lib.ec.EllipticCurvePublicKey.from_encoded_point(self.lib.curve, b"\x04" + raw)

    def generate(self) -> tuple[bytes, bytes]:
        ts = self.lib.serialization
        while True:
            key = self.lib.ec.generate_private_key(self.lib.curve)
            d = key.private_numbers().private_value
            if d <= _SM2_N - 2:  # OpenSSL draws from [1, n-1]
                break
        pub = key.public_key().public_bytes(ts.Encoding.X962, ts.PublicFormat.UncompressedPoint)
        return d.to_bytes(32, "big"), pub[1:]

    def sign(self, private: bytes, data: bytes) -> bytes:
        r, s = decode_dss_signature(self._priv.get(private).sign(data, self.lib.scheme))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, public: bytes, data: bytes, sig: bytes) -> bool:
        if len(sig) != 64 or len(public) != 64:
            return False
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        if not (0 < r < _SM2_N and 0 < s < _SM2_N):  # one encoding per signature (no r + n, no s + n)
            return False
        try:
            self._pub.get(public).verify(encode_dss_signature(r, s), data, self.lib.scheme)
            return True
        except (self.lib.invalid, ValueError):  # ValueError: a public key off the curve
            return False


_ALGS: dict[str, _Alg] = {"ed25519": _Ed25519(), "sm2": _SM2()}


def key_id(alg: Algorithm, public: bytes) -> str:
    """Stable short id of a public key: algorithm tag + 16 hex of its hash."""
    profile: Profile = "gm" if alg == "sm2" else "intl"
    return f"{alg[:2]}{digest(public, profile).hex()[:14]}"


@dataclass(frozen=True)
class PublicKey:
    alg: Algorithm
    kid: str
    raw: bytes

    def verify(self, data: bytes, sig: bytes) -> bool:
        return _ALGS[self.alg].verify(self.raw, data, sig)

    def to_dict(self) -> dict[str, str]:
        return {"alg": self.alg, "kid": self.kid, "pub": b64e(self.raw)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PublicKey:
        alg = d.get("alg")
        if alg not in _ALGS:
            raise ValueError(f"alg: unknown algorithm {alg!r}")
        return cls(alg=alg, kid=str(d["kid"]), raw=b64d(str(d["pub"])))


@dataclass(frozen=True)
class PrivateKey:
    alg: Algorithm
    kid: str
    raw: bytes
    public_raw: bytes

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.alg, self.kid, self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return _ALGS[self.alg].sign(self.raw, data)

    def to_dict(self) -> dict[str, str]:
        return {"alg": self.alg, "kid": self.kid, "priv": b64e(self.raw), "pub": b64e(self.public_raw)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivateKey:
        alg = d.get("alg")
        if alg not in _ALGS:
            raise ValueError(f"alg: unknown algorithm {alg!r}")
        return cls(alg=alg, kid=str(d["kid"]), raw=b64d(d["priv"]), public_raw=b64d(d["pub"]))


def generate(alg: Algorithm = "ed25519", kid: str | None = None) -> PrivateKey:
    priv, pub = _ALGS[alg].generate()
    return PrivateKey(alg=alg, kid=kid or key_id(alg, pub), raw=priv, public_raw=pub)


def generate_for_profile(profile: Profile) -> PrivateKey:
    return generate(PROFILE_ALG[profile])


class KeyRing:
    """Public keys by key id: what a verifier trusts."""

    def __init__(self, keys: list[PublicKey] | None = None) -> None:
        self._keys: dict[str, PublicKey] = {k.kid: k for k in keys or []}

    def add(self, key: PublicKey) -> None:
        self._keys[key.kid] = key

    def get(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    def verify(self, kid: str, data: bytes, sig: bytes) -> bool:
        key = self._keys.get(kid)
        return key is not None and key.verify(data, sig)

    def __contains__(self, kid: str) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)
