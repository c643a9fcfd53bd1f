"""A hub database made by the pre-Core store (commit c14b63e; tests/data/legacy/README.md), restored into a
data directory, for tests that the current code upgrades it in place with its data kept. SQLite only: the
old store never ran on anything else."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from central.settings import MqttSettings, Settings

LEGACY = Path(__file__).parent / "data" / "legacy"
PUBLIC_URL = "http://127.0.0.1:18480"  # the resolver URL the old hub's codes embed


def restore(data_dir: Path) -> Path:
    """`data_dir/hub.db` (+ keys, audit checkpoints) as the old code left them; returns the db path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(LEGACY / "keys", data_dir / "keys", dirs_exist_ok=True)
    shutil.copytree(LEGACY / "audit", data_dir / "audit", dirs_exist_ok=True)
    db = data_dir / "hub.db"
    c = sqlite3.connect(db)
    try:
        c.executescript((LEGACY / "hub_v13.sql").read_text(encoding="utf-8"))
    finally:
        c.close()  # the dump writes the FTS5 table through writable_schema: reopen before using it
    return db


def legacy_settings(tmp_path: Path) -> Settings:
    data_dir = tmp_path / "hub"
    restore(data_dir)
    return Settings(data_dir=data_dir, public_url=PUBLIC_URL, mqtt=MqttSettings(enabled=False))
