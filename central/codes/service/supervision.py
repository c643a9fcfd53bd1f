"""Supervision: scans reported by scan terminals (via the bridge), per-scene statistics (issued, active,
scanned, verified, duplicates, zombies, daily trend), their CSV export, and the departments' signed
webhooks with retries."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from central import csvsafe
from central.codes import store
from central.codes.service.common import (
    WEBHOOK_BATCH,
    WEBHOOK_LEASE_S,
    WEBHOOK_MAX_ATTEMPTS,
    Part,
    codes_feed,
    dt,
    feed,
    now_iso,
    under_any,
)
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

    # ---- webhooks --------------------------------------------------------------------------------

    def _enqueue(self, db: Db, dept_id: str, event: str, data: dict[str, Any]) -> None:
        if not store.webhook_url(db, dept_id):
            return
        body = json.dumps(
            {"event": event, "dept_id": dept_id, "id": secrets.token_hex(8), "ts": now_iso(), "data": data},
            separators=(",", ":"),
        )
        store.enqueue_webhook(db, {"dept_id": dept_id, "event": event, "body": body, "attempts": 0,
                                   "next_at": time.time(), "status": "pending", "created_at": now_iso()})

    @staticmethod
    def sign_webhook(secret: str, ts: str, body: bytes) -> str:
        """HMAC-SHA256 over "{timestamp}.{body}" (the timestamp header stops replays of old deliveries)."""
        return "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()

    def deliver_webhooks(self, now: float | None = None, timeout: float = 5.0) -> dict[str, int]:
        """Send due deliveries once; failures back off exponentially (2^attempts s) up to 6 attempts. Each
        batch is claimed first (store.claim_webhooks), so two senders never post the same delivery."""
        import httpx

        t = time.time() if now is None else now
        sent = failed = 0
        with httpx.Client(timeout=timeout) as client:
            while True:
                with self.hub.store.tx() as db:
                    due = store.claim_webhooks(db, t, WEBHOOK_LEASE_S, WEBHOOK_BATCH)
                if not due:
                    break
                for w in due:
                    body = w["body"]
                    ts = str(int(time.time()))
                    err: str | None = None
                    try:
                        r = client.post(
                            w["webhook_url"] or "",
                            content=body.encode(),
                            headers={
                                "Content-Type": "application/json",
                                "X-CityCode-Event": w["event"],
                                "X-CityCode-Timestamp": ts,
                                "X-CityCode-Signature": self.sign_webhook(w["webhook_secret"] or "", ts, body.encode()),
                            },
                        )
                        if r.status_code >= 300:
                            err = f"HTTP {r.status_code}"
                    except httpx.HTTPError as e:
                        err = f"{type(e).__name__}: {e}"[:200]
                    n = w["attempts"] + 1
                    with self.hub.store.tx() as db:
                        if err is None:
                            sent += 1
                            store.webhook_sent(db, w["id"], n)
                        else:
                            failed += 1
                            store.webhook_failed(db, w["id"], n, err, t + 2**n, dead=n >= WEBHOOK_MAX_ATTEMPTS)
                if len(due) < WEBHOOK_BATCH:
                    break
        return {"sent": sent, "failed": failed}

    def _kick_webhooks(self) -> None:
        """Wake the delivery worker (a hub worker; it runs while the hub is started)."""
        self.webhook_worker.kick()

    def _webhook_step(self) -> bool:
        return sum(self.deliver_webhooks().values()) > 0
