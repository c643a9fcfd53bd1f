"""Trust list (city root signs department keys) and revocation list: models, signatures, versioning.

Both are published retained on `city/v1/trust` and `city/v1/revocations`. A device applies a list only
when its signature checks against the pinned city root key AND its version is newer than the highest it
has seen (its rollback floor, kept even when the list itself is lost). `issued_at` is signed, so a
device can tell how old its revocation list is; the hub re-signs the list periodically so an unchanged
list does not age while the hub is reachable.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import Field

from protocol import signing
from protocol.messages import Message, now_utc


class TrustedKey(Message):
    kid: str = Field(min_length=4, max_length=32)
    alg: Literal["ed25519", "sm2"]
    pub: str = Field(max_length=200)  # urlsafe base64, no padding
    dept: str = Field(max_length=32)
    code_systems: list[str] = Field(default_factory=list, max_length=64)  # empty = any
    not_before: datetime
    not_after: datetime

    def public_key(self) -> signing.PublicKey:
        return signing.PublicKey(alg=self.alg, kid=self.kid, raw=signing.b64d(self.pub))


class _SignedList(Message):
    version: int = Field(ge=1)
    issued_at: datetime = Field(default_factory=now_utc)
    signer_kid: str = ""
    signature: str = ""

    def signed_bytes(self) -> bytes:
        return signing.canonical(self.model_dump(mode="json", exclude={"signature"}))

    def sign(self, root: signing.PrivateKey) -> None:
        self.signer_kid = root.kid
        self.signature = signing.b64e(root.sign(self.signed_bytes()))

    def verify(self, root: signing.PublicKey) -> bool:
        if self.signer_kid != root.kid or not self.signature:
            return False
        try:
            sig = signing.b64d(self.signature)
        except ValueError:
            return False
        return root.verify(self.signed_bytes(), sig)

    def age_s(self, now: float) -> float:
        """Seconds since the list was signed (0 if its time is ahead of this clock)."""
        return max(0.0, now - self.issued_at.timestamp())

    def fingerprint(self) -> str:
        """Identifies this exact signed list (what a rollback floor remembers besides the version)."""
        return hashlib.sha256(self.signature.encode()).hexdigest()[:32]


class TrustList(_SignedList):
    keys: list[TrustedKey] = Field(default_factory=list, max_length=10_000)


class RevocationList(_SignedList):
    """Revoked code serials, revoked entities (every code of an identity id) and revoked key ids."""

    serials: list[str] = Field(default_factory=list)
    identities: list[str] = Field(default_factory=list)
    kids: list[str] = Field(default_factory=list)


def accept(current_version: int | None, new: _SignedList, root: signing.PublicKey,
           floor: tuple[int, str] | None = None) -> tuple[bool, str]:
    """Whether a device should apply `new`; the reason says why not (forged, rollback, replay).

    `floor` is (highest version seen, its fingerprint): a list must be newer than it, except the very list
    the floor was taken from, which a device that lost its copy may take again."""
    if not new.verify(root):
        return False, "bad-signature: list not signed by the pinned city root key"
    if current_version is not None and new.version <= current_version:
        return False, f"rollback: version {new.version} <= held {current_version}"
    if floor is not None and (new.version < floor[0] or (new.version == floor[0] and new.fingerprint() != floor[1])):
        return False, f"rollback: version {new.version} <= highest seen {floor[0]}"
    return True, "ok"
