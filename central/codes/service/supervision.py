"""Supervision: scans reported by scan terminals (via the bridge), per-scene statistics (issued, active,
scanned, verified, duplicates, zombies, daily trend), their CSV export, and the departments' signed
webhooks (enqueued into the hub's outbox)."""

from __future__ import annotations

import io
import secrets
import time
from typing import TYPE_CHECKING, Any

from central import csvsafe
from central.codes import store
from central.codes.service.common import Part, codes_feed, dt, feed, now_iso, under_any
from central.webhooks import service as webhooks
from protocol.messages import ScanBatch

if TYPE_CHECKING:
    from central.store import Db


class SupervisionPart(Part):
    # ---- scans (from scan terminals via the bridge) --------------------------------------------------

    def ingest_scans(self, db: Db, batches: list[tuple[str, str, ScanBatch]]) -> int:
        """Hook `scans.ingested`, inside the bridge's write transaction (`db`)."""
        n = 0
        changes: list[tuple[str | None, str | None, dict[str, Any]]] = []  # (dept, terminal org, data)
        for site, device, batch in batches:
            terminal_org = store.device_org(db, site, device)  # one lookup per batch
            for rec in batch.records:
                serial = rec.serial.upper() if rec.serial else None
                row = store.issued_brief(db, serial) if serial else None
                ts = int(rec.ts.timestamp())
                fresh = store.insert_scan(db, {
                    "scan_id": rec.scan_id, "serial": serial, "app_id": row["app_id"] if row else None,
                    "dept_id": row["dept_id"] if row else rec.dept, "site": site, "device": device,
                    "verdict": rec.verdict, "reason": rec.reason, "ts": ts,
                })
                if not fresh:
                    continue  # a re-sent batch: counted once
                n += 1
                changes.append((row["dept_id"] if row else rec.dept, terminal_org, {
                    "scan_id": rec.scan_id, "serial": serial, "identity_id": row["identity_id"] if row else None,
                    "application_id": row["app_id"] if row else None, "dept_id": row["dept_id"] if row else rec.dept,
                    "site": site, "device": device, "verdict": rec.verdict, "reason": rec.reason,
                    "ts": rec.ts.isoformat()}))
                if row is None or serial is None:
                    continue
                store.note_scan(db, serial, ts)
                feed(db, "code.scanned", row["identity_id"],
                     {"serial": serial, "verdict": rec.verdict, "site": site, "device": device})
                self._enqueue(db, row["dept_id"], "code.scanned", {
                    "serial": serial, "verdict": rec.verdict, "reason": rec.reason, "site": site, "device": device,
                    "ts": rec.ts.isoformat(),
                })
        if changes:
            orgs = store.dept_orgs(db, [d for d, _org, _data in changes if d])
            codes_feed(db, [("code.scanned", orgs.get(d or "") or org, data) for d, org, data in changes])
        if n:
            self._kick_webhooks()
        return n

    # ---- supervision -----------------------------------------------------------------------------

    def supervision(
        self, scopes: list[str], days: int = 30, zombie_days: int = 90, now: float | None = None
    ) -> dict[str, Any]:
        self.flush_stats()  # type: ignore[attr-defined]
        t = int(time.time() if now is None else now)
        since = t - days * 86400
        zombie_before = t - zombie_days * 86400
        out = []
        with self.hub.store.read() as db:
            apps = [a for a in store.approved_apps(db) if under_any(a["org"], scopes)]
            for a in apps:
                f = store.app_figures(db, a["id"], t, since, dt(since).strftime("%Y-%m-%d"), zombie_before)
                scans, online = f["scans"], f["online"]
                trend: dict[str, dict[str, int]] = {}
                for kind, by_day in (("issued", f["issued_by_day"]), ("scanned", f["scanned_by_day"])):
                    for d, k in by_day.items():
                        trend.setdefault(dt(d * 86400).strftime("%Y-%m-%d"), {"issued": 0, "scanned": 0})[kind] = k
                verified = scans.get("valid", 0) + online.get("valid", 0)
                total_checks = sum(scans.values()) + sum(online.values())
                out.append(
                    {
                        "dept_id": a["dept_id"],
                        "application_id": a["id"],
                        "scene": a["scene_name"],
                        "scene_type": a["scene_type"],
                        "issued": f["issued"],
                        "active": f["active"],
                        "revoked": f["revoked"],
                        "scanned": sum(scans.values()),
                        "scanned_codes": f["scanned_codes"],
                        "verified": verified,
                        "failed": total_checks - verified,
                        "duplicates": f["duplicates"] + scans.get("replayed", 0),
                        "zombies": f["zombies"],
                        "verdicts": {k: scans.get(k, 0) + online.get(k, 0) for k in set(scans) | set(online)},
                        "trend": [{"day": d, **v} for d, v in sorted(trend.items())],
                    }
                )
        return {"generated_at": dt(t).isoformat(), "days": days, "zombie_days": zombie_days, "rows": out}

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

    # ---- webhooks (the hub's outbox, central/webhooks) -----------------------------------------------

    def _enqueue(self, db: Db, dept_id: str, event: str, data: dict[str, Any]) -> None:
        """Queue a department's webhook in the caller's transaction (the event and its webhook commit
        together); the outbox delivers it, signed per Standard Webhooks with the department's secret."""
        dept = store.webhook_target(db, dept_id)
        if dept is None or not dept["webhook_url"]:
            return
        body = {"event": event, "dept_id": dept_id, "id": secrets.token_hex(8), "ts": now_iso(), "data": data}
        webhooks.enqueue(db, event, body, webhooks.Target(f"codes:{dept_id}", dept["org"], dept["webhook_url"],
                                                          dept["webhook_secret"] or ""))

    def _kick_webhooks(self) -> None:
        """Wake the outbox's delivery worker (after the enqueuing transaction committed)."""
        webhooks.kick(self.hub)
