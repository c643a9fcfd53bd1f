"""Video rules: correlate edge events into cases, the disposal workflow with SLA, routing, alert push,
statistics and heat map. No HTTP types here; routes translate VideoError into 4xx.

Correlation (one incident -> one case): an event joins the case that already holds its (site, device,
incident_id); otherwise an open case of the same kind on the same site whose camera is the same or an
adjacent one (video_cameras.neighbours, either direction) and whose last event is within
`window_s`; otherwise it opens a new case. Events of kind `test` (what `edge ... --test-event` sends to prove
the path from a device to the store) are stored like any other but never open a case.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from central.bridge import store as bridge_store
from central.hub import Hub, LoopWorker
from central.iam.audit import record
from central.media import MediaError, jpeg_b64, media_of
from central.metrics import Sample
from central.problems import HubError
from central.store import Db, dialect
from central.video import store
from central.webhooks import service as webhooks
from protocol import topics
from protocol.messages import Event

TEST_KIND = "test"
log = logging.getLogger("citybrain.video")

DEFAULT_ORG = "/city"
STATUSES = ("new", "reviewed", "dispatched", "acknowledged", "resolved", "dismissed")
OPEN = ("new", "reviewed", "dispatched", "acknowledged")
REVIEW_SLA_MIN = 30.0  # a new case should be looked at within this
DEFAULT_ACK_SLA_MIN = 15.0
DEFAULT_RESOLVE_SLA_MIN = 240.0
ALERT_TOPIC = f"{topics.ROOT}/alerts/video"  # + "/{department}"


class VideoError(HubError):
    """status: 400 bad input, 404 unknown, 409 wrong workflow state, 410 a media file gone or damaged."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail, status=status)
        self.detail = detail


def now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


# Events correlated between two looks at `stopping`: 1,000 in one go took over the hub's 10 s stop timeout
# on a loaded machine with PostgreSQL.
CHUNK = 100
# A correlating transaction holds the cursor row; a hub stalled this long inside it loses it (see process_pending).
CORRELATE_IDLE_S = 30.0
ALERT_BATCH = 50  # MQTT alerts claimed per pass
ALERT_TRIES = 3
ALERT_ACK_S = 5.0  # how long one alert waits for the broker's PUBACK before it counts as a failed try


class VideoService:
    def __init__(self, hub: Hub, window_s: float = 600.0) -> None:
        self.hub = hub
        self.window_s = window_s
        self._process_lock = threading.Lock()
        # Hub-owned workers (registered by setup(), run by Hub.start()): the correlator over the stored
        # events, and the MQTT alert sender over leased `video_alerts` rows, so a dispatch never waits for
        # the broker and an alert outlives the process that decided it (webhook alerts are deliveries in
        # the hub's outbox, central/webhooks). Any number of hub processes run both.
        self.correlator = LoopWorker("video-correlator",
                                     lambda: self.process_pending(stopping=lambda: self.correlator.stopping) > 0,
                                     interval_s=0.5)
        # Names this process's alert claims: a lease is honoured only for the sender that took it.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.alert_sender = LoopWorker("video-alerts", lambda: self.send_due_alerts() > 0, interval_s=0.5)

    # --- ingest: a correlator thread consumes the bridge's `events` table from a durable cursor --------
    def on_events(self, db: Db, events: list[tuple[str, str, Event]]) -> None:
        """Hook `events.ingested` (inside the bridge's transaction): only wake the correlator, so the
        bridge's ingest rate does not depend on correlation cost."""
        self.kick()

    def kick(self) -> None:
        """Wake the correlator (it runs only while the hub is started; a stopped hub's events wait)."""
        self.correlator.kick()

    def process_pending(self, limit: int = 1000, stopping: Callable[[], bool] = lambda: False) -> int:
        """Correlate up to `limit` stored events past the cursor, cursor move in the same transaction. The
        cursor row is claimed: a second correlator (another process) finds it taken and does nothing.
        The row lock is this pass's lease: a correlator that dies ends its transaction (nothing of the pass
        stays, the next correlator redoes it), and one that stalls inside it for CORRELATE_IDLE_S has it
        ended by PostgreSQL. `stopping` is asked between chunks of CHUNK events: a stopping hub commits what
        is done and goes."""
        with self._process_lock, self.hub.store.tx() as db:
            dialect.expire_if_idle(db, CORRELATE_IDLE_S)
            last = store.claim_cursor(db)
            if last is None:
                return 0
            rows = bridge_store.events_after(db, last, limit)
            if not rows:
                return 0
            done = 0
            while done < len(rows):
                chunk = rows[done:done + CHUNK]
                batch = []
                snaps: dict[str, tuple[str, str]] = {}
                for r in chunk:
                    try:
                        ev = Event.model_validate_json(r["payload"])
                    except ValueError:
                        log.warning("video: stored event of %s/%s does not parse; skipped", r["site"], r["device"])
                        continue
                    if r["snapshot_key"] is not None:  # the case shares the event's file: no copy of the bytes
                        snaps[ev.event_id] = (r["snapshot_key"], r["snapshot_sha256"])
                    elif r["snapshot"] is not None:  # a BLOB of a database from before revision 0002
                        ev.snapshot_jpeg_b64 = base64.b64encode(bytes(r["snapshot"])).decode()
                    batch.append((r["site"], r["device"], ev))
                self.correlate(db, batch, snaps)
                done += len(chunk)
                if stopping():
                    break
            store.move_cursor(db, int(rows[done - 1]["seq"]))
            return done

    def correlate(self, db: Db, events: list[tuple[str, str, Event]],
                  snapshots: dict[str, tuple[str, str]] | None = None) -> None:
        """`snapshots`: event_id -> (media key, SHA-256) of the stored event's snapshot file."""
        snapshots = snapshots or {}
        for site, device, ev in sorted(events, key=lambda x: x[2].ts):
            # A savepoint per event: one bad event must not roll back the whole batch.
            try:
                with store.savepoint(db):
                    self.ingest(db, site, device, ev, snapshots.get(ev.event_id))
            except Exception:
                log.exception("video: event %s from %s/%s not correlated", ev.event_id, site, device)

    def ingest(self, db: Db, site: str, device: str, ev: Event, snap: tuple[str, str] | None = None) -> int | None:
        """Correlate one event. `snap` is its snapshot file (key, SHA-256); without one, a JPEG carried in
        the event itself is written to the media store here."""
        if store.is_correlated(db, ev.event_id):
            return None  # already correlated (idempotent)
        if ev.kind == TEST_KIND:
            return None  # a device's path check (`edge ... --test-event`): stored and receipted, never a case
        ts = iso(ev.ts)
        case_id = self._find_case(db, site, device, ev)
        if snap is None and (data := jpeg_b64(ev.snapshot_jpeg_b64)) is not None:
            ref = media_of(self.hub).put("snapshots", data, "jpg", ev.ts)
            snap = (ref.key, ref.sha256)
        cam_key = f"{device}/{ev.camera or '-'}"
        t = iso(now())
        if case_id is None:
            org = self.org_of_site(db, site)
            lat, lon = ev.lat, ev.lon
            if lat is None or lon is None:
                lat, lon = store.camera_position(db, site, device, ev.camera or "") or (None, None)
            case_id = store.insert_case(db, {
                "site": site, "device": device, "camera": ev.camera, "zone": ev.zone, "kind": ev.kind, "org": org,
                "status": "new", "score": ev.score, "peak_count": ev.count, "first_ts": ts, "last_ts": ts,
                "live": 0 if ev.phase in ("end", "instant") else 1, "event_count": 0,
                "cameras": json.dumps([cam_key]), "lat": lat, "lon": lon,
                "snapshot_key": snap[0] if snap else None, "snapshot_sha256": snap[1] if snap else None,
                "due_at": iso(now() + timedelta(minutes=REVIEW_SLA_MIN)), "created_at": t, "updated_at": t,
            })
            self._log(db, case_id, "system:bridge", "video.case.create",
                      {"event_id": ev.event_id, "kind": ev.kind, "camera": cam_key})
            record(db, actor="system:bridge", action="video.case.create", target=f"video_case:{case_id}", org=org,
                   detail={"site": site, "device": device, "camera": ev.camera, "kind": ev.kind})
        else:
            cams = json.loads(store.case_cameras(db, case_id) or "[]")
            if cam_key not in cams:
                cams.append(cam_key)
            live = 0 if ev.phase == "end" else 1 if ev.phase in ("start", "update") else None
            store.add_event_to_case(db, case_id, ts, ev.score, ev.count, json.dumps(cams), live, snap, t)
        store.count_case_event(db, case_id)
        store.insert_case_event(db, {
            "event_id": ev.event_id, "case_id": case_id, "site": site, "device": device,
            "incident_id": ev.incident_id, "camera": ev.camera, "phase": ev.phase, "ts": ts, "score": ev.score,
            "count": ev.count,
        })
        return case_id

    def _find_case(self, db: Db, site: str, device: str, ev: Event) -> int | None:
        if ev.incident_id:
            cid = store.case_of_incident(db, site, device, ev.incident_id)
            if cid is not None:
                return cid
        cam_key = f"{device}/{ev.camera or '-'}"
        near = self.neighbours(db, site, cam_key) | {cam_key}
        since = iso(ev.ts - timedelta(seconds=self.window_s))
        for case_id, cams in store.open_cases_since(db, site, ev.kind, OPEN, since):
            if near & set(json.loads(cams)):
                return case_id
        return None

    def neighbours(self, db: Db, site: str, cam_key: str) -> set[str]:
        out: set[str] = set()
        for d, cam, nb in store.site_cameras(db, site):
            key = f"{d}/{cam}"
            nbs = set(json.loads(nb))
            if key == cam_key:
                out |= nbs
            elif cam_key in nbs:
                out.add(key)
        return out

    def org_of_site(self, db: Db, site: str) -> str:
        return store.site_org(db, site) or DEFAULT_ORG

    # --- configuration -------------------------------------------------------------------------------
    def set_site(self, site: str, org_path: str, actor: str) -> dict[str, str]:
        if not topics.valid_id(site):
            raise VideoError(400, "site: must match ^[A-Za-z0-9_-]{1,64}$")
        with self.hub.store.tx() as db:
            store.set_site(db, site, org_path, iso(now()), OPEN)
            record(db, actor=actor, action="video.site.set", target=f"video_site:{site}", org=org_path,
                   detail={"org_path": org_path})
        return {"site": site, "org_path": org_path}

    def site_org(self, site: str) -> str:
        with self.hub.store.read() as db:
            return self.org_of_site(db, site)

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
            store.set_camera(db, site, device, camera, lat, lon, json.dumps(sorted(set(neighbours))), iso(now()))
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
            rid = store.insert_route(db, {
                "org_prefix": org_prefix, "kind": kind, "department": department, "webhook_url": webhook_url,
                "webhook_secret": webhook_secret, "mqtt": int(mqtt), "ack_sla_min": ack_sla_min,
                "resolve_sla_min": resolve_sla_min, "created_at": iso(now()),
            })
            record(db, actor=actor, action="video.route.add", target=f"video_route:{rid}", org=org_prefix,
                   detail={"kind": kind, "department": department, "webhook": bool(webhook_url)})
        return self.route(rid)

    @staticmethod
    def _route_view(r: dict[str, Any]) -> dict[str, Any]:
        d = {k: r[k] for k in ("id", "org_prefix", "kind", "department", "webhook_url", "mqtt", "ack_sla_min",
                               "resolve_sla_min", "created_at")}  # never the webhook secret
        d["mqtt"] = bool(d["mqtt"])
        return d

    def route(self, rid: int) -> dict[str, Any]:
        with self.hub.store.read() as db:
            r = store.get_route(db, rid)
        if r is None:
            raise VideoError(404, f"route {rid} not found")
        return self._route_view(r)

    def routes(self, scopes: list[str]) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            rows = store.all_routes(db)
        return [self._route_view(r) for r in rows if any(under(r["org_prefix"], s) or under(s, r["org_prefix"])
                                                          for s in scopes)]

    def delete_route(self, rid: int, actor: str) -> None:
        r = self.route(rid)
        with self.hub.store.tx() as db:
            store.delete_route(db, rid)
            record(db, actor=actor, action="video.route.delete", target=f"video_route:{rid}", org=r["org_prefix"])

    def pick_route(self, db: Db, org: str, kind: str) -> dict[str, Any] | None:
        """The most specific route: longest org prefix the case lies under, exact kind before '*'."""
        best = None
        for row in store.all_routes(db):
            if not under(org, row["org_prefix"]) or row["kind"] not in (kind, "*"):
                continue
            rank = (len(row["org_prefix"].rstrip("/")), row["kind"] == kind, -row["id"])
            if best is None or rank > best[0]:
                best = (rank, row)
        return best[1] if best else None

    # --- reads --------------------------------------------------------------------------------------
    CASE_COLS = store.CASE_COLS

    def _case_dict(self, row: dict[str, Any]) -> dict[str, Any]:
        has_snap = bool(row.pop("has_snapshot"))
        d = row
        d["cameras"] = json.loads(d["cameras"])
        d["live"] = bool(d["live"])
        d["overdue"] = bool(d["due_at"] and d["status"] in OPEN and d["due_at"] < iso(now()))
        d["has_snapshot"] = has_snap
        d["snapshot_url"] = f"/api/v1/video/cases/{d['id']}/snapshot" if has_snap else None
        return d

    def case(self, case_id: int) -> dict[str, Any]:
        with self.hub.store.read() as db:
            row = store.get_case(db, case_id)
        if row is None:
            raise VideoError(404, f"case {case_id} not found")
        return self._case_dict(row)

    def case_org(self, case_id: int) -> str | None:
        with self.hub.store.read() as db:
            return store.case_org(db, case_id)

    def case_detail(self, case_id: int) -> dict[str, Any]:
        d = self.case(case_id)
        with self.hub.store.read() as db:
            d["events"] = store.events_of_case(db, case_id)
            d["history"] = [{**r, "detail": json.loads(r["detail"])} for r in store.log_of_case(db, case_id)]
            d["alerts"] = store.alerts_of_case(db, case_id) + [
                {"id": w["id"], "channel": "webhook", "target": w["url"], "status": _ALERT_STATUS[w["status"]],
                 "attempts": w["attempts"], "error": w["last_error"], "sent_at": w["delivered_at"],
                 "msg_id": w["msg_id"], "delivery_id": w["id"]}
                for w in reversed(webhooks.deliveries_of(db, f"video.case:{case_id}"))]
        return d

    def snapshot(self, case_id: int) -> bytes:
        """The case's JPEG, from the media store (checksum checked); a file gone or changed on disk is a
        410 naming the case, never a 500 and never other bytes."""
        with self.hub.store.read() as db:
            r = store.case_snapshot(db, case_id)
        if r is None:
            raise VideoError(404, f"case {case_id} not found")
        if r["snapshot_key"] is not None:
            try:
                return media_of(self.hub).get(r["snapshot_key"], r["snapshot_sha256"])
            except MediaError as e:
                log.error("video: snapshot of case %d: %s", case_id, e)
                raise VideoError(410, f"case {case_id}: its snapshot file is missing or damaged") from None
        if r["snapshot"] is not None:  # not moved into a file yet (database from before revision 0002)
            return bytes(r["snapshot"])
        raise VideoError(404, f"case {case_id} has no snapshot")

    def list_cases(self, scopes: list[str], status: str | None = None, kind: str | None = None,
                   site: str | None = None, overdue: bool | None = None, since: datetime | None = None,
                   limit: int = 50, offset: int = 0) -> dict[str, Any]:
        if status and status not in STATUSES:
            raise VideoError(400, f"status: must be one of {', '.join(STATUSES)}")
        where = store.case_filter(scopes, status=status, kind=kind, site=site,
                                  last_since=iso(since) if since else None, overdue=overdue,
                                  overdue_at=iso(now()), open_statuses=OPEN)
        with self.hub.store.read() as db:
            total, rows = store.list_cases(db, where, limit, offset)
        return {"total": total, "items": [self._case_dict(r) for r in rows]}

    def stats(self, scopes: list[str], since: datetime | None = None, until: datetime | None = None
              ) -> dict[str, Any]:
        where = store.case_filter(scopes, first_since=iso(since) if since else None,
                                  first_until=iso(until) if until else None)
        with self.hub.store.read() as db:
            return store.case_stats(db, where)

    def heatmap(self, scopes: list[str], cell_deg: float = 0.01, kind: str | None = None,
                since: datetime | None = None) -> dict[str, Any]:
        if not 0.0001 <= cell_deg <= 10:
            raise VideoError(400, "cell_deg: must be between 0.0001 and 10")
        where = store.case_filter(scopes, kind=kind, first_since=iso(since) if since else None)
        cells: dict[tuple[int, int], int] = {}
        with self.hub.store.read() as db:
            positions = store.case_positions(db, where)
        for lat, lon in positions:
            key = (int(lat // cell_deg), int(lon // cell_deg))
            cells[key] = cells.get(key, 0) + 1
        return {"cell_deg": cell_deg, "cells": [
            {"cell": f"{r}:{c}", "lat": round((r + 0.5) * cell_deg, 6), "lon": round((c + 0.5) * cell_deg, 6),
             "count": n} for (r, c), n in sorted(cells.items(), key=lambda kv: -kv[1])]}

    def feedback(self, scopes: list[str]) -> list[dict[str, Any]]:
        out = []
        with self.hub.store.read() as db:
            rows = store.all_feedback(db)
        for d in rows:
            if any(under(self.site_org(d["site"]), s) for s in scopes):
                d["reasons"] = json.loads(d["reasons"])
                total = d["confirmed"] + d["false_positive"]
                d["precision"] = round(d["confirmed"] / total, 4) if total else None
                out.append(d)
        return out

    # --- workflow -----------------------------------------------------------------------------------
    def _log(self, db: Db, case_id: int, actor: str, action: str, detail: dict[str, Any]) -> None:
        t = iso(now())
        store.log_case(db, case_id, t, actor, action, json.dumps(detail))
        # Every log entry is a change of the case: the feed line (docs/FEEDS.md) commits with it.
        case = store.case_for_feed(db, case_id) or {}
        data = {"case_id": case_id, "action": action, "actor": actor, **case, "detail": detail}
        data.pop("org", None)
        store.append_feed(db, [{"at": t, "type": action.removeprefix("video."), "org": case.get("org"),
                                "data": json.dumps(data, ensure_ascii=False, default=str)}])

    def _transition(self, case_id: int, actor: str, allowed_from: tuple[str, ...], action: str,
                    fn: Any) -> dict[str, Any]:
        with self.hub.store.tx() as db:
            row = store.case_field(db, case_id, "status", "org")
            if row is None:
                raise VideoError(404, f"case {case_id} not found")
            status, org = row["status"], row["org"]
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

        def fn(db: Db, org: str) -> dict[str, Any]:
            t = iso(now())
            status = "reviewed" if verdict == "confirmed" else "dismissed"
            store.update_case(db, case_id, status=status, verdict=verdict, reason=reason, reviewed_at=t,
                              updated_at=t, due_at=None)
            c = store.case_field(db, case_id, "site", "device", "camera", "kind", "zone")
            assert c is not None  # the transition found it in this transaction
            site, device, kind = c["site"], c["device"], c["kind"]
            camera, zone = c["camera"] or "-", c["zone"] or "-"
            # Feedback per camera + rule (kind, zone): precision figures for tuning thresholds on that camera.
            prev = store.feedback_reasons(db, site, device, camera, kind, zone)
            reasons = json.loads(prev) if prev else []
            if verdict == "false_positive":
                reasons = [*reasons, {"case_id": case_id, "reason": reason, "ts": t}][-20:]
            store.add_feedback(db, site, device, camera, kind, zone, int(verdict == "confirmed"),
                               int(verdict == "false_positive"), json.dumps(reasons), t)
            return {"verdict": verdict, "reason": reason}

        return self._transition(case_id, actor, ("new",), "video.case.review", fn)

    def dispatch(self, case_id: int, actor: str, department: str | None = None) -> dict[str, Any]:
        def fn(db: Db, org: str) -> dict[str, Any]:
            kind = (store.case_field(db, case_id, "kind") or {})["kind"]
            route = self.pick_route(db, org, kind)
            dept = department or (route["department"] if route else None)
            if dept is None:
                raise VideoError(409, f"department: no routing rule matches org {org} and kind {kind}; name one")
            if not topics.valid_id(dept):
                raise VideoError(400, "department: must match ^[A-Za-z0-9_-]{1,64}$")
            if route is not None and route["department"] != dept:
                route = None  # an explicit department other than the routed one: default SLA, MQTT only
            ack_min = route["ack_sla_min"] if route else DEFAULT_ACK_SLA_MIN
            t = now()
            store.update_case(db, case_id, status="dispatched", department=dept,
                              route_id=route["id"] if route else None, dispatched_at=iso(t),
                              due_at=iso(t + timedelta(minutes=ack_min)), updated_at=iso(t))
            body = self._alert_body(db, case_id, dept)
            channels = []
            if route is None or route["mqtt"]:
                # Committed with the dispatch and sent by whichever hub's alert sender claims it first.
                store.insert_alert(db, case_id, "mqtt", f"{ALERT_TOPIC}/{dept}", body.decode(), iso(t), time.time())
                channels.append("mqtt")
            if route is not None and route["webhook_url"]:
                # A durable delivery in the hub's outbox, committed with the dispatch: an alert is sent
                # (again) after a restart, never lost with this process's memory.
                webhooks.enqueue(db, "video.case.dispatched", json.loads(body), webhooks.Target(
                    f"video.route:{route['id']}", route["org_prefix"], route["webhook_url"],
                    route["webhook_secret"] or ""), ref=f"video.case:{case_id}")
                channels.append("webhook")
            return {"department": dept, "route_id": route["id"] if route else None, "channels": channels}

        out = self._transition(case_id, actor, ("reviewed",), "video.case.dispatch", fn)
        self.alert_sender.kick()  # after commit: network I/O never holds the write lock
        webhooks.kick(self.hub)
        return out

    def acknowledge(self, case_id: int, actor: str) -> dict[str, Any]:
        def fn(db: Db, org: str) -> dict[str, Any]:
            rid = (store.case_field(db, case_id, "route_id") or {}).get("route_id")
            route = store.get_route(db, rid) if rid else None
            t = now()
            due = t + timedelta(minutes=route["resolve_sla_min"] if route else DEFAULT_RESOLVE_SLA_MIN)
            store.update_case(db, case_id, status="acknowledged", acknowledged_at=iso(t), due_at=iso(due),
                              updated_at=iso(t))
            return {"resolve_due": iso(due)}

        return self._transition(case_id, actor, ("dispatched",), "video.case.acknowledge", fn)

    def resolve(self, case_id: int, actor: str, note: str) -> dict[str, Any]:
        def fn(db: Db, org: str) -> dict[str, Any]:
            t = iso(now())
            store.update_case(db, case_id, status="resolved", resolved_at=t, due_at=None, updated_at=t)
            return {"note": note}

        return self._transition(case_id, actor, ("acknowledged",), "video.case.resolve", fn)

    # --- alert push -----------------------------------------------------------------------------------
    def _alert_body(self, db: Db, case_id: int, dept: str) -> bytes:
        case = store.case_field(db, case_id, "id", "site", "device", "camera", "zone", "kind", "org", "score",
                                "peak_count", "first_ts", "last_ts", "lat", "lon", "due_at")
        base = self.hub.settings.public_url.rstrip("/")
        return json.dumps({"type": "video.case.dispatched", "department": dept, "case": case,
                           "snapshot_url": f"{base}/api/v1/video/cases/{case_id}/snapshot"},
                          sort_keys=True, separators=(",", ":")).encode()

    def send_due_alerts(self, at: float | None = None) -> int:
        """Claim due MQTT alerts (a batch), publish each, record the outcomes; returns how many were
        claimed. A failed publish is due again after a back-off, `failed` after ALERT_TRIES. A hub that
        dies after publishing and before recording leaves its claims to run out: another hub sends them
        again (at least once; the body names the case, so a receiver can drop a repeat)."""
        t = time.time() if at is None else at
        if not getattr(self.hub.publisher, "connected", True):
            return 0  # the broker is away: alerts wait for it (an outage uses up none of their tries)
        with self.hub.store.read() as db:  # the common idle pass takes no write lock
            if not store.any_alert_due(db, t):
                return 0
        lease_s = self.hub.settings.webhooks.lease_s
        with self.hub.store.tx() as db:
            due = store.claim_alerts(db, t, lease_s, self.owner, ALERT_BATCH)
        # publish only in the first half of the lease: past it, another hub may soon take these over, and an
        # alert both send is a repeat (a loaded machine, a slow broker); the rest go back, due at once
        stop_at = time.monotonic() + lease_s / 2
        outcomes: list[tuple[dict[str, Any], str | None]] = []
        for i, a in enumerate(due):
            left = stop_at - time.monotonic()
            if (self.alert_sender.stopping and self.alert_sender.alive) or left <= 0:  # hand the rest back
                with self.hub.store.tx() as db:
                    store.release_alerts(db, [r["id"] for r in due[i:]], self.owner)
                break
            try:
                # `sent` means the broker has it (its PUBACK), not that paho queued it: an alert published
                # into a dropped connection is tried again, never recorded as sent
                self.hub.publish(a["target"], a["body"].encode(), qos=1, confirm=min(ALERT_ACK_S, max(left, 0.5)))
                outcomes.append((a, None))
            except Exception as e:  # network errors of any kind: tried again later, then recorded
                outcomes.append((a, f"{type(e).__name__}: {e}"[:300]))
        with self.hub.store.tx() as db:
            for a, err in outcomes:
                n = a["attempts"] + 1
                if err is None:
                    kept = store.finish_alert(db, a["id"], self.owner, "sent", n, None, iso(now()))
                else:
                    kept = store.finish_alert(db, a["id"], self.owner, "failed" if n >= ALERT_TRIES else "pending",
                                              n, err, None, next_at=t + 2.0 ** n)
                if not kept:
                    log.warning("video alert %d: lease lost before the outcome was stored", a["id"])
        return len(due)

    def wait_alerts(self, timeout: float = 10.0) -> None:
        """Wait until no MQTT alert is due or being sent (tests, graceful shutdown); sends them here when
        the hub is not running, so nothing due is left behind."""
        if not self.alert_sender.alive:
            while self.send_due_alerts():
                pass
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.hub.store.read() as db:
                if not store.alerts_waiting(db, time.time()):
                    return
            time.sleep(0.05)


# The outbox's statuses in the case view's words (the MQTT rows use pending / sent / failed).
_ALERT_STATUS = {"pending": "pending", "delivering": "pending", "delivered": "sent", "dead": "failed"}


def metric_samples(db: Db) -> list[Sample]:
    """Correlation as a work queue: stored events the correlator has not looked at yet."""
    behind = max(0, bridge_store.max_seq(db) - store.cursor_position(db))
    return [Sample("queue_due", "Work items due now, per kind", behind, {"kind": "video_correlation"})]


def setup(hub: Hub) -> None:
    svc = VideoService(hub)
    hub.services["video"] = svc
    hub.add_worker(svc.alert_sender)
    hub.metrics.source("video", metric_samples)
    if hub.settings.inline_consumers:
        hub.add_worker(svc.correlator)  # its first pass catches up on events stored before a crash
        hub.hooks.on("events.ingested", svc.on_events)


def service_of(hub: Hub) -> VideoService:
    svc = hub.services.get("video")
    if svc is None:
        setup(hub)
        svc = hub.services["video"]
    return svc
