"""Applications: departments, the duty catalogue, code rules, issuance applications with their three checks
and the maker-checker decision, app keys of business subsystems, and guide-URL filing."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from central.codes import store
from central.codes.service.common import (
    DEPT_ID,
    ENTITY_TYPES,
    SCENE_TYPE,
    CodesError,
    Part,
    audit,
    now_iso,
    under_any,
)
from central.iam.service import maker_refusal, note_maker
from central.webhooks.service import new_secret

if TYPE_CHECKING:
    from central.store import Db
from protocol import citycode


class ApplicationsPart(Part):
    # ---- departments, duties, rules --------------------------------------------------------------

    def register_department(
        self, actor: str, dept_id: str, name: str, org: str, webhook_url: str | None = None
    ) -> dict[str, Any]:
        if not DEPT_ID.match(dept_id):
            raise CodesError(422, "id", f"{dept_id!r} must match {DEPT_ID.pattern}")
        if not org.startswith("/"):
            raise CodesError(422, "org", "must be an org path like /city/health")
        secret = new_secret()  # whsec_<base64>: what Standard Webhooks receivers take
        with self.hub.store.tx() as db:
            if store.department_exists(db, dept_id):
                raise CodesError(409, "id", f"department {dept_id} already exists")
            store.insert_department(db, {
                "id": dept_id, "name": name, "org": org, "webhook_url": webhook_url, "webhook_secret": secret,
                "created_by": actor, "created_at": now_iso(),
            })
            kid = self._new_dept_key(db, dept_id)  # type: ignore[attr-defined]
            audit(db, actor, "codes.department.register", dept_id, org, {"kid": kid})
        self.publish_trust()  # type: ignore[attr-defined]
        return {**self.department(dept_id), "kid": kid, "webhook_secret": secret}

    def department_exists(self, dept_id: str) -> bool:
        with self.hub.store.read() as db:
            return store.department_exists(db, dept_id)

    def department(self, dept_id: str) -> dict[str, Any]:
        with self.hub.store.read() as db:
            row = store.department(db, dept_id)
        if row is None:
            raise CodesError(404, "dept_id", f"no department {dept_id!r}")
        return row

    def departments(self, scopes: list[str]) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            rows = store.all_departments(db)
        return [r for r in rows if under_any(r["org"], scopes)]

    def set_webhook(self, actor: str, dept_id: str, url: str | None) -> dict[str, Any]:
        dept = self.department(dept_id)
        if url is not None and not re.match(r"^https?://\S+$", url):
            raise CodesError(422, "url", "must be an http(s) URL")
        secret = new_secret()  # whsec_<base64>: what Standard Webhooks receivers take
        with self.hub.store.tx() as db:
            store.set_webhook(db, dept_id, url, secret)
            audit(db, actor, "codes.webhook.set", dept_id, dept["org"], {"url": url})
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
            store.replace_duties(db, clean, replace)  # row by row: a repeated row's last one wins
            audit(db, actor, "codes.duties.import", "codes_duties", None, {"rows": len(clean), "replace": replace})
        return len(clean)

    def duties(self) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            return store.all_duties(db)

    RULE_DEFAULTS: dict[str, Any] = {
        "dept_data_max": 24,
        "static_classes": ["D", "Y", "L"],
        "dynamic_classes": ["M", "H"],
        "default_lifetime_s": {"M": 300, "H": 86400, "D": 7 * 86400, "Y": 365 * 86400, "L": 5 * 365 * 86400},
    }

    def rules(self) -> dict[str, Any]:
        with self.hub.store.read() as db:
            stored = store.stored_rules(db)
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
            if changes:
                store.set_rules(db, changes)
            audit(db, actor, "codes.rules.set", "codes_rules", None, changes)
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
            app_id = store.insert_application(db, {
                "dept_id": dept_id, "applicant": actor, "scene_name": scene_name, "scene_type": scene_type,
                "code_type": code_type, "entity_type": entity_type, "purpose": purpose,
                "share_commitment": int(share_commitment), "validity": validity, "single_use": int(single_use),
                "status": "pending", "created_at": now_iso(),
            })
            audit(db, actor, "codes.apply", f"application:{app_id}", dept["org"], {"scene_type": scene_type})
            note_maker(db, f"codes.application:{app_id}", actor, "file")
        return self.application(app_id)

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
            store.update_application(db, app_id, changes)
            audit(db, actor, "codes.application.edit", f"application:{app_id}", app["org"],
                  {"fields": sorted(changes)})
            note_maker(db, f"codes.application:{app_id}", actor, "edit")
        return self.application(app_id)

    def application(self, app_id: int) -> dict[str, Any]:
        with self.hub.store.read() as db:
            r = store.application(db, app_id)
            if r is None:
                raise CodesError(404, "application_id", f"no application {app_id}")
            r["share_commitment"] = bool(r["share_commitment"])
            r["single_use"] = bool(r["single_use"])
            r["checks"] = json.loads(r["checks"]) if r["checks"] else self.checks(r)
        return r

    def applications(
        self, scopes: list[str], dept_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            ids = store.application_ids(db, dept_id, status)
            apps = [self.application(i) for i in ids]
        return [a for a in apps if under_any(a["org"], scopes)]

    def checks(self, app: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The three approval checks: duty (catalogue), duplicate (same entity type + scene type held by
        another department), sharing (commitment to share base info)."""
        with self.hub.store.read() as db:
            duty = store.duty(db, app["dept_id"], app["scene_type"])
            dup = store.other_holder(db, app["entity_type"], app["scene_type"], app["dept_id"])
        return {
            "duty": {
                "ok": duty is not None,
                "detail": f"duty catalogue lists {app['scene_type']!r} for {app['dept_id']}"
                if duty is not None
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
        with self.hub.store.read() as db:
            why = maker_refusal(db, f"codes.application:{app_id}", actor, filer=app["applicant"])
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
            store.update_application(db, app_id, {
                "status": "approved" if approve else "rejected", "checks": json.dumps(checks),
                "code_system": code_system if approve else None, "auth_id": f"A{app_id:04d}" if approve else None,
                "decided_by": actor, "decided_at": now_iso(), "reason": reason,
            })
            audit(
                db,
                actor,
                "codes.approve" if approve else "codes.reject",
                f"application:{app_id}",
                app["org"],
                {"checks": {k: v["ok"] for k, v in checks.items()}, "code_system": code_system},
            )
        if approve:
            self.publish_trust()  # type: ignore[attr-defined]  # the department key may now sign this system
        return self.application(app_id)

    # ---- app keys (business subsystems) ----------------------------------------------------------

    def create_app_key(self, actor: str, app_id: int, name: str) -> dict[str, Any]:
        app = self.application(app_id)
        if app["status"] != "approved":
            raise CodesError(409, "application_id", "app keys hang off approved applications only")
        key = "ck_" + secrets.token_urlsafe(24)
        with self.hub.store.tx() as db:
            kid = store.insert_appkey(db, {
                "app_id": app_id, "name": name, "key_hash": hashlib.sha256(key.encode()).hexdigest(),
                "created_by": actor, "created_at": now_iso(),
            })
            audit(db, actor, "codes.appkey.create", f"application:{app_id}", app["org"], {"name": name})
        return {"id": kid, "application_id": app_id, "name": name, "key": key}

    def app_keys(self, app_id: int) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            return store.app_keys(db, app_id)

    def revoke_app_key(self, actor: str, key_id: int) -> None:
        with self.hub.store.read() as db:
            owner = store.appkey_app(db, key_id)
        if owner is None:
            raise CodesError(404, "key_id", f"no app key {key_id}")
        app = self.application(owner)
        with self.hub.store.tx() as db:
            store.revoke_appkey(db, key_id, now_iso())
            audit(db, actor, "codes.appkey.revoke", f"appkey:{key_id}", app["org"])
        self._invalidate()

    def app_for_key(self, key: str) -> int | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self._cached("appkey", digest, lambda: self._app_for_key(digest))  # type: ignore[no-any-return]

    def _app_for_key(self, digest: str) -> int | None:
        with self.hub.store.read() as db:
            return store.app_for_key_hash(db, digest)

    # ---- URL filing ------------------------------------------------------------------------------

    def file_url(self, actor: str, dept_id: str, url: str) -> dict[str, Any]:
        dept = self.department(dept_id)
        try:
            citycode.check_guide_url(url)
        except citycode.CityCodeError as e:
            raise CodesError(422, "url", e.detail) from None
        with self.hub.store.tx() as db:
            if store.url_filed(db, url):
                raise CodesError(409, "url", "already filed")
            uid = store.insert_url(db, {"dept_id": dept_id, "url": url, "status": "pending", "filed_by": actor,
                                        "created_at": now_iso()})
            audit(db, actor, "codes.url.file", url, dept["org"])
            note_maker(db, f"codes.url:{uid}", actor, "file")
        return self.url(uid)

    def url(self, url_id: int) -> dict[str, Any]:
        with self.hub.store.read() as db:
            row = store.url(db, url_id)
        if row is None:
            raise CodesError(404, "url_id", f"no filed URL {url_id}")
        return row

    def urls(self, dept_id: str | None = None, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        """Filed URLs; with `scopes`, only those of departments under them (filings of no department only
        for readers at an org-tree root)."""
        with self.hub.store.read() as db:
            rows = store.all_urls(db, dept_id)
        out = []
        for r in rows:
            org = r.pop("_org")
            if scopes is None or (under_any(org, scopes) if org else any(s.count("/") == 1 for s in scopes)):
                out.append(r)
        return out

    def audit_url(self, actor: str, url_id: int, approve: bool, reason: str = "") -> dict[str, Any]:
        u = self.url(url_id)
        with self.hub.store.read() as db:
            why = maker_refusal(db, f"codes.url:{url_id}", actor, filer=u["filed_by"])
        if why:
            raise CodesError(403, "url_id", why)
        with self.hub.store.tx() as db:
            store.decide_url(db, url_id, "approved" if approve else "rejected", actor, reason)
            audit(db, actor, "codes.url.audit", u["url"], u["org"], {"approved": approve})
        self._invalidate()
        return self.url(url_id)

    def filed_urls(self, dept_id: str | None = None, db: Db | None = None) -> list[str]:
        """Approved guide URLs (the hub's own resolver is always filed); read on `db` when given."""
        return self._cached("urls", dept_id or "", lambda: self._filed_urls(dept_id, db), db)  # type: ignore[no-any-return]

    def _filed_urls(self, dept_id: str | None, db: Db | None = None) -> list[str]:
        if db is None:
            with self.hub.store.read() as rdb:
                return self._filed_urls(dept_id, rdb)
        return [self.hub_resolver, *store.approved_urls(db, dept_id)]
