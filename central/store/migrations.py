"""Schema upgrades, in one transaction (SQLite and PostgreSQL both have transactional DDL: a failure leaves
nothing half-applied).

Capabilities move from hand-written SQLite migrations (`MIGRATIONS = [(version, fn)]` in their store,
recorded in `schema_migrations`) to Core tables on `central.store.metadata`. While both exist:
1. the legacy migrations of capabilities that still have them run (SQLite only);
2. a capability now on Core whose legacy tables are in this database is adopted: its store's
   `adopt_legacy(db)` reshapes them in place (data kept) and its `schema_migrations` rows go;
3. tables of the metadata that do not exist yet are created, then each store's
   `create_extras(db, created)` adds what Core cannot say portably (full-text indexes, triggers).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from central.store import Db, Store

log = logging.getLogger("citybrain.store")

_SCHEMA_MIGRATIONS = sa.table(
    "schema_migrations", sa.column("capability"), sa.column("version"), sa.column("applied_at")
)


def _stores() -> list[tuple[str, Any]]:
    from central import capabilities
    from central.store import ORDER

    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(capabilities.modules("store"), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0]))


def upgrade(store: Store) -> list[str]:
    from central.store import metadata

    applied: list[str] = []
    with store.tx() as db:
        stores = _stores()  # importing them fills `metadata`
        existing = set(sa.inspect(db.sa).get_table_names())
        legacy_done: set[tuple[str, int]] = set()
        if "schema_migrations" in existing:
            legacy_done = {(r[0], int(r[1])) for r in db.run(sa.select(_SCHEMA_MIGRATIONS.c.capability,
                                                                      _SCHEMA_MIGRATIONS.c.version))}
        legacy_caps = {cap for cap, _ in legacy_done}
        for cap, mod in stores:
            migs = getattr(mod, "MIGRATIONS", None)
            if migs:
                applied += _legacy(db, cap, sorted(migs, key=lambda m: m[0]), legacy_done, existing)
            elif cap in legacy_caps:
                adopt = getattr(mod, "adopt_legacy", None)
                if adopt is not None:
                    adopt(db)
                db.run(sa.delete(_SCHEMA_MIGRATIONS).where(_SCHEMA_MIGRATIONS.c.capability == cap))
                applied.append(f"{cap}:adopted")
        existing = set(sa.inspect(db.sa).get_table_names())
        missing = [t for t in metadata.sorted_tables if t.name not in existing]
        if missing:
            metadata.create_all(db.sa, tables=missing)
            created = {t.name for t in missing}
            applied += [f"table:{n}" for n in sorted(created)]
            for _cap, mod in stores:
                extras = getattr(mod, "create_extras", None)
                if extras is not None:
                    extras(db, created)
    return applied


def _legacy(db: Db, cap: str, migs: list[Any], done: set[tuple[str, int]], existing: set[str]) -> list[str]:
    if db.dialect != "sqlite":
        log.warning("capability %s still has SQLite-only migrations: its tables are not created on %s",
                    cap, db.dialect)
        return []
    if "schema_migrations" not in existing:
        db.run("CREATE TABLE IF NOT EXISTS schema_migrations (capability TEXT NOT NULL, version INTEGER NOT NULL,"
               " applied_at TEXT NOT NULL, PRIMARY KEY (capability, version))")
        existing.add("schema_migrations")
    out = []
    for version, fn in migs:
        if (cap, version) in done:
            continue
        fn(db)
        db.run(sa.insert(_SCHEMA_MIGRATIONS).values(capability=cap, version=version,
                                                    applied_at=datetime.now(UTC).isoformat()))
        out.append(f"{cap}:{version}")
    return out


def versions(store: Store) -> dict[str, int | str]:
    """capability -> its legacy migration version, or "core" once its tables are on the metadata."""
    out: dict[str, int | str] = {}
    with store.read() as db:
        names = set(sa.inspect(db.sa).get_table_names())
        if "schema_migrations" in names:
            out.update({c: int(v) for c, v in db.run(
                "SELECT capability, MAX(version) FROM schema_migrations GROUP BY capability").all()})
    for cap, mod in _stores():
        if not getattr(mod, "MIGRATIONS", None) and any(t.name in names for t in getattr(mod, "TABLES", ())):
            out[cap] = "core"
    return out
