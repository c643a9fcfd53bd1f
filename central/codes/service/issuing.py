"""Issuing: identity validation against the registry, batch issue (all or nothing), the issued-code
listing, and revocation of a code, of every code of an entity, or of a department key."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from central.codes import store
from central.codes.service.common import CodesError, Part, audit, codes_feed, feed, new_serial, now_iso
from protocol import citycode

if TYPE_CHECKING:
    from central.store import Db


class IssuingPart(Part):
    # ---- identity validation ---------------------------------------------------------------------

    def _has_registry(self, db: Db) -> bool:
        return bool(self._cached("table", "registry_entities", lambda: store.has_registry(db), db))

    def check_identity(self, identity_id: str, entity_type: str, db: Db | None = None) -> dict[str, Any] | None:
        """A live registry entity of the application's type when the registry exists; otherwise the
        identifier format (and check char, when the registry's id module is there)."""
        if db is None:
            with self.hub.store.read() as rdb:
                return self.check_identity(identity_id, entity_type, rdb)
        ident = identity_id.strip().upper()
        if self._has_registry(db):
            ent = store.entity(db, ident, with_org=True)
            if ent is None:
                raise CodesError(422, "identity_id", f"{ident} is not a registered base identifier")
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

    def entity_public(self, identity_id: str, db: Db | None = None) -> dict[str, Any] | None:
        """What anyone may learn about the entity a code identifies: type and status; names of
        non-person entities (a person's name stays hidden)."""
        if db is None:
            with self.hub.store.read() as rdb:
                return self.entity_public(identity_id, rdb)
        if not self._has_registry(db):
            return {"id": identity_id}
        e = store.entity(db, identity_id)
        if e is None:
            return None
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
        app = self.application(app_id)  # type: ignore[attr-defined]
        if app["status"] != "approved":
            raise CodesError(409, "application_id", f"application {app_id} is {app['status']}, not approved")
        attr = citycode.Attribute(app["code_type"], app["validity"], app["single_use"])
        assigned = {"code_system": app["code_system"], "auth_id": app["auth_id"], "attribute": attr.code()}
        for k, v in (city_fields or {}).items():
            if v is not None and v != assigned.get(k):
                raise CodesError(403, k, f"assigned by the city ({assigned.get(k)}); departments cannot change it")
        guide = guide_url or self.hub_resolver
        if guide not in self.filed_urls(app["dept_id"]):  # type: ignore[attr-defined]
            raise CodesError(422, "guide_url", f"{guide!r} is not a filed and approved URL of {app['dept_id']}")
        rules = self.rules()  # type: ignore[attr-defined]
        life = lifetime_s or int(rules["default_lifetime_s"].get(attr.validity, attr.max_lifetime_s))
        if not 0 < life <= attr.max_lifetime_s:
            raise CodesError(422, "lifetime_s", f"must be 1..{attr.max_lifetime_s} for validity class {attr.validity}")
        kid = self.active_kid(app["dept_id"])  # type: ignore[attr-defined]
        key = self._dept_private(kid)  # type: ignore[attr-defined]
        now = int(time.time())
        rows: list[dict[str, Any]] = []
        out: list[dict[str, Any]] = []
        with self.hub.store.read() as db:  # one connection for every identity lookup
            for i, item in enumerate(items):
                ident = str(item.get("identity_id", "")).strip().upper()
                data = str(item.get("dept_data") or "").upper()
                if len(data) > rules["dept_data_max"]:
                    raise CodesError(422, f"items[{i}].dept_data", f"longer than {rules['dept_data_max']}")
                if check_identity:
                    try:
                        self.check_identity(ident, app["entity_type"], db)
                    except CodesError as e:
                        raise CodesError(e.status, f"items[{i}].{e.field}", e.detail) from None
                try:
                    code = citycode.build(
                        key=key, guide_url=guide, code_system=app["code_system"], auth_id=app["auth_id"],
                        attribute=attr, identity_id=ident, serial=new_serial(), issued_at=now,
                        expires_at=now + life, dept_data=data,
                    )
                except citycode.CityCodeError as e:
                    raise CodesError(422, f"items[{i}].{e.field}", e.detail) from None
                rows.append({
                    "serial": code.serial, "app_id": app_id, "dept_id": app["dept_id"],
                    "code_system": code.code_system, "identity_id": ident, "kid": key.kid, "issued_at": now,
                    "expires_at": code.expires_at, "text": code.text, "status": "active", "scans": 0,
                })
                out.append({
                    "serial": code.serial, "text": code.text, "identity_id": ident, "issued_at": now,
                    "expires_at": code.expires_at, "code_system": code.code_system, "auth_id": code.auth_id,
                    "attribute": attr.code(), "kid": key.kid,
                })
        with self.hub.store.tx() as db:
            store.insert_issued(db, rows)
            audit(
                db,
                actor,
                "codes.issue",
                f"application:{app_id}",
                app["org"],
                {"count": len(rows), "first_serial": rows[0]["serial"] if rows else None},
            )
            codes_feed(db, [("code.issued", app["org"], {
                "serial": r["serial"], "identity_id": r["identity_id"], "application_id": app_id,
                "dept_id": r["dept_id"], "code_system": r["code_system"], "kid": r["kid"],
                "issued_at": r["issued_at"], "expires_at": r["expires_at"]}) for r in rows])
            for r in rows[:1000]:  # the feed carries the issuance; huge batches log their first 1,000
                feed(db, "code.issued", r["identity_id"],
                     {"serial": r["serial"], "application_id": app_id, "dept_id": app["dept_id"]})
            self._enqueue(  # type: ignore[attr-defined]
                db,
                app["dept_id"],
                "code.issued",
                {"application_id": app_id, "serials": [r["serial"] for r in rows[:1000]], "count": len(rows)},
            )
        self._kick_webhooks()  # type: ignore[attr-defined]
        return out

    def issued(
        self, scopes: list[str], app_id: int | None = None, status: str | None = None, limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Issued codes, newest first, only of departments whose org lies under one of `scopes`."""
        if not scopes:
            return {"total": 0, "items": []}
        with self.hub.store.read() as db:
            total, items = store.issued_page(db, scopes, app_id, status, limit, offset)
        return {"total": total, "items": items}

    def code_record(self, serial: str) -> dict[str, Any] | None:
        with self.hub.store.read() as db:
            return store.code_record(db, serial)

    # ---- revocation ------------------------------------------------------------------------------

    def revoke_code(self, actor: str, serial: str, reason: str) -> dict[str, Any]:
        rec = self.code_record(serial)
        if rec is None:
            raise CodesError(404, "serial", f"no code {serial}")
        with self.hub.store.tx() as db:
            store.revoke_serial(db, serial, int(time.time()))
            audit(db, actor, "codes.revoke.code", serial, rec["org"], {"reason": reason})
            self._enqueue(db, rec["dept_id"], "code.revoked", {"serials": [serial], "reason": reason})  # type: ignore[attr-defined]
            feed(db, "code.revoked", rec["identity_id"], {"serial": serial, "reason": reason})
            codes_feed(db, [("code.revoked", rec["org"], {
                "scope": "serial", "serial": serial, "identity_id": rec["identity_id"],
                "application_id": rec["app_id"], "dept_id": rec["dept_id"], "reason": reason})])
        self._kick_webhooks()  # type: ignore[attr-defined]
        out = {"revoked": "serial", "serial": serial, "revocation_version": self.publish_revocations()}  # type: ignore[attr-defined]
        self.hub.hooks.emit("codes.revoked", serials=[serial], identity_id=None, kid=None)
        return out

    def revoke_identity(self, actor: str, identity_id: str, reason: str, org: str | None) -> dict[str, Any]:
        ident = identity_id.strip().upper()
        with self.hub.store.tx() as db:
            n, depts = store.revoke_identity(db, ident, reason, actor, int(time.time()))
            audit(db, actor, "codes.revoke.identity", ident, org, {"reason": reason, "codes": n})
            for dept in depts:
                self._enqueue(db, dept, "code.revoked", {"identity_id": ident, "reason": reason})  # type: ignore[attr-defined]
            feed(db, "code.revoked", ident, {"identity_id": ident, "reason": reason, "codes": n})
            orgs = store.dept_orgs(db, depts)
            codes_feed(db, [("code.revoked", orgs.get(d), {"scope": "identity", "identity_id": ident,
                                                           "dept_id": d, "reason": reason}) for d in depts])
        self._kick_webhooks()  # type: ignore[attr-defined]
        out = {
            "revoked": "identity",
            "identity_id": ident,
            "codes": n,
            "revocation_version": self.publish_revocations(),  # type: ignore[attr-defined]
        }
        self.hub.hooks.emit("codes.revoked", serials=[], identity_id=ident, kid=None)
        return out

    def revoke_key(self, actor: str, kid: str, reason: str) -> dict[str, Any]:
        with self.hub.store.read() as db:
            row = store.key(db, kid)
        if row is None:
            raise CodesError(404, "kid", f"no key {kid}")
        dept = self.department(row["dept_id"])  # type: ignore[attr-defined]
        with self.hub.store.tx() as db:
            was_active = row["status"] == "active"
            store.revoke_key(db, kid, now_iso())
            # keep the department able to issue
            new_kid = self._new_dept_key(db, row["dept_id"]) if was_active else None  # type: ignore[attr-defined]
            audit(db, actor, "codes.revoke.key", kid, dept["org"], {"reason": reason, "replacement": new_kid})
            self._enqueue(db, row["dept_id"], "code.revoked", {"kid": kid, "reason": reason})  # type: ignore[attr-defined]
            codes_feed(db, [("code.revoked", dept["org"], {"scope": "key", "kid": kid, "dept_id": row["dept_id"],
                                                           "reason": reason, "replacement": new_kid})])
        self._kick_webhooks()  # type: ignore[attr-defined]
        self.publish_trust()  # type: ignore[attr-defined]
        out = {"revoked": "key", "kid": kid, "replacement": new_kid,
               "revocation_version": self.publish_revocations()}  # type: ignore[attr-defined]
        self.hub.hooks.emit("codes.revoked", serials=[], identity_id=None, kid=kid)
        return out
