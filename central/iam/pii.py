"""PII at rest: authenticated encryption plus a keyed blind index for exact lookup, and display masks.

intl profile: AES-256-GCM + HMAC-SHA256 index; gm profile (国产化): SM4-GCM + HMAC-SM3 index.
Keys live in `settings.keys_dir` (0600), created on first use. Tokens carry the cipher name, so rows
written before a profile switch still decrypt (both keys are kept).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.signing import b64d, b64e

if TYPE_CHECKING:
    from central.hub import Hub

_KEY_BYTES = {"aes": 32, "sm4": 16, "index-sha256": 32, "index-sm3": 32}
_CIPHER_OF_PROFILE = {"intl": "aes", "gm": "sm4"}
_lock = threading.Lock()
_cache: dict[tuple[str, str], PiiCipher] = {}


class PiiError(ValueError):
    pass


def _load_key(keys_dir: Path, name: str) -> bytes:
    path = keys_dir / f"pii-{name}.key"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        keys_dir.mkdir(parents=True, exist_ok=True)
        raw = os.urandom(_KEY_BYTES[name])
        try:  # O_EXCL: two processes racing on first use agree on one key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
    if len(raw) != _KEY_BYTES[name]:
        raise PiiError(f"key file {path} has the wrong length")
    return raw


def _normalize(value: str) -> str:
    # ID-card check letter "x" and stray spaces/dashes must not change the index.
    return "".join(value.split()).replace("-", "").upper()


class PiiCipher:
    def __init__(self, keys_dir: Path, profile: str) -> None:
        self.keys_dir = keys_dir
        self.profile = profile
        self.cipher = _CIPHER_OF_PROFILE[profile]
        self._keys: dict[str, bytes] = {}

    def _key(self, name: str) -> bytes:
        if name not in self._keys:
            self._keys[name] = _load_key(self.keys_dir, name)
        return self._keys[name]

    def encrypt(self, value: str) -> str:
        nonce = os.urandom(12)
        algo: Any = algorithms.AES(self._key("aes")) if self.cipher == "aes" else algorithms.SM4(self._key("sm4"))
        enc = Cipher(algo, modes.GCM(nonce)).encryptor()
        ct = enc.update(value.encode()) + enc.finalize()
        return f"{self.cipher}:{b64e(nonce + ct + enc.tag)}"

    def decrypt(self, token: str) -> str:
        name, _, body = token.partition(":")
        if name not in ("aes", "sm4") or not body:
            raise PiiError("token: not a PII ciphertext")
        try:
            raw = b64d(body)
        except ValueError as e:
            raise PiiError("token: bad encoding") from e
        if len(raw) < 28:
            raise PiiError("token: too short")
        nonce, ct, tag = raw[:12], raw[12:-16], raw[-16:]
        algo: Any = algorithms.AES(self._key("aes")) if name == "aes" else algorithms.SM4(self._key("sm4"))
        try:
            dec = Cipher(algo, modes.GCM(nonce, tag)).decryptor()
            return (dec.update(ct) + dec.finalize()).decode()
        except InvalidTag as e:
            raise PiiError("token: authentication failed (wrong key or tampered)") from e

    def blind_index(self, kind: str, value: str) -> str:
        """Keyed, deterministic: equal values give equal indexes; without the key it reveals nothing."""
        algo: Any = hashes.SHA256() if self.profile == "intl" else hashes.SM3()
        name = "index-sha256" if self.profile == "intl" else "index-sm3"
        h = hmac.HMAC(self._key(name), algo)
        h.update(f"{kind}\x00{_normalize(value)}".encode())
        return h.finalize().hex()


def pii_cipher(hub: Hub) -> PiiCipher:
    profile = hub.settings.security.crypto_profile
    key = (str(hub.settings.keys_dir), profile)
    with _lock:
        c = _cache.get(key)
        if c is None:
            c = _cache[key] = PiiCipher(hub.settings.keys_dir, profile)
        return c


def mask_id_card(value: str | None) -> str | None:
    """110101199003071234 -> 110101********1234 (region + last four, as Chinese services show it)."""
    if not value:
        return value
    v = _normalize(value)
    if len(v) <= 8:
        return "*" * len(v)
    return v[:6] + "*" * (len(v) - 10) + v[-4:]


def mask_phone(value: str | None) -> str | None:
    """13812345678 -> 138****5678."""
    if not value:
        return value
    v = _normalize(value)
    if len(v) <= 7:
        return "*" * len(v)
    return v[:3] + "*" * (len(v) - 7) + v[-4:]


MASKS = {"id_card": mask_id_card, "phone": mask_phone}


def present(hub: Hub, principal: Any, org: str, kind: str, token: str | None, *, target: str = "",
            unmask: bool = True) -> str | None:
    """The value a principal may see: plain (and audited) with `pii.read` over `org`, else masked."""
    if token is None:
        return None
    plain = pii_cipher(hub).decrypt(token)
    if unmask and principal.allowed("pii.read", org):
        from central.iam.audit import record

        with hub.store.tx() as db:
            record(db, actor=principal.name, action="pii.read", target=target or kind, org=org,
                   detail={"field": kind})
        return plain
    return MASKS.get(kind, lambda v: "*" * len(v or ""))(plain)
