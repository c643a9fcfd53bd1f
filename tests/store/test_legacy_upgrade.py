"""A database the pre-Core store made (tests/data/legacy) upgrades in place: every table's rows are still
there afterwards, and a second migrate changes nothing. Capabilities check their own data in
tests/<capability>/test_legacy_upgrade.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from central.app import build_hub
from tests.legacy import legacy_settings

pytestmark = pytest.mark.sqlite_only(reason="the legacy store only ever made SQLite databases")


def _counts(db: Path) -> dict[str, int]:
    c = sqlite3.connect(db)
    try:
        names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                         " AND name NOT LIKE '%fts%' AND name NOT LIKE 'sqlite_%'"
                                         " AND name != 'schema_migrations'")]
        return {n: c.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        c.close()


def test_every_row_survives_the_upgrade(tmp_path: Path) -> None:
    s = legacy_settings(tmp_path)
    before = _counts(s.database)
    hub = build_hub(s)
    try:
        again = hub.store.migrate()
    finally:
        hub.close()
    after = _counts(s.database)
    assert again == []
    # Revision 0003 moves codes' webhook queue (all 8 rows pending) into the one outbox and drops the table.
    moved = {"codes_webhooks": "webhooks_deliveries"}
    lost = {t: (n, after.get(moved.get(t, t))) for t, n in before.items() if after.get(moved.get(t, t), 0) < n}
    assert not lost, lost
    assert "codes_webhooks" not in after
