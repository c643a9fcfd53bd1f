"""Video rules: correlate edge events into cases, the disposal workflow with SLA, routing, alert push,
statistics and heat map. No HTTP types here; routes translate VideoError into 4xx.

Correlation (one incident -> one case): an event joins the case that already holds its (site, device,
incident_id); otherwise an open case of the same kind on the same site whose camera is the same or an
adjacent one (video_cameras.neighbours, either direction) and whose last event is within
`window_s`; otherwise it opens a new case.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlite_utils

from central.hub import Hub, LoopWorker
from central.iam.audit import record
from protocol import topics
from protocol.messages import Event

log = logging.getLogger("citybrain.video")

DEFAULT_ORG = "/city"
STATUSES = ("new", "reviewed", "dispatched", "acknowledged", "resolved", "dismissed")
OPEN = ("new", "reviewed", "dispatched", "acknowledged")
REVIEW_SLA_MIN = 30.0  # a new case should be looked at within this
DEFAULT_ACK_SLA_MIN = 15.0
DEFAULT_RESOLVE_SLA_MIN = 240.0
ALERT_TOPIC = f"{topics.ROOT}/alerts/video"  # + "/{department}"


class VideoError(Exception):
    """status: 400 bad input, 404 unknown, 409 wrong workflow state."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


class VideoService:
    def __init__(self, hub: Hub, window_s: float = 600.0) -> None:
        self.hub = hub
        self.window_s = window_s
        self._process_lock = threading.Lock()
        # Hub-owned workers (registered by setup(), run by Hub.start()): the correlator over the stored
        # events, and the alert sender, fed from a queue so a dispatch never waits for a webhook.
        self.correlator = LoopWorker("video-correlator", lambda: self.process_pending() > 0, interval_s=0.5)
        self._alerts: queue.Queue[tuple[int, str, str, bytes, str | None]] = queue.Queue()
        self._alerts_busy = 0
        self._alerts_cv = threading.Condition()
        self.alert_sender = LoopWorker("video-alerts", self._send_queued, interval_s=0.5)

    # --- ingest: a correlator thread consumes the bridge's `events` table from a durable cursor --------
    def on_events(self, db: sqlite_utils.Database, events: list[tuple[str, str, Event]]) -> None:
        """Hook `events.ingested` (inside the bridge's transaction): only wake the correlator, so the
        bridge's ingest rate does not depend on correlation cost."""
        self.kick()

    def kick(self) -> None:
        """Wake the correlator (it runs only while the hub is started; a stopped hub's events wait)."""
        self.correlator.kick()

    def process_pending(self, limit: int = 1000) -> int:
        """Correlate up to `limit` stored events past the cursor, cursor move in the same transaction."""
        with self._process_lock, self.hub.store.tx() as db:
            last = db.conn.execute("SELECT last_rowid FROM video_cursor WHERE id = 1").fetchone()[0]
            rows = db.conn.execute(
                "SELECT rowid, site, device, payload, snapshot FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last, limit),
            ).fetchall()
            if not rows:
                return 0
            batch = []
            for _rowid, site, device, payload, snap in rows:
                try:
                    ev = Event.model_validate_json(payload)
                except ValueError:
                    log.warning("video: stored event of %s/%s does not parse; skipped", site, device)
                    continue
                if snap is not None:
                    ev.snapshot_jpeg_b64 = base64.b64encode(snap).decode()
                batch.append((site, device, ev))
            self.correlate(db, batch)
            db.conn.execute("UPDATE video_cursor SET last_rowid = ? WHERE id = 1", (rows[-1][0],))
            return len(rows)

    def correlate(self, db: sqlite_utils.Database, events: list[tuple[str, str, Event]]) -> None:
        for site, device, ev in sorted(events, key=lambda x: x[2].ts):
            # A savepoint per event: one bad event must not roll back the bridge's whole batch.
            db.conn.execute("SAVEPOINT video_ingest")
            try:
                self.ingest(db, site, device, ev)
            except Exception:
                db.conn.execute("ROLLBACK TO video_ingest")
                log.exception("video: event %s from %s/%s not correlated", ev.event_id, site, device)
            db.conn.execute("RELEASE video_ingest")

    def ingest(self, db: sqlite_utils.Database, site: str, device: str, ev: Event) -> int | None:
        c = db.conn
        if c.execute("SELECT 1 FROM video_case_events WHERE event_id = ?", (ev.event_id,)).fetchone():
            return None  # already correlated (idempotent)
        ts = iso(ev.ts)
        case_id = self._find_case(db, site, device, ev)
        snap = _snapshot_bytes(ev.snapshot_jpeg_b64)
        cam_key = f"{device}/{ev.camera or '-'}"
        t = iso(now())
        if case_id is None:
            org = self.org_of_site(db, site)
            lat, lon = ev.lat, ev.lon
            if lat is None or lon is None:
                row = c.execute("SELECT lat, lon FROM video_cameras WHERE site=? AND device=? AND camera=?",
                                (site, device, ev.camera or "")).fetchone()
                lat, lon = (row[0], row[1]) if row else (None, None)
            cur = c.execute(
                "INSERT INTO video_cases (site, device, camera, zone, kind, org, status, score, peak_count,"
                " first_ts, last_ts, live, event_count, cameras, lat, lon, snapshot, due_at, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?, 'new', ?,?,?,?,?,0,?,?,?,?,?,?,?)",
                (site, device, ev.camera, ev.zone, ev.kind, org, ev.score, ev.count, ts, ts,
                 0 if ev.phase in ("end", "instant") else 1, json.dumps([cam_key]), lat, lon, snap,
                 iso(now() + timedelta(minutes=REVIEW_SLA_MIN)), t, t),
            )
            case_id = int(cur.lastrowid or 0)
            self._log(db, case_id, "system:bridge", "video.case.create",
                      {"event_id": ev.event_id, "kind": ev.kind, "camera": cam_key})
            record(db, actor="system:bridge", action="video.case.create", target=f"video_case:{case_id}", org=org,
                   detail={"site": site, "device": device, "camera": ev.camera, "kind": ev.kind})
        else:
            row = c.execute("SELECT cameras, last_ts FROM video_cases WHERE id = ?", (case_id,)).fetchone()
            cams = json.loads(row[0])
            if cam_key not in cams:
                cams.append(cam_key)
            c.execute(
                "UPDATE video_cases SET last_ts = max(last_ts, ?), score = max(score, ?),"
                " peak_count = max(coalesce(peak_count, 0), coalesce(?, 0)), cameras = ?,"
                " live = CASE WHEN ? = 'end' THEN 0 WHEN ? IN ('start', 'update') THEN 1 ELSE live END,"
                " snapshot = coalesce(?, snapshot), updated_at = ? WHERE id = ?",
                (ts, ev.score, ev.count, json.dumps(cams), ev.phase, ev.phase, snap, t, case_id),
            )
        c.execute("UPDATE video_cases SET event_count = event_count + 1 WHERE id = ?", (case_id,))
        c.execute(
            "INSERT INTO video_case_events (event_id, case_id, site, device, incident_id, camera, phase, ts,"
            " score, count) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (ev.event_id, case_id, site, device, ev.incident_id, ev.camera, ev.phase, ts, ev.score, ev.count),
        )
        return case_id

    def _find_case(self, db: sqlite_utils.Database, site: str, device: str, ev: Event) -> int | None:
        c = db.conn
        if ev.incident_id:
            row = c.execute("SELECT case_id FROM video_case_events WHERE site=? AND device=? AND incident_id=?"
                            " LIMIT 1", (site, device, ev.incident_id)).fetchone()
            if row:
                return int(row[0])
        cam_key = f"{device}/{ev.camera or '-'}"
        near = self.neighbours(db, site, cam_key) | {cam_key}
        since = iso(ev.ts - timedelta(seconds=self.window_s))
        rows = c.execute(
            "SELECT id, cameras FROM video_cases WHERE site=? AND kind=? AND status IN (?,?,?,?)"
            " AND last_ts >= ? ORDER BY last_ts DESC", (site, ev.kind, *OPEN, since),
        ).fetchall()
        for case_id, cams in rows:
            if near & set(json.loads(cams)):
                return int(case_id)
        return None

    def neighbours(self, db: sqlite_utils.Database, site: str, cam_key: str) -> set[str]:
        device, _, camera = cam_key.partition("/")
        out: set[str] = set()
        for d, cam, nb in db.conn.execute("SELECT device, camera, neighbours FROM video_cameras WHERE site=?",
                                          (site,)):
            key = f"{d}/{cam}"
            nbs = set(json.loads(nb))
            if key == cam_key:
                out |= nbs
            elif cam_key in nbs:
                out.add(key)
        return out

    def org_of_site(self, db: sqlite_utils.Database, site: str) -> str:
        row = db.conn.execute("SELECT org_path FROM video_sites WHERE site = ?", (site,)).fetchone()
        return row[0] if row else DEFAULT_ORG

    # --- configuration -------------------------------------------------------------------------------
    def set_site(self, site: str, org_path: str, actor: str) -> dict[str, str]:
        if not topics.valid_id(site):
            raise VideoError(400, "site: must match ^[A-Za-z0-9_-]{1,64}$")
        with self.hub.store.tx() as db:
            db.conn.execute("INSERT INTO video_sites VALUES (?, ?, ?) ON CONFLICT(site) DO UPDATE SET"
                            " org_path = excluded.org_path, updated_at = excluded.updated_at",
                            (site, org_path, iso(now())))
            # Open cases follow their site into the new org (closed ones keep the org they were handled in).
            db.conn.execute(f"UPDATE video_cases SET org = ? WHERE site = ? AND status IN ({','.join('?' * 4)})",
                            (org_path, site, *OPEN))
            record(db, actor=actor, action="video.site.set", target=f"video_site:{site}", org=org_path,
                   detail={"org_path": org_path})
        return {"site": site, "org_path": org_path}

    def site_org(self, site: str) -> str:
        return self.org_of_site(self.hub.store.db, site)

    def set_camera(self, site: str, device: str, camera: str, lat: float | None, lon: float | None,
                   neighbours: list[str], actor: str) -> dict[str, Any]:
        for v, name in ((site, "site"), (device, "device"), (camera, "camera")):
            if not topics.valid_id(v):
                raise VideoError(400, f"{name}: must match ^[A-Za-z0-9_-]{{1,64}}$")
        for n in neighbours:
            d, _, cam = n.partition("/")
            if not (topics.valid_id(d) and topics.valid_id(cam)):
                raise VideoError(400, f"neighbours: {n!r} must be 'device/camera'")
        with self.hub.store.tx() as db:
            db.conn.execute(
                "INSERT INTO video_cameras VALUES (?,?,?,?,?,?,?) ON CONFLICT(site, device, camera) DO UPDATE"
                " SET lat=excluded.lat, lon=excluded.lon, neighbours=excluded.neighbours,"
                " updated_at=excluded.updated_at",
                (site, device, camera, lat, lon, json.dumps(sorted(set(neighbours))), iso(now())),
            )
            record(db, actor=actor, action="video.camera.set", target=f"video_camera:{site}/{device}/{camera}",
                   org=self.org_of_site(db, site), detail={"lat": lat, "lon": lon, "neighbours": neighbours})
        return {"site": site, "device": device, "camera": camera, "lat": lat, "lon": lon,
                "neighbours": sorted(set(neighbours))}

    def add_route(self, org_prefix: str, kind: str, department: str, webhook_url: str | None,
                  webhook_secret: str | None, mqtt: bool, ack_sla_min: float, resolve_sla_min: float,
                  actor: str) -> dict[str, Any]:
        if not topics.valid_id(department):
            raise VideoError(400, "department: must match ^[A-Za-z0-9_-]{1,64}$ (it is an MQTT topic level)")
        if webhook_url and not webhook_secret:
            raise VideoError(400, "webhook_secret: required with webhook_url (alerts are HMAC-signed)")
        with self.hub.store.tx() as db:
            cur = db.conn.execute(
                "INSERT INTO video_routes (org_prefix, kind, department, webhook_url, webhook_secret, mqtt,"
                " ack_sla_min, resolve_sla_min, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (org_prefix, kind, department, webhook_url, webhook_secret, int(mqtt), ack_sla_min,
                 resolve_sla_min, iso(now())),
            )
            rid = int(cur.lastrowid or 0)
            record(db, actor=actor, action="video.route.add", target=f"video_route:{rid}", org=org_prefix,
                   detail={"kind": kind, "department": department, "webhook": bool(webhook_url)})
        return self.route(rid)

    def route(self, rid: int) -> dict[str, Any]:
        row = self.hub.store.db.conn.execute(
            "SELECT id, org_prefix, kind, department, webhook_url, mqtt, ack_sla_min, resolve_sla_min, created_at"
            " FROM video_routes WHERE id = ?", (rid,)).fetchone()
        if row is None:
            raise VideoError(404, f"route {rid} not found")
        keys = ("id", "org_prefix", "kind", "department", "webhook_url", "mqtt", "ack_sla_min",
                "resolve_sla_min", "created_at")
        d = dict(zip(keys, row, strict=True))
        d["mqtt"] = bool(d["mqtt"])
        return d

    def routes(self, scopes: list[str]) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.hub.store.db.conn.execute("SELECT id, org_prefix FROM video_routes ORDER BY id")
               if any(under(r[1], s) or under(s, r[1]) for s in scopes)]
        return [self.route(i) for i in ids]

    def delete_route(self, rid: int, actor: str) -> None:
        r = self.route(rid)
        with self.hub.store.tx() as db:
            db.conn.execute("DELETE FROM video_routes WHERE id = ?", (rid,))
            record(db, actor=actor, action="video.route.delete", target=f"video_route:{rid}", org=r["org_prefix"])

    def pick_route(self, db: sqlite_utils.Database, org: str, kind: str) -> tuple | None:
        """The most specific route: longest org prefix the case lies under, exact kind before '*'."""
        best = None
        for row in db.conn.execute("SELECT id, org_prefix, kind, department, webhook_url, webhook_secret, mqtt,"
                                   " ack_sla_min, resolve_sla_min FROM video_routes"):
            if not under(org, row[1]) or row[2] not in (kind, "*"):
                continue
            rank = (len(row[1].rstrip("/")), row[2] == kind, -row[0])
            if best is None or rank > best[0]:
                best = (rank, row)
        return best[1] if best else None

    # --- reads --------------------------------------------------------------------------------------
    CASE_COLS = ("id", "site", "device", "camera", "zone", "kind", "org", "status", "verdict", "reason", "score",
                 "peak_count", "first_ts", "last_ts", "live", "event_count", "cameras", "lat", "lon", "department",
                 "route_id", "due_at", "created_at", "updated_at", "reviewed_at", "dispatched_at",
                 "acknowledged_at", "resolved_at")

    def _case_dict(self, row: tuple, has_snap: bool) -> dict[str, Any]:
        d = dict(zip(self.CASE_COLS, row, strict=True))
        d["cameras"] = json.loads(d["cameras"])
        d["live"] = bool(d["live"])
        d["overdue"] = bool(d["due_at"] and d["status"] in OPEN and d["due_at"] < iso(now()))
        d["has_snapshot"] = has_snap
        d["snapshot_url"] = f"/api/v1/video/cases/{d['id']}/snapshot" if has_snap else None
        return d

    def case(self, case_id: int) -> dict[str, Any]:
        c = self.hub.store.db.conn
        row = c.execute(f"SELECT {', '.join(self.CASE_COLS)}, snapshot IS NOT NULL FROM video_cases WHERE id = ?",
                        (case_id,)).fetchone()
        if row is None:
            raise VideoError(404, f"case {case_id} not found")
        return self._case_dict(row[:-1], bool(row[-1]))

    def case_org(self, case_id: int) -> str | None:
        row = self.hub.store.db.conn.execute("SELECT org FROM video_cases WHERE id = ?", (case_id,)).fetchone()
        return row[0] if row else None

    def case_detail(self, case_id: int) -> dict[str, Any]:
        d = self.case(case_id)
        c = self.hub.store.db.conn
        d["events"] = [dict(zip(("event_id", "device", "camera", "incident_id", "phase", "ts", "score", "count"), r,
                                strict=True))
                       for r in c.execute("SELECT event_id, device, camera, incident_id, phase, ts, score, count"
                                          " FROM video_case_events WHERE case_id = ? ORDER BY ts", (case_id,))]
        d["history"] = [{"ts": r[0], "actor": r[1], "action": r[2], "detail": json.loads(r[3])}
                        for r in c.execute("SELECT ts, actor, action, detail FROM video_case_log WHERE case_id = ?"
                                           " ORDER BY id", (case_id,))]
        d["alerts"] = [dict(zip(("id", "channel", "target", "status", "attempts", "error", "sent_at"), r, strict=True))
                       for r in c.execute("SELECT id, channel, target, status, attempts, error, sent_at FROM"
                                          " video_alerts WHERE case_id = ? ORDER BY id", (case_id,))]
        return d

    def snapshot(self, case_id: int) -> bytes:
        row = self.hub.store.db.conn.execute("SELECT snapshot FROM video_cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            raise VideoError(404, f"case {case_id} not found")
        if row[0] is None:
            raise VideoError(404, f"case {case_id} has no snapshot")
        return bytes(row[0])

    def _scope_sql(self, scopes: list[str]) -> tuple[str, list[str]]:
        if not scopes:
            return "0", []
        parts, args = [], []
        for s in scopes:
            if s == "/":
                return "1", []
            parts.append("(org = ? OR org LIKE ?)")
            args += [s.rstrip("/"), s.rstrip("/") + "/%"]
        return "(" + " OR ".join(parts) + ")", args

    def list_cases(self, scopes: list[str], status: str | None = None, kind: str | None = None,
                   site: str | None = None, overdue: bool | None = None, since: datetime | None = None,
                   limit: int = 50, offset: int = 0) -> dict[str, Any]:
        where, args = self._scope_sql(scopes)
        cond: list[str] = [where]
        if status:
            if status not in STATUSES:
                raise VideoError(400, f"status: must be one of {', '.join(STATUSES)}")
            cond.append("status = ?")
            args.append(status)
        if kind:
            cond.append("kind = ?")
            args.append(kind)
        if site:
            cond.append("site = ?")
            args.append(site)
        if since:
            cond.append("last_ts >= ?")
            args.append(iso(since))
        if overdue is not None:
            t = iso(now())
            q = f"(due_at IS NOT NULL AND due_at < ? AND status IN ({','.join('?' * len(OPEN))}))"
            cond.append(q if overdue else f"NOT {q}")
            args += [t, *OPEN]
        sql_where = " AND ".join(cond)
        c = self.hub.store.db.conn
        total = c.execute(f"SELECT count(*) FROM video_cases WHERE {sql_where}", args).fetchone()[0]
        rows = c.execute(f"SELECT {', '.join(self.CASE_COLS)}, snapshot IS NOT NULL FROM video_cases WHERE"
                         f" {sql_where} ORDER BY last_ts DESC, id DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return {"total": total, "items": [self._case_dict(r[:-1], bool(r[-1])) for r in rows]}

    def stats(self, scopes: list[str], since: datetime | None = None, until: datetime | None = None
              ) -> dict[str, Any]:
        where, args = self._scope_sql(scopes)
        if since:
            where += " AND first_ts >= ?"
            args.append(iso(since))
        if until:
            where += " AND first_ts < ?"
            args.append(iso(until))
        c = self.hub.store.db.conn

        def group(expr: str) -> dict[str, int]:
            return {str(k): n for k, n in c.execute(
                f"SELECT {expr} AS k, count(*) FROM video_cases WHERE {where} GROUP BY k ORDER BY k", args)}

        return {
            "total": c.execute(f"SELECT count(*) FROM video_cases WHERE {where}", args).fetchone()[0],
            "by_kind": group("kind"),
            "by_area": group("org"),
            "by_status": group("status"),
            "by_hour": group("substr(first_ts, 1, 13)"),  # UTC hour buckets "YYYY-MM-DDTHH"
            "by_hour_of_day": group("CAST(substr(first_ts, 12, 2) AS INTEGER)"),
            "false_positive_rate": self._fp_rate(where, args),
        }

    def _fp_rate(self, where: str, args: list[str]) -> float | None:
        row = self.hub.store.db.conn.execute(
            f"SELECT sum(verdict = 'false_positive'), sum(verdict IS NOT NULL) FROM video_cases WHERE {where}",
            args).fetchone()
        return round(row[0] / row[1], 4) if row[1] else None

    def heatmap(self, scopes: list[str], cell_deg: float = 0.01, kind: str | None = None,
                since: datetime | None = None) -> dict[str, Any]:
        if not 0.0001 <= cell_deg <= 10:
            raise VideoError(400, "cell_deg: must be between 0.0001 and 10")
        where, args = self._scope_sql(scopes)
        if kind:
            where += " AND kind = ?"
            args.append(kind)
        if since:
            where += " AND first_ts >= ?"
            args.append(iso(since))
        cells: dict[tuple[int, int], int] = {}
        for lat, lon in self.hub.store.db.conn.execute(
                f"SELECT lat, lon FROM video_cases WHERE {where} AND lat IS NOT NULL AND lon IS NOT NULL", args):
            key = (int(lat // cell_deg), int(lon // cell_deg))
            cells[key] = cells.get(key, 0) + 1
        return {"cell_deg": cell_deg, "cells": [
            {"cell": f"{r}:{c}", "lat": round((r + 0.5) * cell_deg, 6), "lon": round((c + 0.5) * cell_deg, 6),
             "count": n} for (r, c), n in sorted(cells.items(), key=lambda kv: -kv[1])]}

    def feedback(self, scopes: list[str]) -> list[dict[str, Any]]:
        keys = ("site", "device", "camera", "kind", "zone", "confirmed", "false_positive", "reasons", "updated_at")
        out = []
        for r in self.hub.store.db.conn.execute(f"SELECT {', '.join(keys)} FROM video_feedback ORDER BY site, device,"
                                                " camera, kind, zone"):
            d = dict(zip(keys, r, strict=True))
            if any(under(self.site_org(d["site"]), s) for s in scopes):
                d["reasons"] = json.loads(d["reasons"])
                total = d["confirmed"] + d["false_positive"]
                d["precision"] = round(d["confirmed"] / total, 4) if total else None
                out.append(d)
        return out

    # --- workflow -----------------------------------------------------------------------------------
    def _log(self, db: sqlite_utils.Database, case_id: int, actor: str, action: str, detail: dict[str, Any]) -> None:
        db.conn.execute("INSERT INTO video_case_log (case_id, ts, actor, action, detail) VALUES (?,?,?,?,?)",
                        (case_id, iso(now()), actor, action, json.dumps(detail)))

    def _transition(self, case_id: int, actor: str, allowed_from: tuple[str, ...], action: str,
                    fn: Any) -> dict[str, Any]:
        with self.hub.store.tx() as db:
            row = db.conn.execute("SELECT status, org FROM video_cases WHERE id = ?", (case_id,)).fetchone()
            if row is None:
                raise VideoError(404, f"case {case_id} not found")
            status, org = row
            if status not in allowed_from:
                raise VideoError(409, f"status: case {case_id} is '{status}'; {action} needs one of "
                                      f"{', '.join(allowed_from)}")
            detail = fn(db, org)
            self._log(db, case_id, actor, action, detail)
            record(db, actor=actor, action=action, target=f"video_case:{case_id}", org=org, detail=detail)
        return self.case(case_id)

    def review(self, case_id: int, verdict: str, reason: str, actor: str) -> dict[str, Any]:
        if verdict not in ("confirmed", "false_positive"):
            raise VideoError(400, "verdict: must be 'confirmed' or 'false_positive'")
        if verdict == "false_positive" and not reason.strip():
            raise VideoError(400, "reason: required for a false positive (it is kept as detector feedback)")

        def fn(db: sqlite_utils.Database, org: str) -> dict[str, Any]:
            t = iso(now())
            status = "reviewed" if verdict == "confirmed" else "dismissed"
            db.conn.execute("UPDATE video_cases SET status=?, verdict=?, reason=?, reviewed_at=?, updated_at=?,"
                            " due_at=NULL WHERE id=?", (status, verdict, reason, t, t, case_id))
            site, device, camera, kind, zone = db.conn.execute(
                "SELECT site, device, coalesce(camera, '-'), kind, coalesce(zone, '-') FROM video_cases WHERE id=?",
                (case_id,)).fetchone()
            # Feedback per camera + rule (kind, zone): precision figures for tuning thresholds on that camera.
            prev = db.conn.execute("SELECT reasons FROM video_feedback WHERE site=? AND device=? AND camera=? AND"
                                   " kind=? AND zone=?", (site, device, camera, kind, zone)).fetchone()
            reasons = json.loads(prev[0]) if prev else []
            if verdict == "false_positive":
                reasons = [*reasons, {"case_id": case_id, "reason": reason, "ts": t}][-20:]
            db.conn.execute(
                "INSERT INTO video_feedback VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(site, device, camera, kind, zone)"
                " DO UPDATE SET confirmed = confirmed + excluded.confirmed,"
                " false_positive = false_positive + excluded.false_positive, reasons = excluded.reasons,"
                " updated_at = excluded.updated_at",
                (site, device, camera, kind, zone, int(verdict == "confirmed"), int(verdict == "false_positive"),
                 json.dumps(reasons), t))
            return {"verdict": verdict, "reason": reason}

        return self._transition(case_id, actor, ("new",), "video.case.review", fn)

    def dispatch(self, case_id: int, actor: str, department: str | None = None) -> dict[str, Any]:
        alerts: list[tuple[int, str, str, bytes, str | None]] = []

        def fn(db: sqlite_utils.Database, org: str) -> dict[str, Any]:
            kind = db.conn.execute("SELECT kind FROM video_cases WHERE id=?", (case_id,)).fetchone()[0]
            route = self.pick_route(db, org, kind)
            dept = department or (route[3] if route else None)
            if dept is None:
                raise VideoError(409, f"department: no routing rule matches org {org} and kind {kind}; name one")
            if not topics.valid_id(dept):
                raise VideoError(400, "department: must match ^[A-Za-z0-9_-]{1,64}$")
            if route is not None and route[3] != dept:
                route = None  # an explicit department other than the routed one: default SLA, MQTT only
            ack_min = route[7] if route else DEFAULT_ACK_SLA_MIN
            t = now()
            db.conn.execute("UPDATE video_cases SET status='dispatched', department=?, route_id=?, dispatched_at=?,"
                            " due_at=?, updated_at=? WHERE id=?",
                            (dept, route[0] if route else None, iso(t), iso(t + timedelta(minutes=ack_min)), iso(t),
                             case_id))
            body = self._alert_body(db, case_id, dept)
            if route is None or route[6]:
                alerts.append(self._queue_alert(db, case_id, "mqtt", f"{ALERT_TOPIC}/{dept}", body, None))
            if route is not None and route[4]:
                alerts.append(self._queue_alert(db, case_id, "webhook", route[4], body, route[5]))
            return {"department": dept, "route_id": route[0] if route else None,
                    "channels": [a[1] for a in alerts]}

        out = self._transition(case_id, actor, ("reviewed",), "video.case.dispatch", fn)
        self._send_async(alerts)  # after commit: network I/O never holds the write lock
        return out

    def acknowledge(self, case_id: int, actor: str) -> dict[str, Any]:
        def fn(db: sqlite_utils.Database, org: str) -> dict[str, Any]:
            rid = db.conn.execute("SELECT route_id FROM video_cases WHERE id=?", (case_id,)).fetchone()[0]
            row = db.conn.execute("SELECT resolve_sla_min FROM video_routes WHERE id=?", (rid,)).fetchone() if rid \
                else None
            t = now()
            due = t + timedelta(minutes=row[0] if row else DEFAULT_RESOLVE_SLA_MIN)
            db.conn.execute("UPDATE video_cases SET status='acknowledged', acknowledged_at=?, due_at=?, updated_at=?"
                            " WHERE id=?", (iso(t), iso(due), iso(t), case_id))
            return {"resolve_due": iso(due)}

        return self._transition(case_id, actor, ("dispatched",), "video.case.acknowledge", fn)

    def resolve(self, case_id: int, actor: str, note: str) -> dict[str, Any]:
        def fn(db: sqlite_utils.Database, org: str) -> dict[str, Any]:
            t = iso(now())
            db.conn.execute("UPDATE video_cases SET status='resolved', resolved_at=?, due_at=NULL, updated_at=?"
                            " WHERE id=?", (t, t, case_id))
            return {"note": note}

        return self._transition(case_id, actor, ("acknowledged",), "video.case.resolve", fn)

    # --- alert push -----------------------------------------------------------------------------------
    def _alert_body(self, db: sqlite_utils.Database, case_id: int, dept: str) -> bytes:
        keys = ("id", "site", "device", "camera", "zone", "kind", "org", "score", "peak_count", "first_ts",
                "last_ts", "lat", "lon", "due_at")
        row = db.conn.execute(f"SELECT {', '.join(keys)} FROM video_cases WHERE id=?", (case_id,)).fetchone()
        case = dict(zip(keys, row, strict=True))
        base = self.hub.settings.public_url.rstrip("/")
        return json.dumps({"type": "video.case.dispatched", "department": dept, "case": case,
                           "snapshot_url": f"{base}/api/v1/video/cases/{case_id}/snapshot"},
                          sort_keys=True, separators=(",", ":")).encode()

    def _queue_alert(self, db: sqlite_utils.Database, case_id: int, channel: str, target: str, body: bytes,
                     secret: str | None) -> tuple[int, str, str, bytes, str | None]:
        cur = db.conn.execute("INSERT INTO video_alerts (case_id, channel, target, status, created_at) VALUES"
                              " (?,?,?, 'pending', ?)", (case_id, channel, target, iso(now())))
        return (int(cur.lastrowid or 0), channel, target, body, secret)

    def _send_async(self, alerts: list[tuple[int, str, str, bytes, str | None]]) -> None:
        for a in alerts:
            self._alerts.put(a)
        self.alert_sender.kick()

    def _send_queued(self) -> bool:
        batch: list[tuple[int, str, str, bytes, str | None]] = []
        with self._alerts_cv:
            while True:
                try:
                    batch.append(self._alerts.get_nowait())
                except queue.Empty:
                    break
            self._alerts_busy += len(batch)
        try:
            if batch:
                self._send_all(batch)
        finally:
            with self._alerts_cv:
                self._alerts_busy -= len(batch)
                self._alerts_cv.notify_all()
        return bool(batch)

    def wait_alerts(self, timeout: float = 10.0) -> None:
        """Wait for queued alert deliveries (tests, graceful shutdown); sends them here when the hub is
        not running, so nothing queued is left behind."""
        if not self.alert_sender.alive:
            while self._send_queued():
                pass
            return
        deadline = time.monotonic() + timeout
        with self._alerts_cv:
            while (self._alerts_busy or not self._alerts.empty()) and time.monotonic() < deadline:
                self._alerts_cv.wait(0.05)

    def _send_all(self, alerts: list[tuple[int, str, str, bytes, str | None]]) -> None:
        for alert_id, channel, target, body, secret in alerts:
            err, attempts = None, 0
            for attempts in range(1, 4):
                try:
                    if channel == "mqtt":
                        self.hub.publish(target, body, qos=1)
                    else:
                        send_webhook(target, body, secret or "")
                    err = None
                    break
                except Exception as e:  # network errors of any kind: retry, then record
                    err = f"{type(e).__name__}: {e}"
                    time.sleep(0.5 * attempts)
            with self.hub.store.tx() as db:
                db.conn.execute("UPDATE video_alerts SET status=?, attempts=?, error=?, sent_at=? WHERE id=?",
                                ("failed" if err else "sent", attempts, err, None if err else iso(now()), alert_id))


def sign(body: bytes, secret: str, ts: str) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>" (the timestamp is signed too, so a capture can't be replayed
    later with a fresh header)."""
    return "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()


def send_webhook(url: str, body: bytes, secret: str, timeout: float = 5.0) -> None:
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-CityBrain-Event": "video.case.dispatched",
               "X-CityBrain-Timestamp": ts, "X-CityBrain-Signature": sign(body, secret, ts)}
    r = httpx.post(url, content=body, headers=headers, timeout=timeout)
    r.raise_for_status()


def _snapshot_bytes(b64: str | None) -> bytes | None:
    if not b64:
        return None
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data[:2] == b"\xff\xd8" else None  # only JPEGs are served back as image/jpeg


def setup(hub: Hub) -> None:
    svc = VideoService(hub)
    hub.services["video"] = svc
    hub.add_worker(svc.alert_sender)
    if hub.settings.inline_consumers:
        hub.add_worker(svc.correlator)  # its first pass catches up on events stored before a crash
        hub.hooks.on("events.ingested", svc.on_events)


def service_of(hub: Hub) -> VideoService:
    svc = hub.services.get("video")
    if svc is None:
        setup(hub)
        svc = hub.services["video"]
    return svc
