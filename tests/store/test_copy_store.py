"""`citybrain hub copy-store`: an old single-machine hub (the legacy SQLite fixture, upgraded in place) moves
to PostgreSQL with every row, its audit chain still verifying and new rows not colliding with old keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.app import build_hub, create_app
from central.store import Store, metadata
from central.store.copy import CopyError, copy_store
from central.store.migrations import load_tables
from tests.conftest import BACKEND, database_url
from tests.helpers import auth, token_for
from tests.legacy import legacy_settings

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="needs the PostgreSQL pass's server as the target")


def _counts(store: Store) -> dict[str, int]:
    load_tables()
    with store.read() as db:
        return {t.name: db.scalar(sa.select(sa.func.count()).select_from(t)) for t in metadata.sorted_tables}


def test_legacy_sqlite_hub_moves_to_postgresql(tmp_path: Path) -> None:
    s = legacy_settings(tmp_path)
    target = database_url()
    assert target is not None
    r = subprocess.run([sys.executable, "-m", "citybrain.cli", "hub", "copy-store", target],
                       capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "CITYBRAIN_DATA_DIR": str(s.data_dir),
                            "CITYBRAIN_PUBLIC_URL": s.public_url, "CITYBRAIN_MQTT__ENABLED": "false"})
    assert r.returncode == 0, r.stderr
    src = Store(s.store_url)
    dst = Store(target)
    try:
        assert _counts(src) == _counts(dst) and sum(_counts(dst).values()) > 250
        with pytest.raises(CopyError, match="not empty"):  # a second copy would double everything
            copy_store(src, dst)
    finally:
        src.close()
        dst.close()
    hub = build_hub(s.model_copy(update={"database_url": target}))
    try:
        with TestClient(create_app(hub=hub, start_bridge=False)) as c:
            h = auth(token_for(hub, "copy-auditor", role="auditor", org="/city"))
            v = c.get("/api/v1/iam/audit/verify", headers=h)
            assert v.status_code == 200 and v.json()["ok"], v.text
            # a new row after the copy: sequences were moved past the copied keys
            admin = auth(token_for(hub, "copy-admin", role="district_admin", org="/city/district-a"))
            e = c.post("/api/v1/registry/entities", headers=admin,
                       json={"type": "place", "region": "330106", "name": "复制后的新地点", "address": "文三路 1 号"})
            assert e.status_code == 201, e.text
    finally:
        hub.close()
