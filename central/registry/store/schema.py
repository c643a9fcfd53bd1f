"""Adopting a database the legacy registry migrations made, and the DDL Core cannot say portably."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from central.registry.store.tables import aliases, entities, links

if TYPE_CHECKING:
    from central.store import Db

_COLS = [c.name for c in entities.c if c.name != "rid"]
_LINK_COLS = [c.name for c in links.c]
_ALIAS_COLS = [c.name for c in aliases.c]


def adopt_legacy(db: Db) -> None:
    """SQLite, legacy v4 -> Core: registry_entities gets `rid INTEGER PRIMARY KEY` = its old rowid (links'
    src_rid/dst_rid and the FTS rows keep their keys) and `id` becomes UNIQUE. SQLite cannot drop a parent
    table while child rows reference it (even deferred, a DROP counts the children as violations), so the
    two child tables are parked in temp tables too and all three are recreated from the Core definitions
    (with their indexes). Every other table's shape is unchanged."""
    if db.dialect != "sqlite":
        return
    cols = ", ".join(_COLS)
    db.run(f"CREATE TEMP TABLE registry_adopt_entities AS SELECT rowid AS rid, {cols} FROM registry_entities")
    db.run(f"CREATE TEMP TABLE registry_adopt_links AS SELECT {', '.join(_LINK_COLS)} FROM registry_links")
    db.run(f"CREATE TEMP TABLE registry_adopt_aliases AS SELECT {', '.join(_ALIAS_COLS)} FROM registry_aliases")
    for t in (links, aliases, entities):  # children first
        t.drop(db.sa)
    for t in (entities, links, aliases):
        t.create(db.sa)
    for t, tmp in ((entities, "registry_adopt_entities"), (links, "registry_adopt_links"),
                   (aliases, "registry_adopt_aliases")):
        src = sa.table(tmp, *[sa.column(c.name) for c in t.c])
        order = src.c.rid if t is entities else src.c.id if t is links else None
        sel = sa.select(*src.c)
        if order is not None:
            sel = sel.order_by(order)
        db.run(sa.insert(t).from_select([c.name for c in t.c], sel))
        db.run(f"DROP TABLE temp.{tmp}")


def create_extras(db: Db, created: set[str]) -> None:
    """Full-text search over name + address, Chinese included (substring, case-insensitive):
    SQLite: an FTS5 trigram index, external content, kept in step by the store's writes (not triggers:
    a trigger opens a statement savepoint per row and FTS5 flushes its pending terms at each, ~7x slower
    bulk inserts). PostgreSQL: pg_trgm GIN indexes, which ILIKE '%term%' uses."""
    if entities.name not in created:
        return
    if db.dialect == "sqlite":
        # trigram: CJK names have no spaces, so word tokenizers would index a whole name as one token
        db.run("CREATE VIRTUAL TABLE registry_entities_fts USING fts5(name, address, tokenize='trigram',"
               " content='registry_entities', content_rowid='rid')")
    else:
        db.run("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        db.run("CREATE INDEX registry_entities_name_trgm ON registry_entities USING gin (name gin_trgm_ops)")
        db.run("CREATE INDEX registry_entities_address_trgm ON registry_entities USING gin (address gin_trgm_ops)")
