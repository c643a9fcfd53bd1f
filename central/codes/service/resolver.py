"""What the page a phone opens when it scans a code (`/c/...`) may show, by who is looking.

Anyone: the verdict with its reason in plain words, the scene, the issuing department, the validity, and
the holder masked (type, and a masked name or id). An officer holding `codes.read` over the issuing
department: the holder unmasked, the serial, the technical reason and the scan count. What the page shows
is decided here; how it looks is central/codes/page.py.
"""

from __future__ import annotations

from typing import Any

from central.iam.principal import Principal


def mask_id(identity_id: str) -> str:
    """3101...0001X: enough to tell two codes apart on a door, not enough to look the holder up."""
    s = identity_id or ""
    if len(s) <= 6:
        return "*" * len(s)
    return s[:4] + "*" * (len(s) - 6) + s[-2:]


def mask_name(name: str | None) -> str:
    if not name:
        return ""
    return name[:1] + "*" * max(len(name) - 1, 1)


class ResolverPart:
    hub: Any

    def resolver_view(self, city_seg: str, dept_seg: str, who: Principal | None) -> dict[str, Any]:
        """The page's facts for this code and viewer. `found` False: not a code this city issued (the
        segments are unknown, or a known serial with altered segments: never verify what we did not issue)."""
        from protocol.citycode import serial_of  # v1 and v2 codes keep the serial in different places

        serial = serial_of(city_seg, dept_seg)
        rec = self.code_record(serial) if serial else None  # type: ignore[attr-defined]
        if rec is None or not rec["text"].endswith(f"/{city_seg}/{dept_seg}"):
            return {"found": False, "verdict": "bad-signature" if rec else "malformed", "officer": False}
        result = self.verify_online(rec["text"])  # type: ignore[attr-defined]
        officer = who is not None and who.allowed("codes.read", rec["org"])
        ent = self.entity_public(rec["identity_id"]) or {}  # type: ignore[attr-defined]
        view: dict[str, Any] = {
            "found": True,
            "verdict": result["verdict"],
            "officer": officer,
            "scene": rec["scene_name"],
            "department": rec["dept_name"],
            "issued_at": int(rec["issued_at"]),
            "expires_at": int(rec["expires_at"]),
            "revoked_at": int(rec["revoked_at"]) if rec.get("revoked_at") else None,
            "holder_type": ent.get("type", ""),
            # entity_public already masks a person's name; ids are masked for everyone but officers
            "holder_name": ent.get("name") or "",
            "holder_id": mask_id(rec["identity_id"]),
        }
        if officer:
            view.update(holder_id=rec["identity_id"], serial=rec["serial"], reason=result["reason"],
                        scans=int(rec["scans"]), dept_id=rec["dept_id"])
            full = self._entity_with_org(rec["identity_id"])
            # the unmasked name is registry data: only for who may read the registry where the holder lives
            if full and full.get("org") and who is not None and who.allowed("registry.read", full["org"]):
                view["holder_name"] = full.get("name") or ""
        return view

    def _entity_with_org(self, identity_id: str) -> dict[str, Any] | None:
        from central.codes import store

        with self.hub.store.read() as db:
            if not self._has_registry(db):  # type: ignore[attr-defined]
                return None
            return store.entity(db, identity_id, with_org=True)
