"""Schema upgrades: one Alembic history (central/store/alembic/versions), run in ONE transaction (SQLite and
PostgreSQL both have transactional DDL: a failing revision leaves nothing half-applied).

A database made by the pre-Alembic store (hand-written SQLite migrations recorded in `schema_migrations`)
is adopted first, in the same transaction: each capability's `adopt_legacy(db)` reshapes its old tables in
place into the baseline's shape (data kept), and the database is stamped
at the baseline revision; `schema_migrations` is dropped. Later revisions then apply as to any database.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

if TYPE_CHECKING:
    from central.store import Db, Store

_SCHEMA_MIGRATIONS = sa.table(
    "schema_migrations", sa.column("capability"), sa.column("version"), sa.column("applied_at")
)


def load_tables() -> list[tuple[str, Any]]:
    """(capability, store module) in adoption order; importing them declares their tables on
    `central.store.metadata`."""
    from central import capabilities

    return capabilities.modules("store")  # central.capabilities.CAPABILITIES order


BASELINE = "0001"
_SCRIPTS = Path(__file__).parent / "alembic"


def _config(db: Db) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = db.sa
    cfg.attributes["db"] = db
    return cfg


# The last migration of each capability in the pre-Alembic store (release c14b63e). adopt_legacy handles a
# database at these versions; dialer and devices also handle their v1 (a column / a table added in v2).
LEGACY_VERSIONS = {"bridge": 1, "channel": 1, "codes": 1, "devices": 2, "dialer": 2, "iam": 2, "registry": 4,
                   "video": 2}
LEGACY_MIN = {"devices": 1, "dialer": 1}


class LegacyTooOld(RuntimeError):
    """A pre-Alembic database older than the one adoption understands."""


def upgrade(store: Store) -> list[str]:
    applied: list[str] = []
    with store.tx() as db:
        stores = load_tables()
        existing = set(sa.inspect(db.sa).get_table_names())
        if "schema_migrations" in existing:
            applied += _adopt(db, stores)
        cfg = _config(db)
        before = _revision(db)
        if before is None and applied:
            # adopted tables already have the baseline's shape: create what the old store never had, stamp
            applied += create_missing(db)
            command.stamp(cfg, BASELINE)
            before = BASELINE
        command.upgrade(cfg, "head")
        after = _revision(db)
        if after != before:
            applied.append(f"alembic:{before or 'empty'}->{after}")
    return applied


def _adopt(db: Db, stores: list[tuple[str, Any]]) -> list[str]:
    """Reshape a pre-Alembic database in place (SQLite; inside the upgrade transaction), then drop its
    migration table."""
    versions: dict[str, int] = {}
    for cap, version in db.run(sa.select(_SCHEMA_MIGRATIONS.c.capability, _SCHEMA_MIGRATIONS.c.version)):
        versions[cap] = max(versions.get(cap, 0), int(version))
    for cap, v in versions.items():
        need = LEGACY_MIN.get(cap, LEGACY_VERSIONS.get(cap, v))
        if v < need:
            raise LegacyTooOld(f"database: {cap} is at pre-Alembic migration {v}; upgrade it with release c14b63e"
                               f" (migration {LEGACY_VERSIONS[cap]}) first")
    out = []
    for cap, mod in stores:
        if cap in versions:
            adopt = getattr(mod, "adopt_legacy", None)
            if adopt is not None:
                adopt(db)
            out.append(f"{cap}:adopted")
    db.run("DROP TABLE schema_migrations")
    return out


def create_missing(db: Db) -> list[str]:
    """For an adopted pre-Alembic database: create the baseline's tables it lacks (the old store never had
    them), then their dialect extras."""
    from central.store import metadata
    from central.store.alembic.versions import baseline

    existing = set(sa.inspect(db.sa).get_table_names())
    missing = [t for t in metadata.sorted_tables if t.name in baseline.TABLES and t.name not in existing]
    if not missing:
        return []
    metadata.create_all(db.sa, tables=missing)
    created = {t.name for t in missing}
    create_extras(db, created)
    return [f"table:{n}" for n in sorted(created)]


def create_extras(db: Db, created: set[str]) -> None:
    """Each store's dialect-specific DDL (FTS5, pg_trgm, triggers) for the tables just created."""
    for _cap, mod in load_tables():
        extras = getattr(mod, "create_extras", None)
        if extras is not None:
            extras(db, created)


def _revision(db: Db) -> str | None:
    return MigrationContext.configure(db.sa).get_current_revision()


def head() -> str:
    """The newest revision of the history (what `upgrade` brings a database to)."""
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory(str(_SCRIPTS)).get_current_head()
    assert rev is not None, "the Alembic history has no head"
    return rev


def versions(store: Store) -> dict[str, str]:
    """The schema's Alembic revision ("none" for an empty database)."""
    with store.read() as db:
        return {"alembic": _revision(db) or "none"}
