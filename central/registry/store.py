"""Registry tables. Entities keep their current grid cell + validity span inline (the spatio-temporal
identifier); history lives in the change feed. FTS5 (trigram, so Chinese names match by substring) is
kept in step by sqlite-utils' triggers."""

from __future__ import annotations

import sqlite_utils

_V1 = """
CREATE TABLE registry_entities (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    region TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT,
    org TEXT NOT NULL,
    ext_kind TEXT,
    ext_bi TEXT UNIQUE,
    ext_enc TEXT,
    ext_masked TEXT,
    phone_enc TEXT,
    grid TEXT,
    valid_from TEXT,
    valid_to TEXT,
    attrs TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'active',
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX registry_entities_org ON registry_entities(org);
CREATE INDEX registry_entities_type_region ON registry_entities(type, region);
CREATE INDEX registry_entities_grid ON registry_entities(grid);
CREATE TABLE registry_serials (
    type_code TEXT NOT NULL, region TEXT NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (type_code, region)
) WITHOUT ROWID;
CREATE TABLE registry_links (
    id INTEGER PRIMARY KEY,
    src TEXT NOT NULL REFERENCES registry_entities(id),
    rel TEXT NOT NULL,
    dst TEXT NOT NULL REFERENCES registry_entities(id),
    category TEXT NOT NULL,
    org TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (src, rel, dst)
);
CREATE INDEX registry_links_dst ON registry_links(dst, category);
CREATE TABLE registry_aliases (
    org TEXT NOT NULL,
    local_id TEXT NOT NULL,
    base_id TEXT NOT NULL REFERENCES registry_entities(id),
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (org, local_id)
) WITHOUT ROWID;
CREATE INDEX registry_aliases_base ON registry_aliases(base_id);
CREATE TABLE registry_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    entity_id TEXT,
    org TEXT,
    data TEXT NOT NULL
);
CREATE TABLE registry_applications (
    id INTEGER PRIMARY KEY,
    applicant TEXT NOT NULL,
    applicant_org TEXT NOT NULL,
    owner_org TEXT NOT NULL,
    purpose TEXT NOT NULL,
    fields TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    decided_by TEXT,
    decided_at TEXT,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX registry_applications_status ON registry_applications(status, applicant_org);
CREATE TABLE registry_rejects (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    source TEXT NOT NULL,
    error TEXT NOT NULL,
    payload TEXT
);
"""


def _v1(db: sqlite_utils.Database) -> None:
    for stmt in _V1.split(";"):
        if stmt.strip():
            db.conn.execute(stmt)
    # trigram: CJK names have no spaces, so word tokenizers would index a whole name as one token.
    db["registry_entities"].enable_fts(["name", "address"], tokenize="trigram", create_triggers=True)


def _v2(db: sqlite_utils.Database) -> None:
    """The service writes FTS rows itself (one INSERT..SELECT per chunk): per-row triggers open a statement
    savepoint each, and FTS5 flushes its pending terms at every savepoint, which made bulk inserts ~7x
    slower. Drop v1's triggers and rebuild the index once (v1 rows were indexed twice: trigger + service)."""
    for (name,) in db.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'registry_entities'"
    ).fetchall():
        db.conn.execute(f'DROP TRIGGER "{name}"')
    db.conn.execute("INSERT INTO registry_entities_fts (registry_entities_fts) VALUES ('rebuild')")


def _v3(db: sqlite_utils.Database) -> None:
    # covering index for the downward walk: each step reads only the index, never the link rows. The upward
    # walk is covered by UNIQUE(src, rel, dst) with `rel IN (physical rels)`; no third index to maintain.
    db.conn.execute("CREATE INDEX registry_links_down ON registry_links(dst, category, src)")
    db.conn.execute("DROP INDEX registry_links_dst")


def _v4(db: sqlite_utils.Database) -> None:
    """Links keyed by entity rowid (`src_rid`, `dst_rid`): the walks join integers and reach each entity by
    its rowid in one b-tree descent, where text ids took two (the id index, then the row); integer index
    entries are also a third the size, so bulk link inserts touch fewer pages. The text ids stay in the row
    (feed, API) but are no longer indexed. Entity rowids are stable: entities are never deleted, the hub
    never VACUUMs, backups copy pages, and the FTS index already relies on the same rowids.

    Also: the grid index becomes partial (most entities have no grid cell; a NULL entry per row cost every
    insert a b-tree write for nothing; `grid >= ? AND grid < ?` implies NOT NULL, so queries still use it)."""
    c = db.conn
    c.execute("""
        CREATE TABLE registry_links_v4 (
            id INTEGER PRIMARY KEY,
            src TEXT NOT NULL REFERENCES registry_entities(id),
            rel TEXT NOT NULL,
            dst TEXT NOT NULL REFERENCES registry_entities(id),
            category TEXT NOT NULL,
            org TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            src_rid INTEGER NOT NULL,
            dst_rid INTEGER NOT NULL,
            UNIQUE (src_rid, rel, dst_rid)
        )""")
    c.execute(
        "INSERT INTO registry_links_v4 SELECT l.id, l.src, l.rel, l.dst, l.category, l.org, l.created_by,"
        " l.created_at, s.rowid, d.rowid FROM registry_links l"
        " JOIN registry_entities s ON s.id = l.src JOIN registry_entities d ON d.id = l.dst ORDER BY l.id"
    )
    c.execute("DROP TABLE registry_links")
    c.execute("ALTER TABLE registry_links_v4 RENAME TO registry_links")
    # down walks, incoming links and "what is linked to this enterprise": covering, read from the index only
    c.execute("CREATE INDEX registry_links_down ON registry_links(dst_rid, category, src_rid)")
    c.execute("DROP INDEX registry_entities_grid")
    c.execute("CREATE INDEX registry_entities_grid ON registry_entities(grid) WHERE grid IS NOT NULL")


MIGRATIONS = [(1, _v1), (2, _v2), (3, _v3), (4, _v4)]
