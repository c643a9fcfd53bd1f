"""Tables and queries of the access channel pilot (SQLAlchemy Core; the same on SQLite and PostgreSQL). A
grant row keeps the peer's public key, never its private key (that is handed out once, inside the
WireGuard config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.store import dialect, metadata
from central.store.dialect import BigId

if TYPE_CHECKING:
    from central.store import Db

scenes = sa.Table(
    "channel_scenes", metadata,
    sa.Column("app_id", BigId, primary_key=True, autoincrement=False),  # the codes application it opens
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("service_name", sa.Text, nullable=False),
    sa.Column("service_addr", sa.Text, nullable=False),
    sa.Column("service_port", sa.Integer, nullable=False),
    sa.Column("ttl_s", sa.Integer, nullable=False),
    sa.Column("gateway_public_key", sa.Text, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("terminals", sa.Text, nullable=False, server_default="[]"),
    sa.Column("enabled", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
grants = sa.Table(
    "channel_grants", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("app_id", BigId, sa.ForeignKey("channel_scenes.app_id"), nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("serial", sa.Text, nullable=False),
    sa.Column("identity_id", sa.Text, nullable=False),
    sa.Column("via", sa.Text, nullable=False),
    sa.Column("peer_public_key", sa.Text, nullable=False),
    sa.Column("peer_address", sa.Text, nullable=False),
    sa.Column("allowed_ips", sa.Text, nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    sa.Column("ended_at", sa.Float),
    sa.Column("end_reason", sa.Text),
    sqlite_with_rowid=False,
)
# Legacy index names (an adopted database has them); one active grant per client address.
sa.Index("channel_grants_active", grants.c.status, grants.c.expires_at)
sa.Index("channel_grants_serial", grants.c.serial)
sa.Index("channel_grants_addr", grants.c.peer_address, unique=True,
         sqlite_where=grants.c.status == "active", postgresql_where=grants.c.status == "active")

TABLES = [scenes, grants]

GRANT_COLS = tuple(c.name for c in grants.columns)
SCENE_COLS = tuple(c.name for c in scenes.columns)


def adopt_legacy(db: Db) -> None:
    """The legacy channel migration (v1) made exactly these tables, columns and index names: nothing to
    reshape, every row is kept as it is."""


def upsert_scene(db: Db, row: Mapping[str, Any]) -> None:
    db.run(dialect.upsert(db, scenes, ["app_id"], [c for c in SCENE_COLS if c != "app_id"]).values(**row))


def scene(db: Db, app_id: int) -> dict[str, Any] | None:
    return db.first(sa.select(scenes).where(scenes.c.app_id == app_id))


def all_scenes(db: Db) -> list[dict[str, Any]]:
    return db.all(sa.select(scenes).order_by(scenes.c.app_id))


def active_addresses(db: Db) -> set[str]:
    """Client addresses in use. Called in the write transaction that then takes a free one: serialised, so
    two hub processes never pick the same address (the partial unique index would refuse the second)."""
    dialect.serialize(db, "channel_grants:pool")
    return set(db.run(sa.select(grants.c.peer_address).where(grants.c.status == "active")).scalars())


def insert_grant(db: Db, row: Mapping[str, Any]) -> None:
    db.run(sa.insert(grants).values(**row))


def grant(db: Db, gid: str) -> dict[str, Any] | None:
    return db.first(sa.select(grants).where(grants.c.id == gid))


def all_grants(db: Db, status: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(grants).order_by(grants.c.issued_at.desc(), grants.c.id)
    if status:
        q = q.where(grants.c.status == status)
    return db.all(q)


def end_grant(db: Db, gid: str, status: str, at: float, reason: str) -> None:
    db.run(sa.update(grants).where(grants.c.id == gid, grants.c.status == "active")
           .values(status=status, ended_at=at, end_reason=reason))


def active_grants(db: Db) -> list[dict[str, Any]]:
    g = grants.c
    return db.all(sa.select(g.id, g.app_id, g.org, g.serial, g.expires_at).where(g.status == "active"))


def scene_peers(db: Db, app_id: int) -> list[dict[str, Any]]:
    g = grants.c
    return db.all(sa.select(g.id, g.peer_public_key, g.peer_address, g.expires_at)
                  .where(g.app_id == app_id, g.status == "active").order_by(g.id))


def revoked_serials(db: Db, serials: list[str]) -> dict[str, str]:
    """serial -> why, for those of `serials` that central/codes now counts as revoked (the code itself, every
    code of its entity, or its department key): codes' own store function, read-only."""
    from central.codes.store import revoked_reasons

    return revoked_reasons(db, serials)
