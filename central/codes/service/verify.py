"""Online verification (the hot path: one primary-key probe per call, keys/URLs/app keys cached) and the
in-memory verdict counters behind the supervision statistics."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from central.codes import store
from central.codes.service.common import Part, dt
from protocol import citycode

if TYPE_CHECKING:
    from central.store import Db


class VerifyPart(Part):
    def verify_online(self, text: str | bytes, now: float | None = None) -> dict[str, Any]:
        """Verdict of a code against the hub's records: signature, issuance record, revocations, expiry.
        One primary-key query per call (serial), joined with key status and entity revocation."""
        t = time.time() if now is None else now
        try:
            code = citycode.parse(text)
        except citycode.CityCodeError as e:
            return self._result("malformed", str(e), None, None)
        with self.hub.store.read() as db:  # one connection for the whole verdict
            return self._verify(db, code, t)

    def _verify(self, db: Db, code: citycode.CityCode, t: float) -> dict[str, Any]:
        hit = self._public(db, code.kid)  # type: ignore[attr-defined]
        if hit is None:
            return self._result("unknown-key", f"kid: {code.kid} was never issued by this city", code, None)
        pub, key_dept = hit
        if not pub.verify(code.signed_bytes(), code.signature):
            return self._result("bad-signature", f"signature: does not verify under key {code.kid}", code, None)
        row = store.verify_row(db, code.serial)
        if row is None or row["text"] != code.text:
            # Signed by a city key yet not on record: say which city rule it breaks, if any.
            if code.code_system not in store.approved_systems(db, key_dept):
                return self._result(
                    "wrong-system", f"code_system: {key_dept} holds no approved {code.code_system!r} scene", code, None
                )
            if code.guide_url not in self.filed_urls(key_dept, db):  # type: ignore[attr-defined]
                return self._result("unfiled-url", f"guide_url: {code.guide_url[:80]!r} is not filed", code, None)
            return self._result("bad-signature", f"serial: {code.serial} has no matching issuance record", code, None)
        info = {"app_id": row["app_id"], "dept_id": row["dept_id"], "scene_name": row["scene_name"],
                "scene_type": row["scene_type"]}
        if row["key_status"] == "revoked":
            return self._result("revoked", f"kid: department key {code.kid} revoked", code, info)
        if row["status"] == "revoked":
            return self._result("revoked", f"serial: code {code.serial} revoked", code, info)
        if row["id_revoked"]:
            return self._result("revoked", f"identity_id: all codes of {code.identity_id} revoked", code, info)
        if not row["not_before"] - 1 <= code.issued_at <= row["not_after"] + 1:
            return self._result("unknown-key", f"kid: key {code.kid} was not valid at issue time", code, info)
        if code.guide_url not in self.filed_urls(row["dept_id"], db):  # type: ignore[attr-defined]
            return self._result("unfiled-url", f"guide_url: {code.guide_url[:80]!r} is not filed", code, info)
        if t > code.expires_at:
            return self._result("expired", f"expires_at: expired {int(t - code.expires_at)} s ago", code, info)
        return self._result("valid", "ok", code, info, db)

    def _result(
        self, verdict: str, reason: str, code: citycode.CityCode | None, info: dict[str, Any] | None,
        db: Db | None = None,
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
                issued_at=dt(code.issued_at).isoformat(),
                expires_at=dt(code.expires_at).isoformat(),
            )
        if info is not None:
            out.update(
                dept_id=info["dept_id"],
                scene=info["scene_name"],
                scene_type=info["scene_type"],
                application_id=info["app_id"],
            )
            if code is not None and verdict == "valid":
                out["entity"] = self.entity_public(code.identity_id, db)  # type: ignore[attr-defined]
        return out

    def _count(self, verdict: str, app_id: int) -> None:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        self._stats[(day, app_id, verdict)] += 1
        self.hub.metrics.verdict(verdict)
        if time.monotonic() - self._stats_flushed > 5:
            self.flush_stats()

    def flush_stats(self) -> None:
        """Online-verify counters are kept in memory and written every few seconds: a write per verify
        would cap verification at the database's write rate."""
        with self._lock:
            stats, self._stats = self._stats, Counter()
            self._stats_flushed = time.monotonic()
        if not stats:
            return
        with self.hub.store.tx() as db:
            store.add_verify_stats(db, [{"day": d, "app_id": a, "verdict": v, "n": n}
                                        for (d, a, v), n in sorted(stats.items())])
