"""SQL for devices and the commands sent to them."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db["devices"].create(
        {
            "id": str, "site": str, "device": str, "kind": str, "name": str, "org_path": str, "username": str,
            "created_at": str, "status": str, "status_at": str, "last_hb_at": str, "hb": str,
            "queue_depth": int, "queue_dropped": int, "revoked": int,
        },
        pk="id",
        not_null={"site", "device", "kind", "org_path", "username", "created_at"},
        defaults={"status": "unknown", "queue_depth": 0, "queue_dropped": 0, "revoked": 0},
    )
    db["devices"].create_index(["site"])
    db["device_commands"].create(
        {"cmd_id": str, "device_id": str, "action": str, "args": str, "sent_at": str, "acked_at": str,
         "ok": int, "detail": str},
        pk="cmd_id",
    )


def _v2(db: sqlite_utils.Database) -> None:
    # A site belongs to one org: the first provisioning claims it; later ones need rights over that org.
    db.conn.execute("CREATE TABLE device_sites (site TEXT PRIMARY KEY, org_path TEXT NOT NULL,"
                    " claimed_by TEXT NOT NULL, claimed_at TEXT NOT NULL)")
    # Sites of devices provisioned before claims existed: owned by the deepest org common to their devices.
    by_site: dict[str, list[str]] = {}
    for site, org in db.conn.execute("SELECT site, org_path FROM devices ORDER BY created_at"):
        by_site.setdefault(site, []).append(org)
    for site, orgs in by_site.items():
        db.conn.execute("INSERT INTO device_sites VALUES (?, ?, 'migration', datetime('now'))",
                        (site, common_org(orgs)))


def common_org(orgs: list[str]) -> str:
    parts = [o.strip("/").split("/") for o in orgs]
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return "/" + "/".join(common) if common else "/city"


MIGRATIONS = [(1, _v1), (2, _v2)]


def site_claim(db: sqlite_utils.Database, site: str) -> str | None:
    row = db.conn.execute("SELECT org_path FROM device_sites WHERE site = ?", (site,)).fetchone()
    return row[0] if row else None


def claim_site(db: sqlite_utils.Database, site: str, org: str, by: str, at: str) -> None:
    db.conn.execute("INSERT INTO device_sites VALUES (?, ?, ?, ?) ON CONFLICT(site) DO NOTHING", (site, org, by, at))


def video_site_org(db: sqlite_utils.Database, site: str) -> str | None:
    """The org video maps `site` to, when it maps it: a device there opens cases in that org, so it counts
    as the site's owner too. (Read here rather than through video, which may not be installed.)"""
    try:
        row = db.conn.execute("SELECT org_path FROM video_sites WHERE site = ?", (site,)).fetchone()
    except sqlite3.OperationalError:  # no video tables in this build
        return None
    return row[0] if row else None


def get(db: sqlite_utils.Database, device_id: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM devices WHERE id = ?", [device_id]))
    return rows[0] if rows else None


def list_devices(db: sqlite_utils.Database, org_prefixes: list[str] | None) -> list[dict[str, Any]]:
    if org_prefixes is None:
        return list(db.query("SELECT * FROM devices ORDER BY id"))
    if not org_prefixes:
        return []
    where = " OR ".join("(org_path = ? OR org_path LIKE ?)" for _ in org_prefixes)
    params: list[str] = []
    for p in org_prefixes:
        params += [p, p.rstrip("/") + "/%"]
    return list(db.query(f"SELECT * FROM devices WHERE {where} ORDER BY id", params))


def insert(db: sqlite_utils.Database, row: dict[str, Any]) -> None:
    db["devices"].insert(row)


def set_status(db: sqlite_utils.Database, device_id: str, status: str, at: str) -> None:
    db.conn.execute("UPDATE devices SET status = ?, status_at = ? WHERE id = ?", (status, at, device_id))


def set_heartbeat(db: sqlite_utils.Database, device_id: str, at: str, hb_json: str, depth: int, dropped: int) -> None:
    db.conn.execute(
        "UPDATE devices SET last_hb_at = ?, hb = ?, queue_depth = ?, queue_dropped = ? WHERE id = ?",
        (at, hb_json, depth, dropped, device_id),
    )


def record_command(db: sqlite_utils.Database, row: dict[str, Any]) -> None:
    db["device_commands"].insert(row)


def ack_command(db: sqlite_utils.Database, cmd_id: str, at: str, ok: bool, detail: str) -> None:
    db.conn.execute(
        "UPDATE device_commands SET acked_at = ?, ok = ?, detail = ? WHERE cmd_id = ?", (at, int(ok), detail, cmd_id)
    )


def recent_events(db: sqlite_utils.Database, device_id: str, limit: int) -> list[dict[str, Any]]:
    site, device = device_id.split("/", 1)
    return list(db.query(
        "SELECT event_id, kind, ts, received_at, phase, incident_id, camera, zone, score, count, payload"
        " FROM events WHERE site = ? AND device = ? ORDER BY received_at DESC, ts DESC LIMIT ?",
        [site, device, limit],
    ))
