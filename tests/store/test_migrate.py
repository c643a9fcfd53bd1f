"""`citybrain hub migrate` on both backends: one Alembic history, idempotent, all-or-nothing, and a
database_url that cannot connect stops the hub naming host and port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.store import Store, migrations
from tests.conftest import database_url

pytestmark = pytest.mark.both_backends


def _tables(store: Store) -> set[str]:
    with store.read() as db:
        return set(sa.inspect(db.sa).get_table_names())


def _head() -> str:
    from alembic.script import ScriptDirectory

    from central.store.migrations import _SCRIPTS

    head = ScriptDirectory(str(_SCRIPTS)).get_current_head()
    assert head is not None
    return head


def test_migrate_is_idempotent_and_stamps_the_history(tmp_path: Path) -> None:
    store = Store(database_url() or tmp_path / "m.db")
    try:
        first = store.migrate()
        assert f"alembic:empty->{_head()}" in first
        assert store.migrate() == []
        assert store.versions()["alembic"] == _head()
        assert "alembic_version" in _tables(store)
    finally:
        store.close()


def test_a_failing_revision_leaves_nothing_half_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(database_url() or tmp_path / "m.db")
    real = migrations.create_extras

    def half(db: object, created: set[str]) -> None:
        real(db, created)  # type: ignore[arg-type]
        db.run("CREATE TABLE probe_made_by_the_revision (x INTEGER)")  # type: ignore[attr-defined]
        raise RuntimeError("revision failed after creating its tables")

    monkeypatch.setattr(migrations, "create_extras", half)
    try:
        with pytest.raises(RuntimeError):
            store.migrate()
        assert _tables(store) == set()  # no table, no alembic_version, no schema_migrations
        monkeypatch.setattr(migrations, "create_extras", real)
        assert store.migrate() and "alembic_version" in _tables(store)
    finally:
        store.close()


def test_hub_migrate_cli_names_an_unreachable_server(tmp_path: Path) -> None:
    from tests.pg import free_port

    port = free_port()
    r = subprocess.run([sys.executable, "-m", "citybrain.cli", "hub", "migrate"], capture_output=True, text=True,
                       timeout=120, env={"CITYBRAIN_DATABASE_URL": f"postgresql://hub:secret@127.0.0.1:{port}/city",
                                         "PATH": "/usr/bin:/bin", "CITYBRAIN_DATA_DIR": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert f"127.0.0.1:{port}/city" in r.stderr and "secret" not in r.stderr + r.stdout


def test_the_history_makes_exactly_what_the_stores_declare(tmp_path: Path) -> None:
    """Alembic's own comparison of the migrated database with the stores' metadata finds nothing: a Table
    changed without a revision (or a revision without its Table change) fails here, on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from central.store import metadata

    store = Store(database_url() or tmp_path / "m.db")
    try:
        store.migrate()
        migrations.load_tables()
        with store.read() as db:
            diff = compare_metadata(MigrationContext.configure(db.sa, opts={"compare_type": True}), metadata)
        # The dialect extras are not in the metadata: FTS5 tables (SQLite), *_trgm indexes (PostgreSQL).
        ours = {t.name for t in metadata.sorted_tables}
        diff = [d for d in diff if not (d[0] == "remove_table" and d[1].name not in ours)
                and not (d[0] == "remove_index" and d[1].name.endswith("_trgm"))]
        assert diff == []
    finally:
        store.close()
