"""Sign and verify with key ids, behind one interface for both crypto profiles.

Profiles: ``intl`` (Ed25519 signatures, SHA-256 hashes) and ``gm`` — the domestic-crypto profile
(国产化: SM2 signatures, SM3 hashes, via gmssl). Callers hold `PrivateKey`/`PublicKey` objects and never
branch on the algorithm, so a new algorithm is one more entry in `_ALGS`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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


class _SM2:
    """SM2 with SM3 (GB/T 32918) through gmssl; keys are raw big-endian bytes (priv 32, pub 64)."""

    def _crypt(self, private: bytes | None, public: bytes) -> Any:
        from gmssl import sm2

        # gmssl's constructor lstrip()s "04" (mangling keys whose hex starts with 0/4): set fields after.
        crypt = sm2.CryptSM2(private_key=private.hex() if private else "", public_key="")
        crypt.public_key = public.hex()
        return crypt

    def generate(self) -> tuple[bytes, bytes]:
        from gmssl import sm2

        c = sm2.CryptSM2(private_key="", public_key="")
        n = int(c.ecc_table["n"], 16)
        d = secrets.randbelow(n - 2) + 1
        pub_hex = c._kg(d, c.ecc_table["g"])
        return d.to_bytes(32, "big"), bytes.fromhex(pub_hex)

    def public_of(self, private: bytes) -> bytes:
        from gmssl import sm2

        c = sm2.CryptSM2(private_key="", public_key="")
        return bytes.fromhex(c._kg(int.from_bytes(private, "big"), c.ecc_table["g"]))

    def sign(self, private: bytes, data: bytes) -> bytes:
        crypt = self._crypt(private, self.public_of(private))
        return bytes.fromhex(crypt.sign_with_sm3(data, secrets.token_hex(32)))

    def verify(self, public: bytes, data: bytes, sig: bytes) -> bool:
        if len(sig) != 64 or len(public) != 64:
            return False
        try:
            return bool(self._crypt(None, public).verify_with_sm3(sig.hex(), data))
        except Exception:  # gmssl raises assorted errors on points off the curve
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
