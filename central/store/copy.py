"""`citybrain hub copy-store <database_url>`: move a hub's data to another backend (typically the SQLite
file of a single-machine hub into PostgreSQL), table by table through the metadata, in dependency order.

The target is migrated first and must be empty; everything is copied in ONE target transaction, so a
failure leaves the target as empty as it was. Afterwards each identity sequence on PostgreSQL is moved past
the largest key copied (new rows must not collide with old ones). Dialect extras (FTS tables, triggers)
are not copied: the target built its own in `migrate()`, and full-text indexes fill from the rows."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from central.store import Store, metadata
from central.store.migrations import load_tables

BATCH = 5000


class CopyError(RuntimeError):
    pass


def copy_store(src: Store, dst: Store, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every metadata table from `src` to `dst` (both migrated to the same revision); rows per table."""
    stores = load_tables()
    src.migrate()
    dst.migrate()
    if src.versions().get("alembic") != dst.versions().get("alembic"):
        raise CopyError("copy-store: source and target are at different schema revisions")
    counts: dict[str, int] = {}
    # rows a store seeds when its tables are created (a cursor's first position): replaced by the source's
    seeded = {name for _cap, mod in stores for name in getattr(mod, "SEEDED", ())}
    with src.read() as s, dst.tx() as d:
        for table in metadata.sorted_tables:
            if table.name in seeded:
                d.run(sa.delete(table))
            elif d.scalar(sa.select(sa.func.count()).select_from(table)):
                raise CopyError(f"copy-store: target table {table.name} is not empty")
        for table in metadata.sorted_tables:
            n = 0
            result = s.sa.execution_options(yield_per=BATCH).execute(sa.select(table))
            for part in result.mappings().partitions(BATCH):
                d.run(sa.insert(table), [dict(r) for r in part])
                n += len(part)
            counts[table.name] = n
            if progress:
                progress(table.name, n)
        if d.dialect == "postgresql":
            _advance_sequences(d)
    return counts


def _advance_sequences(d: object) -> None:
    """setval() every sequence owned by a copied column to that column's largest value."""
    for table in metadata.sorted_tables:
        for col in table.primary_key.columns:
            if not isinstance(col.type, sa.Integer) or col.autoincrement is False:
                continue
            seq = d.scalar(sa.select(sa.func.pg_get_serial_sequence(table.name, col.name)))  # type: ignore[attr-defined]
            if seq:
                d.run(sa.text(f"SELECT setval(:seq, COALESCE((SELECT MAX({col.name}) FROM {table.name}), 0) + 1,"  # type: ignore[attr-defined]
                              " false)"), {"seq": seq})
