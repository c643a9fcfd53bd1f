"""Keys: the city root key (signs the trust and revocation lists) and the departments' issuing keys (private
halves on disk, owner-only; public halves in codes_keys)."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from central.codes import store
from central.codes.service.common import KEY_LIFETIME_S, CodesError, Part, audit, now_iso
from protocol import signing

if TYPE_CHECKING:
    from central.store import Db


class KeysPart(Part):
    def _write_key(self, name: str, key: signing.PrivateKey) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        path = self.keys_dir / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private keys: owner only
        with os.fdopen(fd, "w") as f:
            json.dump(key.to_dict(), f)

    def _create_key_once(self, name: str, key: signing.PrivateKey) -> signing.PrivateKey:
        """Write `key` as `name` unless another hub process already has: the file appears whole or not at
        all (written aside, then hard-linked, which fails on an existing name), and the loser answers the
        winner's key, so every process signs with the same one."""
        tmp = f"{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        self._write_key(tmp, key)
        try:
            os.link(self.keys_dir / f"{tmp}.json", self.keys_dir / f"{name}.json")
        except FileExistsError:
            won = self._read_key(name)
            assert won is not None
            key = won
        finally:
            os.unlink(self.keys_dir / f"{tmp}.json")
        return key

    def _read_key(self, name: str) -> signing.PrivateKey | None:
        path = self.keys_dir / f"{name}.json"
        if not path.exists():
            return None
        return signing.PrivateKey.from_dict(json.loads(path.read_text()))

    @property
    def root(self) -> signing.PrivateKey:
        """The city root key that signs the trust and revocation lists (made on first use)."""
        with self._lock:
            if self._root is None:
                key = self._read_key("root")
                if key is None:
                    key = self._create_key_once("root", signing.generate(self.alg))
                self._root = key
            return self._root

    def _dept_private(self, kid: str) -> signing.PrivateKey:
        key = self._priv.get(kid)
        if key is None:
            key = self._read_key(f"dept-{kid}")
            if key is None:
                raise CodesError(409, "kid", f"private key {kid} is missing from {self.keys_dir}")
            self._priv[kid] = key
        return key

    def _public(self, db: Db, kid_upper: str) -> tuple[signing.PublicKey, str] | None:
        """(public key, dept) by the kid as written in codes; cached: a kid's key never changes."""
        hit = self._pub.get(kid_upper)
        if hit is None:
            row = store.public_key(db, kid_upper)
            if row is None:
                return None
            hit = (signing.PublicKey(alg=row["alg"], kid=row["kid"], raw=signing.b64d(row["pub"])), row["dept_id"])
            self._pub[kid_upper] = hit
        return hit

    def _new_dept_key(self, db: Db, dept_id: str) -> str:
        key = signing.generate(self.alg)
        self._write_key(f"dept-{key.kid}", key)
        self._priv[key.kid] = key
        now = time.time()
        store.insert_key(db, {
            "kid": key.kid, "dept_id": dept_id, "alg": key.alg, "pub": signing.b64e(key.public_raw),
            "status": "active", "not_before": now - 60, "not_after": now + KEY_LIFETIME_S, "created_at": now_iso(),
        })
        return key.kid

    def active_kid(self, dept_id: str) -> str:
        with self.hub.store.read() as db:
            kid = store.active_kid(db, dept_id)
        if kid is None:
            raise CodesError(409, "dept_id", f"department {dept_id} has no active issuing key")
        return kid

    def key_dept(self, kid: str) -> str | None:
        """The department a key belongs to (None: no such key)."""
        with self.hub.store.read() as db:
            row = store.key(db, kid)
        return row["dept_id"] if row else None

    def rotate_key(self, actor: str, dept_id: str) -> dict[str, Any]:
        """New active key; the old one retires (its not_after becomes now, so codes it signed before stay
        valid offline, and nothing signed with it later will verify)."""
        dept = self.department(dept_id)  # type: ignore[attr-defined]
        with self.hub.store.tx() as db:
            old = store.retire_keys(db, dept_id, time.time())
            kid = self._new_dept_key(db, dept_id)
            audit(db, actor, "codes.key.rotate", dept_id, dept["org"], {"new": kid, "retired": old})
        self.publish_trust()  # type: ignore[attr-defined]
        return {"dept_id": dept_id, "kid": kid, "retired": old}
