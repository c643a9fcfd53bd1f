"""Devices and the commands sent to them, as Core tables and the queries over them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.store import dialect, metadata

if TYPE_CHECKING:
    from central.store import Db

devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("org_path", sa.Text, nullable=False),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("status", sa.Text, server_default="unknown"),
    sa.Column("status_at", sa.Text),
    sa.Column("last_hb_at", sa.Text),
    sa.Column("hb", sa.Text),
    sa.Column("queue_depth", sa.Integer, server_default="0"),
    sa.Column("queue_dropped", sa.Integer, server_default="0"),
    sa.Column("revoked", sa.Integer, server_default="0"),
    # mosquitto_passwd's format ($7$...): what a broker asking the hub (EMQX's HTTP hook) is checked against
    sa.Column("password_hash", sa.Text),
    sa.Index("idx_devices_site", "site"),  # the legacy store's index name: adopted databases already have it
)

device_commands = sa.Table(
    "device_commands", metadata,
    sa.Column("cmd_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text),
    sa.Column("action", sa.Text),
    sa.Column("args", sa.Text),
    sa.Column("sent_at", sa.Text),
    sa.Column("acked_at", sa.Text),
    sa.Column("ok", sa.Integer),
    sa.Column("detail", sa.Text),
)

# A site belongs to one org: the first provisioning claims it; later ones need rights over that org.
device_sites = sa.Table(
    "device_sites", metadata,
    sa.Column("site", sa.Text, primary_key=True),
    sa.Column("org_path", sa.Text, nullable=False),
    sa.Column("claimed_by", sa.Text, nullable=False),
    sa.Column("claimed_at", sa.Text, nullable=False),
)

TABLES = [devices, device_commands, device_sites]


def adopt_legacy(db: Db) -> None:
    """The legacy tables already have these shapes and index names. A database still at legacy v1 has no
    site claims yet: each site is owned by the deepest org common to its devices (what legacy v2 did)."""
    if "device_sites" in sa.inspect(db.sa).get_table_names():
        return
    device_sites.create(db.sa)
    by_site: dict[str, list[str]] = {}
    for r in db.all(sa.select(devices.c.site, devices.c.org_path).order_by(devices.c.created_at)):
        by_site.setdefault(r["site"], []).append(r["org_path"])
    at = datetime.now(UTC).isoformat()
    for site, orgs in by_site.items():
        claim_site(db, site, common_org(orgs), "migration", at)


def common_org(orgs: list[str]) -> str:
    parts = [o.strip("/").split("/") for o in orgs]
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return "/" + "/".join(common) if common else "/city"


def site_claim(db: Db, site: str) -> str | None:
    return db.scalar(sa.select(device_sites.c.org_path).where(device_sites.c.site == site))


def claim_site(db: Db, site: str, org: str, by: str, at: str) -> None:
    db.run(dialect.insert_ignore(db, device_sites, "site").values(site=site, org_path=org, claimed_by=by,
                                                                   claimed_at=at))


def video_site_org(db: Db, site: str) -> str | None:
    """The org video maps `site` to, when it maps it: a device there opens cases in that org, so it counts
    as the site's owner too. (Read here rather than through video, which may not be installed: without
    its store module there is no video table to read, and a failing query would abort a PostgreSQL
    transaction, so the table is looked up, not tried.)"""
    try:
        from central.video.store import sites
    except ImportError:  # no video capability in this build
        return None
    return db.scalar(sa.select(sites.c.org_path).where(sites.c.site == site))


def get(db: Db, device_id: str) -> dict[str, Any] | None:
    return db.first(sa.select(devices).where(devices.c.id == device_id))


def list_devices(db: Db, org_prefixes: list[str] | None) -> list[dict[str, Any]]:
    q = sa.select(devices).order_by(devices.c.id)
    if org_prefixes is None:
        return db.all(q)
    if not org_prefixes:
        return []
    return db.all(q.where(sa.or_(*(
        sa.or_(devices.c.org_path == p, devices.c.org_path.like(dialect.like_escape(p.rstrip("/")) + "/%",
                                                                escape="\\"))
        for p in org_prefixes))))


def without_password_hash(db: Db) -> list[dict[str, Any]]:
    """Devices provisioned before their hash was kept on their row (migration 0008)."""
    return db.all(sa.select(devices.c.id, devices.c.username, devices.c.org_path)
                  .where(devices.c.password_hash.is_(None)))


def set_password_hash(db: Db, device_id: str, password_hash: str | None) -> None:
    db.run(sa.update(devices).where(devices.c.id == device_id).values(password_hash=password_hash))


def insert(db: Db, row: dict[str, Any]) -> None:
    db.run(sa.insert(devices).values(**row))


def set_status(db: Db, device_id: str, status: str, at: str) -> None:
    db.run(sa.update(devices).where(devices.c.id == device_id).values(status=status, status_at=at))


def set_heartbeat(db: Db, device_id: str, at: str, hb_json: str, depth: int, dropped: int) -> None:
    db.run(sa.update(devices).where(devices.c.id == device_id).values(
        last_hb_at=at, hb=hb_json, queue_depth=depth, queue_dropped=dropped))


def record_command(db: Db, row: dict[str, Any]) -> None:
    db.run(sa.insert(device_commands).values(**row))


def ack_command(db: Db, cmd_id: str, at: str, ok: bool, detail: str) -> None:
    db.run(sa.update(device_commands).where(device_commands.c.cmd_id == cmd_id).values(
        acked_at=at, ok=int(ok), detail=detail))


def recent_events(db: Db, device_id: str, limit: int) -> list[dict[str, Any]]:
    from central.bridge.store import events as ev  # the bridge's table (the bridge imports this module)

    site, device = device_id.split("/", 1)
    return db.all(
        sa.select(ev.c.event_id, ev.c.kind, ev.c.ts, ev.c.received_at, ev.c.phase, ev.c.incident_id, ev.c.camera,
                  ev.c.zone, ev.c.score, ev.c.count, ev.c.payload)
        .where(ev.c.site == site, ev.c.device == device)
        .order_by(ev.c.received_at.desc(), ev.c.ts.desc()).limit(limit)
    )


def fleet_figures(db: Db, heard_since: str) -> list[dict[str, Any]]:
    """Per kind: devices, how many are online (status online and heard since `heard_since`, or reporting
    no heartbeat yet), and the outbox depth they last reported (sum and max), for /metrics."""
    d = devices.c
    online = sa.and_(d.status == "online", sa.or_(d.last_hb_at.is_(None), d.last_hb_at >= heard_since))
    return db.all(sa.select(d.kind, sa.func.count().label("n"),
                            sa.func.sum(sa.case((online, 1), else_=0)).label("online"),
                            sa.func.coalesce(sa.func.sum(d.queue_depth), 0).label("depth"),
                            sa.func.coalesce(sa.func.max(d.queue_depth), 0).label("depth_max"))
                  .where(d.revoked == 0).group_by(d.kind))
