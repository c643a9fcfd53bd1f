"""What every part of the codes service shares: the error type, constants, the service's state (`Part`),
and the calls into other capabilities (audit log, registry feed) made with the caller's `Db`."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.hub import Hub
from central.problems import HubError
from protocol import signing

if TYPE_CHECKING:
    from central.store import Db

DEPT_ID = re.compile(r"^[A-Z][0-9A-Z]{1,15}$")
SCENE_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
ENTITY_TYPES = ("person", "enterprise", "object", "place")
NO_SYSTEM = "-"  # trust-list placeholder: a key of a department with no approved scene may sign nothing
KEY_LIFETIME_S = 2 * 366 * 86400


class CodesError(HubError):
    """A refusal of the codes rules; `status` as the HTTP answer means it (400/403/404/409/410/422)."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", status=status, field=field)
        self.detail = detail


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def audit(db: Db, actor: str, action: str, target: str, org: str | None, detail: dict[str, Any] | None = None) -> None:
    """Chain an audit row inside the caller's transaction (`db`)."""
    try:
        from central.iam.audit import record
    except ImportError:  # iam absent (bare protocol tests): nothing to chain into
        return
    record(db, actor=actor, action=action, target=target, org=org, detail=detail or {})


def feed(db: Db, kind: str, entity_id: str | None, data: dict[str, Any]) -> None:
    """Issuance and scans join the registry's change feed when the registry provides one."""
    try:
        from central.registry.service import append_feed
    except ImportError:
        return
    append_feed(db, kind, entity_id, data)


def codes_feed(db: Db, changes: list[tuple[str, str | None, dict[str, Any]]]) -> None:
    """Append (type, org, data) changes to the codes feed (docs/FEEDS.md) in the write's own transaction."""
    if changes:
        from central.codes import store

        at = now_iso()
        store.append_feed(db, [{"at": at, "type": t, "org": org, "data": json.dumps(d, ensure_ascii=False)}
                               for t, org, d in changes])


def new_serial() -> str:
    # 80 random bits, base32: unguessable, so serials cannot be enumerated on the resolver.
    return base64.b32encode(secrets.token_bytes(10)).decode()


def under_any(org: str, scopes: list[str]) -> bool:
    return any(org == s or org.startswith(s.rstrip("/") + "/") for s in scopes)


class Part:
    """The state every part of `CodesService` reads; the parts are mixed into that one class."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.profile: signing.Profile = hub.settings.security.crypto_profile
        self.alg: signing.Algorithm = signing.PROFILE_ALG[self.profile]
        self.keys_dir: Path = hub.settings.keys_dir / "codes"
        self._lock = threading.RLock()
        self._priv: dict[str, signing.PrivateKey] = {}
        self._pub: dict[str, tuple[signing.PublicKey, str]] = {}  # kid (upper) -> key; immutable once made
        self._root: signing.PrivateKey | None = None
        self._stats: Counter[tuple[str, int, str]] = Counter()
        self._stats_flushed = time.monotonic()
        self.hub_resolver = hub.settings.public_url.rstrip("/") + "/c"
        # Hot-path caches for online verification and app-key lookups, kept while the store's cache
        # generation is the one they were filled under: every change to what they hold replaces it in its
        # own transaction (central/codes/store.py), so a change on any hub process is seen at once here.
        self._cache: dict[tuple[str, str], Any] = {}
        self._cache_gen: str | None = None

    def _cached(self, kind: str, key: str, load: Any, db: Db | None = None) -> Any:
        """`load()`'s value for (kind, key), cached under the store's cache generation (one primary-key
        read per call, on the caller's connection `db` when given)."""
        from central.codes import store

        if db is None:
            with self.hub.store.read() as rdb:
                gen = store.cache_generation(rdb)
        else:
            gen = store.cache_generation(db)
        with self._lock:
            if gen != self._cache_gen:  # read before the load: a change in between reloads next time
                self._cache, self._cache_gen = {}, gen
            if (kind, key) in self._cache:
                return self._cache[(kind, key)]
        val = load()
        with self._lock:
            if self._cache_gen == gen:
                self._cache[(kind, key)] = val
        return val

    def _invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
