"""The registry's Core tables (same names, columns and meaning as the legacy SQLite schema).

Entities carry an explicit integer key `rid` (SQLite: `INTEGER PRIMARY KEY`, the same values the rowid had,
so adopted links and FTS rows keep theirs; PostgreSQL: a BIGSERIAL). Links, FTS content rows and walks join
on `rid`; the text `id` stays the public identifier (unique, referenced by links and aliases)."""

from __future__ import annotations

import sqlalchemy as sa

from central.store import metadata
from central.store.dialect import BigId

_T = sa.Text

entities = sa.Table(
    "registry_entities", metadata,
    sa.Column("rid", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", _T, nullable=False, unique=True),
    sa.Column("type", _T, nullable=False),
    sa.Column("region", _T, nullable=False),
    sa.Column("name", _T, nullable=False),
    sa.Column("address", _T),
    sa.Column("org", _T, nullable=False),
    sa.Column("ext_kind", _T),
    sa.Column("ext_bi", _T, unique=True),
    sa.Column("ext_enc", _T),
    sa.Column("ext_masked", _T),
    sa.Column("phone_enc", _T),
    sa.Column("grid", _T),
    sa.Column("valid_from", _T),
    sa.Column("valid_to", _T),
    sa.Column("attrs", _T, nullable=False, server_default="{}"),
    sa.Column("status", _T, nullable=False, server_default="active"),
    sa.Column("created_by", _T, nullable=False),
    sa.Column("created_at", _T, nullable=False),
    sa.Column("updated_at", _T, nullable=False),
)
sa.Index("registry_entities_org", entities.c.org)
sa.Index("registry_entities_type_region", entities.c.type, entities.c.region)
# partial: most entities have no grid cell, and `grid >= ? AND grid < ?` implies NOT NULL
sa.Index("registry_entities_grid", entities.c.grid, sqlite_where=entities.c.grid.isnot(None),
         postgresql_where=entities.c.grid.isnot(None))

serials = sa.Table(
    "registry_serials", metadata,
    sa.Column("type_code", _T, primary_key=True),
    sa.Column("region", _T, primary_key=True),
    sa.Column("next", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)

links = sa.Table(
    "registry_links", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("src", _T, sa.ForeignKey("registry_entities.id"), nullable=False),
    sa.Column("rel", _T, nullable=False),
    sa.Column("dst", _T, sa.ForeignKey("registry_entities.id"), nullable=False),
    sa.Column("category", _T, nullable=False),
    sa.Column("org", _T, nullable=False),
    sa.Column("created_by", _T, nullable=False),
    sa.Column("created_at", _T, nullable=False),
    sa.Column("src_rid", BigId, nullable=False),
    sa.Column("dst_rid", BigId, nullable=False),
    sa.UniqueConstraint("src_rid", "rel", "dst_rid"),
)
# down walks, incoming links and "what is linked to this enterprise": covering, read from the index only
sa.Index("registry_links_down", links.c.dst_rid, links.c.category, links.c.src_rid)

aliases = sa.Table(
    "registry_aliases", metadata,
    sa.Column("org", _T, primary_key=True),
    sa.Column("local_id", _T, primary_key=True),
    sa.Column("base_id", _T, sa.ForeignKey("registry_entities.id"), nullable=False),
    sa.Column("created_by", _T, nullable=False),
    sa.Column("created_at", _T, nullable=False),
    sqlite_with_rowid=False,
)
sa.Index("registry_aliases_base", aliases.c.base_id)

feed = sa.Table(
    "registry_feed", metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("ts", _T, nullable=False),
    sa.Column("kind", _T, nullable=False),
    sa.Column("entity_id", _T),
    sa.Column("org", _T),
    sa.Column("data", _T, nullable=False),
    sqlite_autoincrement=True,  # as before: a seq is never handed out twice
)

applications = sa.Table(
    "registry_applications", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("applicant", _T, nullable=False),
    sa.Column("applicant_org", _T, nullable=False),
    sa.Column("owner_org", _T, nullable=False),
    sa.Column("purpose", _T, nullable=False),
    sa.Column("fields", _T, nullable=False),
    sa.Column("valid_from", _T, nullable=False),
    sa.Column("valid_to", _T, nullable=False),
    sa.Column("status", _T, nullable=False, server_default="pending"),
    sa.Column("decided_by", _T),
    sa.Column("decided_at", _T),
    sa.Column("reason", _T),
    sa.Column("created_at", _T, nullable=False),
)
sa.Index("registry_applications_status", applications.c.status, applications.c.applicant_org)

rejects = sa.Table(
    "registry_rejects", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ts", _T, nullable=False),
    sa.Column("source", _T, nullable=False),
    sa.Column("error", _T, nullable=False),
    sa.Column("payload", _T),
)

# An uploaded import in progress (issue 17 point 3), keyed by its org and content: the request importing
# it holds the lease (lease_owner until lease_until, renewed by every chunk it commits); `rows_done` and
# `report` move in each chunk's transaction, so the same upload sent again after its importer died goes on
# after the last committed chunk instead of storing the rows twice.
imports = sa.Table(
    "registry_imports", metadata,
    sa.Column("id", _T, primary_key=True),
    sa.Column("org", _T),
    sa.Column("actor", _T, nullable=False),
    sa.Column("status", _T, nullable=False),  # running | done
    sa.Column("rows_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("report", _T),  # JSON: the import report so far
    sa.Column("lease_owner", _T),
    sa.Column("lease_until", sa.Float),
    sa.Column("created_at", _T, nullable=False),
    sa.Column("updated_at", _T, nullable=False),
)

# SQLite's FTS5 index over name + address (external content, rowid = rid); created in create_extras
fts = sa.table("registry_entities_fts", sa.column("rowid"), sa.column("name"), sa.column("address"),
               sa.column("registry_entities_fts"))

TABLES = [entities, serials, links, aliases, feed, applications, rejects, imports]

ENTITY_COLS = (
    "id", "type", "region", "name", "address", "org", "ext_kind", "ext_bi", "ext_enc", "ext_masked",
    "phone_enc", "grid", "valid_from", "valid_to", "attrs", "status", "created_by", "created_at", "updated_at",
)
