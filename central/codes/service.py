"""City code authority rules: departments, applications with three checks, URL filing, keys, issuing,
online verification, revocation, supervision, webhooks. No HTTP types here; errors are `CodesError`
carrying the HTTP-ish status and the field at fault."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from central import csvsafe
from central.hub import Hub, LoopWorker
from central.iam.service import maker_refusal, note_maker
from protocol import citycode, signing, topics
from protocol.messages import ScanBatch
from protocol.trust import RevocationList, TrustedKey, TrustList

log = logging.getLogger("citybrain.codes")

DEPT_ID = re.compile(r"^[A-Z][0-9A-Z]{1,15}$")
SCENE_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
ENTITY_TYPES = ("person", "enterprise", "object", "place")
NO_SYSTEM = "-"  # trust-list placeholder: a key of a department with no approved scene may sign nothing
# Terminals treat a revocation list older than 24 h (its signed issued_at) as stale: re-sign it hourly.
REVOCATIONS_REFRESH_S = 3600
KEY_LIFETIME_S = 2 * 366 * 86400
WEBHOOK_MAX_ATTEMPTS = 6


class CodesError(Exception):
    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.status = status
        self.field = field
        self.detail = detail


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _rows(cur: Any) -> list[dict[str, Any]]:
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _audit(
    db: sqlite_utils.Database,
    actor: str,
    action: str,
    target: str,
    org: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    try:
        from central.iam.audit import record
    except ImportError:  # iam absent (bare protocol tests): nothing to chain into
        return
    record(db, actor=actor, action=action, target=target, org=org, detail=detail or {})


def _feed(db: sqlite_utils.Database, kind: str, entity_id: str | None, data: dict[str, Any]) -> None:
    """Issuance and scans join the registry's change feed when the registry provides one."""
    try:
        from central.registry.service import append_feed  # type: ignore[attr-defined]
    except ImportError:
        return
    append_feed(db, kind, entity_id, data)


def _table_exists(db: sqlite_utils.Database, name: str) -> bool:
    return db.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _new_serial() -> str:
    # 80 random bits, base32: unguessable, so serials cannot be enumerated on the resolver.
    return base64.b32encode(secrets.token_bytes(10)).decode()


class CodesService:
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
        self.webhook_worker = LoopWorker("codes-webhooks", self._webhook_step, interval_s=1.0)
        self.hub_resolver = hub.settings.public_url.rstrip("/") + "/c"
        # Hot-path caches for online verification; cleared in-process on change, and expiring after
        # CACHE_TTL_S so other hub processes pick up a change within that time.
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}

    CACHE_TTL_S = 5.0

    def _cached(self, kind: str, key: str, load: Any) -> Any:
        hit = self._cache.get((kind, key))
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.CACHE_TTL_S:
            return hit[1]
        val = load()
        self._cache[(kind, key)] = (now, val)
        return val

    def _invalidate(self) -> None:
        self._cache.clear()

    # ---- keys ------------------------------------------------------------------------------------

    def _write_key(self, name: str, key: signing.PrivateKey) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        path = self.keys_dir / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private keys: owner only
        with os.fdopen(fd, "w") as f:
            json.dump(key.to_dict(), f)

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
                    key = signing.generate(self.alg)
                    self._write_key("root", key)
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

    def _public(self, kid_upper: str) -> tuple[signing.PublicKey, str] | None:
        """(public key, dept) by the kid as written in codes; cached: a kid's key never changes."""
        hit = self._pub.get(kid_upper)
        if hit is None:
            row = self.hub.store.conn.execute(
                "SELECT kid, alg, pub, dept_id FROM codes_keys WHERE kid = ? COLLATE NOCASE", (kid_upper,)
            ).fetchone()
            if row is None:
                return None
            hit = (signing.PublicKey(alg=row[1], kid=row[0], raw=signing.b64d(row[2])), row[3])
            self._pub[kid_upper] = hit
        return hit

    def _new_dept_key(self, db: sqlite_utils.Database, dept_id: str) -> str:
        key = signing.generate(self.alg)
        self._write_key(f"dept-{key.kid}", key)
        self._priv[key.kid] = key
        now = time.time()
        db["codes_keys"].insert(
            {
                "kid": key.kid,
                "dept_id": dept_id,
                "alg": key.alg,
                "pub": signing.b64e(key.public_raw),
                "status": "active",
                "not_before": now - 60,
                "not_after": now + KEY_LIFETIME_S,
                "created_at": _now_iso(),
            }
        )
        return key.kid

    def active_kid(self, dept_id: str) -> str:
        row = self.hub.store.conn.execute(
            "SELECT kid FROM codes_keys WHERE dept_id = ? AND status = 'active' ORDER BY not_before DESC LIMIT 1",
            (dept_id,),
        ).fetchone()
        if row is None:
            raise CodesError(409, "dept_id", f"department {dept_id} has no active issuing key")
        return row[0]

    def rotate_key(self, actor: str, dept_id: str) -> dict[str, Any]:
        """New active key; the old one retires (its not_after becomes now, so codes it signed before stay
        valid offline, and nothing signed with it later will verify)."""
        dept = self.department(dept_id)
        with self.hub.store.tx() as db:
            now = time.time()
            old = [
                r[0]
                for r in db.conn.execute(
                    "SELECT kid FROM codes_keys WHERE dept_id = ? AND status = 'active'", (dept_id,)
                )
            ]
            db.conn.execute(
                "UPDATE codes_keys SET status = 'retired', not_after = ? WHERE dept_id = ? AND status = 'active'",
                (now, dept_id),
            )
            kid = self._new_dept_key(db, dept_id)
            _audit(db, actor, "codes.key.rotate", dept_id, dept["org"], {"new": kid, "retired": old})
        self.publish_trust()
        return {"dept_id": dept_id, "kid": kid, "retired": old}

    # ---- departments, duties, rules --------------------------------------------------------------

    def register_department(
        self, actor: str, dept_id: str, name: str, org: str, webhook_url: str | None = None
    ) -> dict[str, Any]:
        if not DEPT_ID.match(dept_id):
            raise CodesError(422, "id", f"{dept_id!r} must match {DEPT_ID.pattern}")
        if not org.startswith("/"):
            raise CodesError(422, "org", "must be an org path like /city/health")
        secret = secrets.token_urlsafe(24)
        with self.hub.store.tx() as db:
            if db.conn.execute("SELECT 1 FROM codes_departments WHERE id = ?", (dept_id,)).fetchone():
                raise CodesError(409, "id", f"department {dept_id} already exists")
            db["codes_departments"].insert(
                {
                    "id": dept_id,
                    "name": name,
                    "org": org,
                    "webhook_url": webhook_url,
                    "webhook_secret": secret,
                    "created_by": actor,
                    "created_at": _now_iso(),
                }
            )
            kid = self._new_dept_key(db, dept_id)
            _audit(db, actor, "codes.department.register", dept_id, org, {"kid": kid})
        self.publish_trust()
        return {**self.department(dept_id), "kid": kid, "webhook_secret": secret}

    def department(self, dept_id: str) -> dict[str, Any]:
        cur = self.hub.store.conn.execute(
            "SELECT id, name, org, webhook_url, created_at FROM codes_departments WHERE id = ?", (dept_id,)
        )
        rows = _rows(cur)
        if not rows:
            raise CodesError(404, "dept_id", f"no department {dept_id!r}")
        return rows[0]

    def departments(self, scopes: list[str]) -> list[dict[str, Any]]:
        rows = _rows(
            self.hub.store.conn.execute(
                "SELECT id, name, org, webhook_url, created_at FROM codes_departments ORDER BY id"
            )
        )
        return [r for r in rows if _under_any(r["org"], scopes)]

    def set_webhook(self, actor: str, dept_id: str, url: str | None) -> dict[str, Any]:
        dept = self.department(dept_id)
        if url is not None and not re.match(r"^https?://\S+$", url):
            raise CodesError(422, "url", "must be an http(s) URL")
        secret = secrets.token_urlsafe(24)
        with self.hub.store.tx() as db:
            db.conn.execute(
                "UPDATE codes_departments SET webhook_url = ?, webhook_secret = ? WHERE id = ?", (url, secret, dept_id)
            )
            _audit(db, actor, "codes.webhook.set", dept_id, dept["org"], {"url": url})
        return {"dept_id": dept_id, "url": url, "secret": secret}

    def import_duties(self, actor: str, rows: Iterable[dict[str, str]], replace: bool = False) -> int:
        """Load the duty catalogue (dept_id, scene_type, description); CSV or JSON rows."""
        clean: list[dict[str, str]] = []
        for i, r in enumerate(rows):
            dept, scene = str(r.get("dept_id", "")).strip(), str(r.get("scene_type", "")).strip()
            if not DEPT_ID.match(dept):
                raise CodesError(422, f"rows[{i}].dept_id", f"{dept!r} must match {DEPT_ID.pattern}")
            if not SCENE_TYPE.match(scene):
                raise CodesError(422, f"rows[{i}].scene_type", f"{scene!r} must match {SCENE_TYPE.pattern}")
            clean.append({"dept_id": dept, "scene_type": scene, "description": str(r.get("description", ""))[:200]})
        with self.hub.store.tx() as db:
            if replace:
                db.conn.execute("DELETE FROM codes_duties")
            db["codes_duties"].upsert_all(clean, pk=("dept_id", "scene_type"))
            _audit(db, actor, "codes.duties.import", "codes_duties", None, {"rows": len(clean), "replace": replace})
        return len(clean)

    def duties(self) -> list[dict[str, Any]]:
        return _rows(self.hub.store.conn.execute("SELECT * FROM codes_duties ORDER BY dept_id, scene_type"))

    RULE_DEFAULTS: dict[str, Any] = {
        "dept_data_max": 24,
        "static_classes": ["D", "Y", "L"],
        "dynamic_classes": ["M", "H"],
        "default_lifetime_s": {"M": 300, "H": 86400, "D": 7 * 86400, "Y": 365 * 86400, "L": 5 * 365 * 86400},
    }

    def rules(self) -> dict[str, Any]:
        stored = {k: json.loads(v) for k, v in self.hub.store.conn.execute("SELECT key, value FROM codes_rules")}
        return {
            **self.RULE_DEFAULTS,
            **stored,
            "segments": {
                "guide": "filed resolver base URL (audited by the city)",
                "city": ["version", "code_system", "auth_id", "attribute", "identity_id"],
                "city_assigned": ["code_system", "auth_id", "attribute"],
                "department": ["dept_data", "issued_at", "expires_at", "serial", "kid", "signature"],
            },
            "validity_classes": citycode.VALIDITY_CLASSES,
        }

    def set_rules(self, actor: str, changes: dict[str, Any]) -> dict[str, Any]:
        allowed = {"dept_data_max", "static_classes", "dynamic_classes", "default_lifetime_s"}
        for k, v in changes.items():
            if k not in allowed:
                raise CodesError(422, k, f"not a configurable rule (configurable: {sorted(allowed)})")
            if k == "dept_data_max" and not (isinstance(v, int) and 0 <= v <= 24):
                raise CodesError(422, k, "must be an integer 0..24 (the code format's limit)")
            if k.endswith("_classes") and not (isinstance(v, list) and v and set(v) <= set(citycode.VALIDITY_CLASSES)):
                raise CodesError(422, k, f"must be a non-empty subset of {list(citycode.VALIDITY_CLASSES)}")
            if k == "default_lifetime_s":
                if not isinstance(v, dict) or any(
                    c not in citycode.VALIDITY_CLASSES
                    or not isinstance(s, int)
                    or not 0 < s <= citycode.VALIDITY_CLASSES[c]
                    for c, s in v.items()
                ):
                    raise CodesError(422, k, "must map validity classes to seconds within the class limit")
        with self.hub.store.tx() as db:
            for k, v in changes.items():
                db["codes_rules"].upsert({"key": k, "value": json.dumps(v)}, pk="key")
            _audit(db, actor, "codes.rules.set", "codes_rules", None, changes)
        return self.rules()

    # ---- applications and the three checks ---------------------------------------------------------

    def apply(
        self,
        actor: str,
        dept_id: str,
        scene_name: str,
        scene_type: str,
        code_type: str,
        entity_type: str,
        purpose: str,
        share_commitment: bool,
        validity: str,
        single_use: bool = False,
    ) -> dict[str, Any]:
        dept = self.department(dept_id)
        if not SCENE_TYPE.match(scene_type):
            raise CodesError(422, "scene_type", f"{scene_type!r} must match {SCENE_TYPE.pattern}")
        if entity_type not in ENTITY_TYPES:
            raise CodesError(422, "entity_type", f"must be one of {ENTITY_TYPES}")
        if code_type not in ("static", "dynamic"):
            raise CodesError(422, "code_type", "must be 'static' or 'dynamic'")
        rules = self.rules()
        classes = rules["static_classes" if code_type == "static" else "dynamic_classes"]
        if validity not in classes:
            raise CodesError(422, "validity", f"a {code_type} code takes a validity class in {classes}")
        with self.hub.store.tx() as db:
            app_id = (
                db["codes_applications"]
                .insert(
                    {
                        "dept_id": dept_id,
                        "applicant": actor,
                        "scene_name": scene_name,
                        "scene_type": scene_type,
                        "code_type": code_type,
                        "entity_type": entity_type,
                        "purpose": purpose,
                        "share_commitment": int(share_commitment),
                        "validity": validity,
                        "single_use": int(single_use),
                        "status": "pending",
                        "created_at": _now_iso(),
                    }
                )
                .last_pk
            )
            _audit(db, actor, "codes.apply", f"application:{app_id}", dept["org"], {"scene_type": scene_type})
            note_maker(db, f"codes.application:{app_id}", actor, "file")
        return self.application(int(app_id))  # type: ignore[arg-type]

    EDITABLE = ("scene_name", "purpose", "share_commitment", "validity", "single_use")

    def edit_application(self, actor: str, app_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Change a pending application (e.g. add the sharing commitment a check asked for). The editor
        becomes one of its makers: like the filer, it may not decide it."""
        app = self.application(app_id)
        if app["status"] != "pending":
            raise CodesError(409, "status", f"application {app_id} is already {app['status']}")
        changes = {k: v for k, v in changes.items() if k in self.EDITABLE and v is not None}
        if "validity" in changes:
            classes = self.rules()["static_classes" if app["code_type"] == "static" else "dynamic_classes"]
            if changes["validity"] not in classes:
                raise CodesError(422, "validity", f"a {app['code_type']} code takes a validity class in {classes}")
        if not changes:
            return app
        for k in ("share_commitment", "single_use"):
            if k in changes:
                changes[k] = int(bool(changes[k]))
        with self.hub.store.tx() as db:
            sets = ", ".join(f"{k} = ?" for k in changes)
            db.conn.execute(f"UPDATE codes_applications SET {sets} WHERE id = ?", (*changes.values(), app_id))
            _audit(db, actor, "codes.application.edit", f"application:{app_id}", app["org"],
                   {"fields": sorted(changes)})
            note_maker(db, f"codes.application:{app_id}", actor, "edit")
        return self.application(app_id)

    def application(self, app_id: int) -> dict[str, Any]:
        rows = _rows(
            self.hub.store.conn.execute(
                "SELECT a.*, d.org AS org, d.name AS dept_name FROM codes_applications a"
                " JOIN codes_departments d ON d.id = a.dept_id WHERE a.id = ?",
                (app_id,),
            )
        )
        if not rows:
            raise CodesError(404, "application_id", f"no application {app_id}")
        r = rows[0]
        r["share_commitment"] = bool(r["share_commitment"])
        r["single_use"] = bool(r["single_use"])
        r["checks"] = json.loads(r["checks"]) if r["checks"] else self.checks(r)
        return r

    def applications(
        self, scopes: list[str], dept_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        sql = "SELECT a.id FROM codes_applications a WHERE 1=1"
        args: list[Any] = []
        if dept_id:
            sql += " AND a.dept_id = ?"
            args.append(dept_id)
        if status:
            sql += " AND a.status = ?"
            args.append(status)
        ids = [r[0] for r in self.hub.store.conn.execute(sql + " ORDER BY a.id", args)]
        apps = [self.application(i) for i in ids]
        return [a for a in apps if _under_any(a["org"], scopes)]

    def checks(self, app: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The three approval checks: duty (catalogue), duplicate (same entity type + scene type held by
        another department), sharing (commitment to share base info)."""
        conn = self.hub.store.conn
        duty = conn.execute(
            "SELECT description FROM codes_duties WHERE dept_id = ? AND scene_type = ?",
            (app["dept_id"], app["scene_type"]),
        ).fetchone()
        dup = conn.execute(
            "SELECT id, dept_id FROM codes_applications WHERE entity_type = ? AND scene_type = ?"
            " AND status = 'approved' AND dept_id != ? LIMIT 1",
            (app["entity_type"], app["scene_type"], app["dept_id"]),
        ).fetchone()
        return {
            "duty": {
                "ok": duty is not None,
                "detail": f"duty catalogue lists {app['scene_type']!r} for {app['dept_id']}"
                if duty
                else f"{app['scene_type']!r} is not among {app['dept_id']}'s duties in the catalogue",
            },
            "duplicate": {
                "ok": dup is None,
                "detail": "no other department holds this entity type + scene type"
                if dup is None
                # Named without the other department or its application: applicants of any scope read this.
                else f"another department already holds an approved application for "
                f"{app['entity_type']} / {app['scene_type']}",
            },
            "sharing": {
                "ok": bool(app["share_commitment"]),
                "detail": "applicant committed to share base information"
                if app["share_commitment"]
                else "applicant has not committed to share base information",
            },
        }

    def decide(
        self, actor: str, app_id: int, approve: bool, code_system: str | None = None, reason: str = ""
    ) -> dict[str, Any]:
        app = self.application(app_id)
        why = maker_refusal(self.hub.store.db, f"codes.application:{app_id}", actor, filer=app["applicant"])
        if why:
            raise CodesError(403, "application_id", why)
        if app["status"] != "pending":
            raise CodesError(409, "status", f"application {app_id} is already {app['status']}")
        checks = self.checks(app)
        if approve:
            failed = [k for k, v in checks.items() if not v["ok"]]
            if failed:
                raise CodesError(
                    409, "checks", "cannot approve; failed: " + "; ".join(f"{k}: {checks[k]['detail']}" for k in failed)
                )
            if not code_system or not re.match(r"^[0-9A-Z]{1,8}$", code_system):
                raise CodesError(422, "code_system", "approval assigns a code-system id matching [0-9A-Z]{1,8}")
        with self.hub.store.tx() as db:
            db.conn.execute(
                "UPDATE codes_applications SET status = ?, checks = ?, code_system = ?, auth_id = ?,"
                " decided_by = ?, decided_at = ?, reason = ? WHERE id = ?",
                (
                    "approved" if approve else "rejected",
                    json.dumps(checks),
                    code_system if approve else None,
                    f"A{app_id:04d}" if approve else None,
                    actor,
                    _now_iso(),
                    reason,
                    app_id,
                ),
            )
            _audit(
                db,
                actor,
                "codes.approve" if approve else "codes.reject",
                f"application:{app_id}",
                app["org"],
                {"checks": {k: v["ok"] for k, v in checks.items()}, "code_system": code_system},
            )
        if approve:
            self.publish_trust()  # the department key may now sign this code system
        return self.application(app_id)

    # ---- app keys (business subsystems) ----------------------------------------------------------

    def create_app_key(self, actor: str, app_id: int, name: str) -> dict[str, Any]:
        app = self.application(app_id)
        if app["status"] != "approved":
            raise CodesError(409, "application_id", "app keys hang off approved applications only")
        key = "ck_" + secrets.token_urlsafe(24)
        with self.hub.store.tx() as db:
            kid = (
                db["codes_appkeys"]
                .insert(
                    {
                        "app_id": app_id,
                        "name": name,
                        "key_hash": hashlib.sha256(key.encode()).hexdigest(),
                        "created_by": actor,
                        "created_at": _now_iso(),
                    }
                )
                .last_pk
            )
            _audit(db, actor, "codes.appkey.create", f"application:{app_id}", app["org"], {"name": name})
        return {"id": kid, "application_id": app_id, "name": name, "key": key}

    def app_keys(self, app_id: int) -> list[dict[str, Any]]:
        return _rows(
            self.hub.store.conn.execute(
                "SELECT id, app_id, name, created_by, created_at, revoked_at FROM codes_appkeys WHERE app_id = ?",
                (app_id,),
            )
        )

    def revoke_app_key(self, actor: str, key_id: int) -> None:
        row = self.hub.store.conn.execute("SELECT app_id FROM codes_appkeys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise CodesError(404, "key_id", f"no app key {key_id}")
        app = self.application(row[0])
        with self.hub.store.tx() as db:
            db.conn.execute("UPDATE codes_appkeys SET revoked_at = ? WHERE id = ?", (_now_iso(), key_id))
            _audit(db, actor, "codes.appkey.revoke", f"appkey:{key_id}", app["org"])
        self._invalidate()

    def app_for_key(self, key: str) -> int | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self._cached("appkey", digest, lambda: self._app_for_key(digest))  # type: ignore[no-any-return]

    def _app_for_key(self, digest: str) -> int | None:
        row = self.hub.store.conn.execute(
            "SELECT app_id FROM codes_appkeys WHERE key_hash = ? AND revoked_at IS NULL",
            (digest,),
        ).fetchone()
        return int(row[0]) if row else None

    # ---- URL filing ------------------------------------------------------------------------------

    def file_url(self, actor: str, dept_id: str, url: str) -> dict[str, Any]:
        dept = self.department(dept_id)
        try:
            citycode.check_guide_url(url)
        except citycode.CityCodeError as e:
            raise CodesError(422, "url", e.detail) from None
        with self.hub.store.tx() as db:
            if db.conn.execute("SELECT 1 FROM codes_urls WHERE url = ?", (url,)).fetchone():
                raise CodesError(409, "url", "already filed")
            uid = (
                db["codes_urls"]
                .insert(
                    {"dept_id": dept_id, "url": url, "status": "pending", "filed_by": actor, "created_at": _now_iso()}
                )
                .last_pk
            )
            _audit(db, actor, "codes.url.file", url, dept["org"])
            note_maker(db, f"codes.url:{uid}", actor, "file")
        return self.url(int(uid))  # type: ignore[arg-type]

    def url(self, url_id: int) -> dict[str, Any]:
        rows = _rows(
            self.hub.store.conn.execute(
                "SELECT u.*, d.org AS org FROM codes_urls u LEFT JOIN codes_departments d ON d.id = u.dept_id"
                " WHERE u.id = ?",
                (url_id,),
            )
        )
        if not rows:
            raise CodesError(404, "url_id", f"no filed URL {url_id}")
        return rows[0]

    def urls(self, dept_id: str | None = None, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        """Filed URLs; with `scopes`, only those of departments under them (filings of no department only
        for readers at an org-tree root)."""
        sql = "SELECT u.*, d.org AS _org FROM codes_urls u LEFT JOIN codes_departments d ON d.id = u.dept_id"
        args: tuple[Any, ...] = ()
        if dept_id:
            sql += " WHERE u.dept_id = ?"
            args = (dept_id,)
        out = []
        for r in _rows(self.hub.store.conn.execute(sql + " ORDER BY u.id", args)):
            org = r.pop("_org")
            if scopes is None or (_under_any(org, scopes) if org else any(s.count("/") == 1 for s in scopes)):
                out.append(r)
        return out

    def audit_url(self, actor: str, url_id: int, approve: bool, reason: str = "") -> dict[str, Any]:
        u = self.url(url_id)
        why = maker_refusal(self.hub.store.db, f"codes.url:{url_id}", actor, filer=u["filed_by"])
        if why:
            raise CodesError(403, "url_id", why)
        with self.hub.store.tx() as db:
            db.conn.execute(
                "UPDATE codes_urls SET status = ?, decided_by = ?, reason = ? WHERE id = ?",
                ("approved" if approve else "rejected", actor, reason, url_id),
            )
            _audit(db, actor, "codes.url.audit", u["url"], u["org"], {"approved": approve})
        self._invalidate()
        return self.url(url_id)

    def filed_urls(self, dept_id: str | None = None) -> list[str]:
        """Approved guide URLs (the hub's own resolver is always filed)."""
        return self._cached("urls", dept_id or "", lambda: self._filed_urls(dept_id))  # type: ignore[no-any-return]

    def _filed_urls(self, dept_id: str | None) -> list[str]:
        sql = "SELECT url FROM codes_urls WHERE status = 'approved'"
        args: tuple[Any, ...] = ()
        if dept_id is not None:
            sql += " AND dept_id = ?"
            args = (dept_id,)
        return [self.hub_resolver, *(r[0] for r in self.hub.store.conn.execute(sql, args))]

    # ---- identity validation ---------------------------------------------------------------------

    def check_identity(self, identity_id: str, entity_type: str) -> dict[str, Any] | None:
        """A live registry entity of the application's type when the registry exists; otherwise the
        identifier format (and check char, when the registry's id module is there)."""
        ident = identity_id.strip().upper()
        db = self.hub.store.db
        if _table_exists(db, "registry_entities"):
            rows = _rows(
                db.conn.execute("SELECT id, type, name, org, status FROM registry_entities WHERE id = ?", (ident,))
            )
            if not rows:
                raise CodesError(422, "identity_id", f"{ident} is not a registered base identifier")
            ent = rows[0]
            if ent["status"] != "active":
                raise CodesError(422, "identity_id", f"{ident} is {ent['status']}, not active")
            if ent["type"] != entity_type:
                raise CodesError(422, "identity_id", f"{ident} is a {ent['type']}; this scene identifies {entity_type}")
            return ent
        try:
            from central.registry.ids import IdError, parse_id
        except ImportError:
            if not re.match(r"^[0-9A-Z-]{1,40}$", ident):
                raise CodesError(422, "identity_id", "must be 1-40 of [0-9A-Z-]") from None
            return None
        try:
            parse_id(ident)
        except IdError as e:
            raise CodesError(422, "identity_id", str(e)) from None
        return None

    def entity_public(self, identity_id: str) -> dict[str, Any] | None:
        """What anyone may learn about the entity a code identifies: type and status; names of
        non-person entities (a person's name stays hidden)."""
        db = self.hub.store.db
        if not self._cached("table", "registry_entities", lambda: _table_exists(db, "registry_entities")):
            return {"id": identity_id}
        rows = _rows(
            db.conn.execute("SELECT id, type, name, status FROM registry_entities WHERE id = ?", (identity_id,))
        )
        if not rows:
            return None
        e = rows[0]
        if e["type"] == "person":
            e["name"] = (e["name"][:1] + "*" * max(len(e["name"]) - 1, 1)) if e["name"] else None
        return e

    # ---- issuing ---------------------------------------------------------------------------------

    def issue_batch(
        self,
        actor: str,
        app_id: int,
        items: list[dict[str, Any]],
        guide_url: str | None = None,
        lifetime_s: int | None = None,
        city_fields: dict[str, Any] | None = None,
        check_identity: bool = True,
    ) -> list[dict[str, Any]]:
        """Issue one code per item ({identity_id, dept_data?}); all or nothing. City-assigned segments come
        from the approved application and may not be overridden."""
        app = self.application(app_id)
        if app["status"] != "approved":
            raise CodesError(409, "application_id", f"application {app_id} is {app['status']}, not approved")
        attr = citycode.Attribute(app["code_type"], app["validity"], app["single_use"])
        assigned = {"code_system": app["code_system"], "auth_id": app["auth_id"], "attribute": attr.code()}
        for k, v in (city_fields or {}).items():
            if v is not None and v != assigned.get(k):
                raise CodesError(403, k, f"assigned by the city ({assigned.get(k)}); departments cannot change it")
        guide = guide_url or self.hub_resolver
        if guide not in self.filed_urls(app["dept_id"]):
            raise CodesError(422, "guide_url", f"{guide!r} is not a filed and approved URL of {app['dept_id']}")
        rules = self.rules()
        life = lifetime_s or int(rules["default_lifetime_s"].get(attr.validity, attr.max_lifetime_s))
        if not 0 < life <= attr.max_lifetime_s:
            raise CodesError(422, "lifetime_s", f"must be 1..{attr.max_lifetime_s} for validity class {attr.validity}")
        kid = self.active_kid(app["dept_id"])
        key = self._dept_private(kid)
        now = int(time.time())
        rows: list[dict[str, Any]] = []
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            ident = str(item.get("identity_id", "")).strip().upper()
            data = str(item.get("dept_data") or "").upper()
            if len(data) > rules["dept_data_max"]:
                raise CodesError(422, f"items[{i}].dept_data", f"longer than {rules['dept_data_max']}")
            if check_identity:
                try:
                    self.check_identity(ident, app["entity_type"])
                except CodesError as e:
                    raise CodesError(e.status, f"items[{i}].{e.field}", e.detail) from None
            try:
                code = citycode.build(
                    key=key,
                    guide_url=guide,
                    code_system=app["code_system"],
                    auth_id=app["auth_id"],
                    attribute=attr,
                    identity_id=ident,
                    serial=_new_serial(),
                    issued_at=now,
                    expires_at=now + life,
                    dept_data=data,
                )
            except citycode.CityCodeError as e:
                raise CodesError(422, f"items[{i}].{e.field}", e.detail) from None
            rows.append(
                {
                    "serial": code.serial,
                    "app_id": app_id,
                    "dept_id": app["dept_id"],
                    "code_system": code.code_system,
                    "identity_id": ident,
                    "kid": key.kid,
                    "issued_at": now,
                    "expires_at": code.expires_at,
                    "text": code.text,
                    "status": "active",
                    "scans": 0,
                }
            )
            out.append(
                {
                    "serial": code.serial,
                    "text": code.text,
                    "identity_id": ident,
                    "issued_at": now,
                    "expires_at": code.expires_at,
                    "code_system": code.code_system,
                    "auth_id": code.auth_id,
                    "attribute": attr.code(),
                    "kid": key.kid,
                }
            )
        with self.hub.store.tx() as db:
            db.conn.executemany(
                "INSERT INTO codes_issued (serial, app_id, dept_id, code_system, identity_id, kid, issued_at,"
                " expires_at, text, status, scans) VALUES (:serial, :app_id, :dept_id, :code_system, :identity_id,"
                " :kid, :issued_at, :expires_at, :text, :status, :scans)",
                rows,
            )
            _audit(
                db,
                actor,
                "codes.issue",
                f"application:{app_id}",
                app["org"],
                {"count": len(rows), "first_serial": rows[0]["serial"] if rows else None},
            )
            for r in rows[:1000]:  # the feed carries the issuance; huge batches log their first 1,000
                _feed(
                    db,
                    "code.issued",
                    r["identity_id"],
                    {"serial": r["serial"], "application_id": app_id, "dept_id": app["dept_id"]},
                )
            self._enqueue(
                db,
                app["dept_id"],
                "code.issued",
                {"application_id": app_id, "serials": [r["serial"] for r in rows[:1000]], "count": len(rows)},
            )
        self._kick_webhooks()
        return out

    # ---- verification ----------------------------------------------------------------------------

    def verify_online(self, text: str | bytes, now: float | None = None) -> dict[str, Any]:
        """Verdict of a code against the hub's records: signature, issuance record, revocations, expiry.
        One primary-key query per call (serial), joined with key status and entity revocation."""
        t = time.time() if now is None else now
        try:
            code = citycode.parse(text)
        except citycode.CityCodeError as e:
            return self._result("malformed", str(e), None, None)
        hit = self._public(code.kid)
        if hit is None:
            return self._result("unknown-key", f"kid: {code.kid} was never issued by this city", code, None)
        pub, key_dept = hit
        if not pub.verify(code.signed_bytes(), code.signature):
            return self._result("bad-signature", f"signature: does not verify under key {code.kid}", code, None)
        row = self.hub.store.conn.execute(
            "SELECT c.app_id, c.dept_id, c.status, c.text, c.expires_at, k.status, k.not_before, k.not_after,"
            " (SELECT 1 FROM codes_revoked_identities r WHERE r.identity_id = c.identity_id),"
            " a.scene_name, a.scene_type"
            " FROM codes_issued c JOIN codes_keys k ON k.kid = c.kid"
            " JOIN codes_applications a ON a.id = c.app_id WHERE c.serial = ?",
            (code.serial,),
        ).fetchone()
        if row is None or row[3] != code.text:
            # Signed by a city key yet not on record: say which city rule it breaks, if any.
            systems = {
                r[0]
                for r in self.hub.store.conn.execute(
                    "SELECT code_system FROM codes_applications WHERE dept_id = ? AND status = 'approved'", (key_dept,)
                )
            }
            if code.code_system not in systems:
                return self._result(
                    "wrong-system", f"code_system: {key_dept} holds no approved {code.code_system!r} scene", code, None
                )
            if code.guide_url not in self.filed_urls(key_dept):
                return self._result("unfiled-url", f"guide_url: {code.guide_url[:80]!r} is not filed", code, None)
            return self._result("bad-signature", f"serial: {code.serial} has no matching issuance record", code, None)
        app_id, dept_id, status, _text, _exp, kstatus, knb, kna, id_revoked, scene_name, scene_type = row
        info = {"app_id": app_id, "dept_id": dept_id, "scene_name": scene_name, "scene_type": scene_type}
        if kstatus == "revoked":
            return self._result("revoked", f"kid: department key {code.kid} revoked", code, info)
        if status == "revoked":
            return self._result("revoked", f"serial: code {code.serial} revoked", code, info)
        if id_revoked:
            return self._result("revoked", f"identity_id: all codes of {code.identity_id} revoked", code, info)
        if not knb - 1 <= code.issued_at <= kna + 1:
            return self._result("unknown-key", f"kid: key {code.kid} was not valid at issue time", code, info)
        if code.guide_url not in self.filed_urls(dept_id):
            return self._result("unfiled-url", f"guide_url: {code.guide_url[:80]!r} is not filed", code, info)
        if t > code.expires_at:
            return self._result("expired", f"expires_at: expired {int(t - code.expires_at)} s ago", code, info)
        return self._result("valid", "ok", code, info)

    def _result(
        self, verdict: str, reason: str, code: citycode.CityCode | None, info: dict[str, Any] | None
    ) -> dict[str, Any]:
        app_id = info["app_id"] if info else 0
        self._count(verdict, app_id)
        out: dict[str, Any] = {"verdict": verdict, "reason": reason}
        if code is not None:
            out.update(
                serial=code.serial,
                code_system=code.code_system,
                identity_id=code.identity_id,
                attribute=code.attribute.code(),
                single_use=code.attribute.single_use,
                issued_at=_dt(code.issued_at).isoformat(),
                expires_at=_dt(code.expires_at).isoformat(),
            )
        if info is not None:
            out.update(
                dept_id=info["dept_id"],
                scene=info["scene_name"],
                scene_type=info["scene_type"],
                application_id=info["app_id"],
            )
            if code is not None and verdict == "valid":
                out["entity"] = self.entity_public(code.identity_id)
        return out

    def _count(self, verdict: str, app_id: int) -> None:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        self._stats[(day, app_id, verdict)] += 1
        if time.monotonic() - self._stats_flushed > 5:
            self.flush_stats()

    def flush_stats(self) -> None:
        """Online-verify counters are kept in memory and written every few seconds: a write per verify
        would cap verification at SQLite's write rate."""
        with self._lock:
            stats, self._stats = self._stats, Counter()
            self._stats_flushed = time.monotonic()
        if not stats:
            return
        with self.hub.store.tx() as db:
            db.conn.executemany(
                "INSERT INTO codes_verify_stats (day, app_id, verdict, n) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(day, app_id, verdict) DO UPDATE SET n = n + excluded.n",
                [(d, a, v, n) for (d, a, v), n in stats.items()],
            )

    def issued(
        self, scopes: list[str], app_id: int | None = None, status: str | None = None, limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Issued codes, newest first, only of departments whose org lies under one of `scopes`."""
        if not scopes:
            return {"total": 0, "items": []}
        where = ["(" + " OR ".join("(d.org = ? OR d.org LIKE ?)" for _ in scopes) + ")"]
        params: list[Any] = [x for sc in scopes for x in (sc, sc.rstrip("/") + "/%")]
        if app_id is not None:
            where.append("c.app_id = ?")
            params.append(app_id)
        if status is not None:
            where.append("c.status = ?")
            params.append(status)
        sql = (" FROM codes_issued c JOIN codes_applications a ON a.id = c.app_id"
               " JOIN codes_departments d ON d.id = c.dept_id WHERE " + " AND ".join(where))
        conn = self.hub.store.conn
        total = conn.execute("SELECT COUNT(*)" + sql, params).fetchone()[0]
        items = _rows(conn.execute(
            "SELECT c.serial, c.app_id, c.dept_id, c.identity_id, c.status, c.issued_at, c.expires_at,"
            " c.text, a.scene_name, d.org" + sql + " ORDER BY c.issued_at DESC, c.serial LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ))
        return {"total": total, "items": items}

    def code_record(self, serial: str) -> dict[str, Any] | None:
        rows = _rows(
            self.hub.store.conn.execute(
                "SELECT c.*, a.scene_name, a.scene_type, d.org, d.name AS dept_name FROM codes_issued c"
                " JOIN codes_applications a ON a.id = c.app_id JOIN codes_departments d ON d.id = c.dept_id"
                " WHERE c.serial = ?",
                (serial,),
            )
        )
        return rows[0] if rows else None

    # ---- revocation ------------------------------------------------------------------------------

    def revoke_code(self, actor: str, serial: str, reason: str) -> dict[str, Any]:
        rec = self.code_record(serial)
        if rec is None:
            raise CodesError(404, "serial", f"no code {serial}")
        with self.hub.store.tx() as db:
            db.conn.execute(
                "UPDATE codes_issued SET status = 'revoked', revoked_at = ? WHERE serial = ?",
                (int(time.time()), serial),
            )
            _audit(db, actor, "codes.revoke.code", serial, rec["org"], {"reason": reason})
            self._enqueue(db, rec["dept_id"], "code.revoked", {"serials": [serial], "reason": reason})
            _feed(db, "code.revoked", rec["identity_id"], {"serial": serial, "reason": reason})
        self._kick_webhooks()
        out = {"revoked": "serial", "serial": serial, "revocation_version": self.publish_revocations()}
        self.hub.hooks.emit("codes.revoked", serials=[serial], identity_id=None, kid=None)
        return out

    def revoke_identity(self, actor: str, identity_id: str, reason: str, org: str | None) -> dict[str, Any]:
        ident = identity_id.strip().upper()
        with self.hub.store.tx() as db:
            db["codes_revoked_identities"].upsert(
                {"identity_id": ident, "reason": reason, "revoked_by": actor, "revoked_at": int(time.time())},
                pk="identity_id",
            )
            n = db.conn.execute(
                "UPDATE codes_issued SET status = 'revoked', revoked_at = ?"
                " WHERE identity_id = ? AND status = 'active'",
                (int(time.time()), ident),
            ).rowcount
            _audit(db, actor, "codes.revoke.identity", ident, org, {"reason": reason, "codes": n})
            for (dept,) in db.conn.execute("SELECT DISTINCT dept_id FROM codes_issued WHERE identity_id = ?", (ident,)):
                self._enqueue(db, dept, "code.revoked", {"identity_id": ident, "reason": reason})
            _feed(db, "code.revoked", ident, {"identity_id": ident, "reason": reason, "codes": n})
        self._kick_webhooks()
        out = {
            "revoked": "identity",
            "identity_id": ident,
            "codes": n,
            "revocation_version": self.publish_revocations(),
        }
        self.hub.hooks.emit("codes.revoked", serials=[], identity_id=ident, kid=None)
        return out

    def revoke_key(self, actor: str, kid: str, reason: str) -> dict[str, Any]:
        row = self.hub.store.conn.execute("SELECT dept_id, status FROM codes_keys WHERE kid = ?", (kid,)).fetchone()
        if row is None:
            raise CodesError(404, "kid", f"no key {kid}")
        dept = self.department(row[0])
        with self.hub.store.tx() as db:
            was_active = row[1] == "active"
            db.conn.execute("UPDATE codes_keys SET status = 'revoked', revoked_at = ? WHERE kid = ?", (_now_iso(), kid))
            new_kid = self._new_dept_key(db, row[0]) if was_active else None  # keep the dept able to issue
            _audit(db, actor, "codes.revoke.key", kid, dept["org"], {"reason": reason, "replacement": new_kid})
            self._enqueue(db, row[0], "code.revoked", {"kid": kid, "reason": reason})
        self._kick_webhooks()
        self.publish_trust()
        out = {"revoked": "key", "kid": kid, "replacement": new_kid, "revocation_version": self.publish_revocations()}
        self.hub.hooks.emit("codes.revoked", serials=[], identity_id=None, kid=kid)
        return out

    # ---- trust and revocation lists ---------------------------------------------------------------

    def _next_version(self, db: sqlite_utils.Database, kind: str) -> int:
        row = db.conn.execute("SELECT MAX(version) FROM codes_lists WHERE kind = ?", (kind,)).fetchone()
        return int(row[0] or 0) + 1

    def build_trust(self) -> TrustList:
        conn = self.hub.store.conn
        systems: dict[str, list[str]] = {}
        for dept, cs in conn.execute(
            "SELECT DISTINCT dept_id, code_system FROM codes_applications"
            " WHERE status = 'approved' ORDER BY code_system"
        ):
            systems.setdefault(dept, []).append(cs)
        keys = [
            TrustedKey(
                kid=kid,
                alg=alg,
                pub=pub,
                dept=dept,
                code_systems=systems.get(dept) or [NO_SYSTEM],
                not_before=_dt(nb),
                not_after=_dt(na),
            )
            for kid, alg, pub, dept, nb, na in conn.execute(
                "SELECT kid, alg, pub, dept_id, not_before, not_after FROM codes_keys ORDER BY kid"
            )
        ]  # revoked keys stay listed so devices say "revoked", not "unknown-key"
        return TrustList(version=1, keys=keys)

    def build_revocations(self) -> RevocationList:
        conn = self.hub.store.conn
        now = int(time.time())
        # Expired codes fail offline anyway: leave them out to keep the retained list small.
        serials = [
            r[0]
            for r in conn.execute(
                "SELECT serial FROM codes_issued WHERE status = 'revoked' AND expires_at > ? ORDER BY serial", (now,)
            )
        ]
        idents = [r[0] for r in conn.execute("SELECT identity_id FROM codes_revoked_identities ORDER BY 1")]
        kids = [r[0] for r in conn.execute("SELECT kid FROM codes_keys WHERE status = 'revoked' ORDER BY 1")]
        return RevocationList(version=1, serials=serials, identities=idents, kids=kids)

    def _publish(self, kind: str, lst: TrustList | RevocationList) -> int:
        with self._lock, self.hub.store.tx() as db:
            lst.version = self._next_version(db, kind)
            lst.issued_at = datetime.now(UTC)
            lst.sign(self.root)
            body = lst.model_dump_json()
            db["codes_lists"].insert({"kind": kind, "version": lst.version, "body": body, "published_at": _now_iso()})
        topic = topics.TRUST if kind == "trust" else topics.REVOCATIONS
        try:
            self.hub.publish(topic, body, qos=1, retain=True)
        except Exception as e:  # the list is stored; the bridge/next publish retries delivery
            log.warning("publish %s v%d failed: %s", kind, lst.version, e)
        return lst.version

    def publish_trust(self) -> int:
        return self._publish("trust", self.build_trust())

    def publish_revocations(self) -> int:
        return self._publish("revocations", self.build_revocations())

    def refresh_revocations(self) -> bool:
        """Worker step: re-sign an unchanged revocation list once it is REVOCATIONS_REFRESH_S old."""
        cur = self.current("revocations")  # none yet: republish_lists publishes the first
        age = time.time() - datetime.fromisoformat(cur["issued_at"]).timestamp() if cur else 0.0
        if age >= REVOCATIONS_REFRESH_S:
            self.publish_revocations()
        return False

    def fill_device_config(self, cfg: dict[str, Any]) -> None:
        """Hook `devices.config`: a new scan terminal pins the city root public key."""
        if cfg.get("kind") == "scanner":
            # No URL allow-list is frozen into the config: the hub refuses to sign a code with an unfiled
            # URL, and filings change after provisioning. Operators may still set allowed_url_prefixes.
            cfg.setdefault("scanner", {})["city_root_key"] = self.root.public.to_dict()

    def republish_lists(self) -> None:
        """Hook `bridge.connected`: re-assert the latest retained lists (a broker may have lost them).
        Devices ignore a version they already hold, so this is harmless when nothing was lost."""
        if self.current("trust") is None:
            self.publish_trust()  # a fresh hub: publish version 1 so terminals can start syncing
        if self.current("revocations") is None:
            self.publish_revocations()
        for kind, topic in (("trust", topics.TRUST), ("revocations", topics.REVOCATIONS)):
            row = self.hub.store.conn.execute(
                "SELECT body FROM codes_lists WHERE kind = ? ORDER BY version DESC LIMIT 1", (kind,)
            ).fetchone()
            if row:
                self.hub.publish(topic, row[0], qos=1, retain=True)

    def current(self, kind: str) -> dict[str, Any] | None:
        row = self.hub.store.conn.execute(
            "SELECT body FROM codes_lists WHERE kind = ? ORDER BY version DESC LIMIT 1", (kind,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    # ---- scans (from scan terminals via the bridge) --------------------------------------------------

    def ingest_scans(self, db: sqlite_utils.Database, batches: list[tuple[str, str, ScanBatch]]) -> int:
        """Hook `scans.ingested`, inside the bridge's write transaction."""
        n = 0
        for site, device, batch in batches:
            for rec in batch.records:
                serial = rec.serial.upper() if rec.serial else None
                row = (
                    db.conn.execute(
                        "SELECT app_id, dept_id, identity_id FROM codes_issued WHERE serial = ?", (serial,)
                    ).fetchone()
                    if serial
                    else None
                )
                ts = int(rec.ts.timestamp())
                cur = db.conn.execute(
                    "INSERT OR IGNORE INTO codes_scans (scan_id, serial, app_id, dept_id, site, device, verdict,"
                    " reason, ts) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        rec.scan_id,
                        serial,
                        row[0] if row else None,
                        row[1] if row else rec.dept,
                        site,
                        device,
                        rec.verdict,
                        rec.reason,
                        ts,
                    ),
                )
                if cur.rowcount == 0:
                    continue  # a re-sent batch: counted once
                n += 1
                if row is None:
                    continue
                db.conn.execute(
                    "UPDATE codes_issued SET scans = scans + 1, last_scan_at = MAX(COALESCE(last_scan_at, 0), ?)"
                    " WHERE serial = ?",
                    (ts, serial),
                )
                _feed(
                    db,
                    "code.scanned",
                    row[2],
                    {"serial": serial, "verdict": rec.verdict, "site": site, "device": device},
                )
                self._enqueue(
                    db,
                    row[1],
                    "code.scanned",
                    {
                        "serial": serial,
                        "verdict": rec.verdict,
                        "reason": rec.reason,
                        "site": site,
                        "device": device,
                        "ts": rec.ts.isoformat(),
                    },
                )
        if n:
            self._kick_webhooks()
        return n

    # ---- supervision -----------------------------------------------------------------------------

    def supervision(
        self, scopes: list[str], days: int = 30, zombie_days: int = 90, now: float | None = None
    ) -> dict[str, Any]:
        self.flush_stats()
        t = int(time.time() if now is None else now)
        since = t - days * 86400
        zombie_before = t - zombie_days * 86400
        conn = self.hub.store.conn
        apps = _rows(
            conn.execute(
                "SELECT a.id, a.dept_id, a.scene_name, a.scene_type, d.org FROM codes_applications a"
                " JOIN codes_departments d ON d.id = a.dept_id WHERE a.status = 'approved' ORDER BY a.dept_id, a.id"
            )
        )
        apps = [a for a in apps if _under_any(a["org"], scopes)]
        out = []
        for a in apps:
            issued, active, revoked, scanned_codes, zombies = conn.execute(
                "SELECT COUNT(*), SUM(status = 'active' AND expires_at > :t), SUM(status = 'revoked'),"
                " SUM(scans > 0), SUM(status = 'active' AND expires_at > :t AND issued_at < :z"
                "  AND COALESCE(last_scan_at, 0) < :z) FROM codes_issued WHERE app_id = :a",
                {"t": t, "z": zombie_before, "a": a["id"]},
            ).fetchone()
            scans = dict(
                conn.execute(
                    "SELECT verdict, COUNT(*) FROM codes_scans WHERE app_id = ? AND ts >= ? GROUP BY verdict",
                    (a["id"], since),
                ).fetchall()
            )
            online = dict(
                conn.execute(
                    "SELECT verdict, SUM(n) FROM codes_verify_stats WHERE app_id = ? AND day >= ? GROUP BY verdict",
                    (a["id"], _dt(since).strftime("%Y-%m-%d")),
                ).fetchall()
            )
            dup = conn.execute(
                "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM codes_issued WHERE app_id = ?"
                " AND status = 'active' AND expires_at > ? GROUP BY identity_id HAVING n > 1)",
                (a["id"], t),
            ).fetchone()[0]
            trend: dict[str, dict[str, int]] = {}
            for day, k in conn.execute(
                "SELECT date(issued_at, 'unixepoch'), COUNT(*) FROM codes_issued"
                " WHERE app_id = ? AND issued_at >= ? GROUP BY 1",
                (a["id"], since),
            ):
                trend.setdefault(day, {"issued": 0, "scanned": 0})["issued"] = k
            for day, k in conn.execute(
                "SELECT date(ts, 'unixepoch'), COUNT(*) FROM codes_scans WHERE app_id = ? AND ts >= ? GROUP BY 1",
                (a["id"], since),
            ):
                trend.setdefault(day, {"issued": 0, "scanned": 0})["scanned"] = k
            verified = scans.get("valid", 0) + online.get("valid", 0)
            total_checks = sum(scans.values()) + sum(online.values())
            out.append(
                {
                    "dept_id": a["dept_id"],
                    "application_id": a["id"],
                    "scene": a["scene_name"],
                    "scene_type": a["scene_type"],
                    "issued": issued or 0,
                    "active": active or 0,
                    "revoked": revoked or 0,
                    "scanned": sum(scans.values()),
                    "scanned_codes": scanned_codes or 0,
                    "verified": verified,
                    "failed": total_checks - verified,
                    "duplicates": int(dup) + scans.get("replayed", 0),
                    "zombies": zombies or 0,
                    "verdicts": {k: scans.get(k, 0) + online.get(k, 0) for k in set(scans) | set(online)},
                    "trend": [{"day": d, **v} for d, v in sorted(trend.items())],
                }
            )
        return {"generated_at": _dt(t).isoformat(), "days": days, "zombie_days": zombie_days, "rows": out}

    CSV_COLUMNS = [
        "dept_id",
        "application_id",
        "scene",
        "scene_type",
        "issued",
        "active",
        "revoked",
        "scanned",
        "scanned_codes",
        "verified",
        "failed",
        "duplicates",
        "zombies",
    ]

    def supervision_csv(self, scopes: list[str], days: int = 30, zombie_days: int = 90) -> str:
        buf = io.StringIO()
        w = csvsafe.DictWriter(buf, fieldnames=self.CSV_COLUMNS, extrasaction="ignore")  # no formulas
        w.writeheader()
        for r in self.supervision(scopes, days, zombie_days)["rows"]:
            w.writerow(r)
        return buf.getvalue()

    # ---- webhooks --------------------------------------------------------------------------------

    def _enqueue(self, db: sqlite_utils.Database, dept_id: str, event: str, data: dict[str, Any]) -> None:
        row = db.conn.execute("SELECT webhook_url FROM codes_departments WHERE id = ?", (dept_id,)).fetchone()
        if not row or not row[0]:
            return
        body = json.dumps(
            {"event": event, "dept_id": dept_id, "id": secrets.token_hex(8), "ts": _now_iso(), "data": data},
            separators=(",", ":"),
        )
        db["codes_webhooks"].insert(
            {
                "dept_id": dept_id,
                "event": event,
                "body": body,
                "attempts": 0,
                "next_at": time.time(),
                "status": "pending",
                "created_at": _now_iso(),
            }
        )

    @staticmethod
    def sign_webhook(secret: str, ts: str, body: bytes) -> str:
        """HMAC-SHA256 over "{timestamp}.{body}" (the timestamp header stops replays of old deliveries)."""
        return "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()

    def deliver_webhooks(self, now: float | None = None, timeout: float = 5.0) -> dict[str, int]:
        """Send due deliveries once; failures back off exponentially (2^attempts s) up to 6 attempts."""
        import httpx

        t = time.time() if now is None else now
        conn = self.hub.store.conn
        due = conn.execute(
            "SELECT w.id, w.body, w.attempts, d.webhook_url, d.webhook_secret, w.event FROM codes_webhooks w"
            " JOIN codes_departments d ON d.id = w.dept_id WHERE w.status = 'pending' AND w.next_at <= ?"
            " ORDER BY w.id LIMIT 200",
            (t,),
        ).fetchall()
        sent = failed = 0
        with httpx.Client(timeout=timeout) as client:
            for wid, body, attempts, url, secret, event in due:
                ts = str(int(time.time()))
                err: str | None = None
                try:
                    r = client.post(
                        url or "",
                        content=body.encode(),
                        headers={
                            "Content-Type": "application/json",
                            "X-CityCode-Event": event,
                            "X-CityCode-Timestamp": ts,
                            "X-CityCode-Signature": self.sign_webhook(secret, ts, body.encode()),
                        },
                    )
                    if r.status_code >= 300:
                        err = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    err = f"{type(e).__name__}: {e}"[:200]
                with self.hub.store.tx() as db:
                    if err is None:
                        sent += 1
                        db.conn.execute(
                            "UPDATE codes_webhooks SET status = 'sent', attempts = ? WHERE id = ?", (attempts + 1, wid)
                        )
                    else:
                        failed += 1
                        n = attempts + 1
                        db.conn.execute(
                            "UPDATE codes_webhooks SET attempts = ?, last_error = ?, next_at = ?, status = ?"
                            " WHERE id = ?",
                            (n, err, t + 2**n, "dead" if n >= WEBHOOK_MAX_ATTEMPTS else "pending", wid),
                        )
        return {"sent": sent, "failed": failed}

    def _kick_webhooks(self) -> None:
        """Wake the delivery worker (a hub worker; it runs while the hub is started)."""
        self.webhook_worker.kick()

    def _webhook_step(self) -> bool:
        return sum(self.deliver_webhooks().values()) > 0


def _under_any(org: str, scopes: list[str]) -> bool:
    return any(org == s or org.startswith(s.rstrip("/") + "/") for s in scopes)


def service_of(hub: Hub) -> CodesService:
    svc = hub.services.get("codes")
    if svc is None:
        svc = CodesService(hub)
        hub.services["codes"] = svc
    return svc


def setup(hub: Hub) -> None:
    svc = service_of(hub)
    # Offline hubs and tests call deliver_webhooks() themselves; a hub with a broker delivers in the background.
    if hub.settings.mqtt.enabled or os.environ.get("CITYBRAIN_CODES_WEBHOOK_THREAD") == "1":
        hub.add_worker(svc.webhook_worker)
    if hub.settings.mqtt.enabled:
        hub.add_worker(LoopWorker("codes-revocations-refresh", svc.refresh_revocations, interval_s=60))
    hub.hooks.on("scans.ingested", svc.ingest_scans)
    hub.hooks.on("devices.config", svc.fill_device_config)
    hub.hooks.on("bridge.connected", svc.republish_lists)
