"""Schema upgrades: one Alembic history (central/store/alembic/versions), run in ONE transaction (SQLite and
PostgreSQL both have transactional DDL: a failing revision leaves nothing half-applied).

A database made by the pre-Alembic store (hand-written SQLite migrations recorded in `schema_migrations`)
is adopted first, in the same transaction: each capability's `adopt_legacy(db)` reshapes its old tables in
place into the baseline's shape (data kept), its `schema_migrations` rows go, and the database is stamped
at the baseline revision; later revisions then apply as to any other database.

Transitional, while some capabilities still carry legacy `MIGRATIONS` (SQLite only): those run first, as
before, and their tables are not part of the Alembic history yet.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

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


BASELINE = "0001"
_SCRIPTS = Path(__file__).parent / "alembic"


def load_tables() -> list[tuple[str, Any]]:
    """Import every capability's store, which declares its tables on `central.store.metadata`."""
    return _stores()


def _config(db: Db) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = db.sa
    cfg.attributes["db"] = db
    return cfg


def upgrade(store: Store) -> list[str]:
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
        cfg = _config(db)
        before = _revision(db)
        if before is None and any(f"{cap}:adopted" in applied for cap, _ in stores):
            # adopted tables already have the baseline's shape: create what the old store never had, stamp
            applied += create_missing(db)
            command.stamp(cfg, BASELINE)
            before = BASELINE
        command.upgrade(cfg, "head")
        after = _revision(db)
        if after != before:
            applied.append(f"alembic:{before or 'empty'}->{after}")
    return applied


def create_missing(db: Db) -> list[str]:
    """Create the metadata's tables that this database lacks, then each store's dialect extras for them."""
    from central.store import metadata

    stores = _stores()
    existing = set(sa.inspect(db.sa).get_table_names())
    missing = [t for t in metadata.sorted_tables if t.name not in existing]
    if not missing:
        return []
    metadata.create_all(db.sa, tables=missing)
    created = {t.name for t in missing}
    for _cap, mod in stores:
        extras = getattr(mod, "create_extras", None)
        if extras is not None:
            extras(db, created)
    return [f"table:{n}" for n in sorted(created)]


def _revision(db: Db) -> str | None:
    return MigrationContext.configure(db.sa).get_current_revision()


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
        out["alembic"] = _revision(db) or "none"
    for cap, mod in _stores():
        if not getattr(mod, "MIGRATIONS", None) and any(t.name in names for t in getattr(mod, "TABLES", ())):
            out[cap] = "core"
    return out
