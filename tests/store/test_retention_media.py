"""Retention purges in batches what its kinds allow, and the media store keeps files by checksum under
S3-style keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.app import build_hub
from central.media import MediaError, MediaStore
from central.retention import service as retention
from central.settings import RetentionSettings
from tests.conftest import make_settings

_md = sa.MetaData()
rows = sa.Table("t_retained", _md, sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("ts", sa.Text, nullable=False), sa.Column("pinned", sa.Integer, nullable=False))


def _purge(db: object, cutoff: datetime, limit: int) -> int:
    ids = sa.select(rows.c.id).where(rows.c.ts < cutoff.isoformat(), rows.c.pinned == 0).limit(limit)
    return db.run(sa.delete(rows).where(rows.c.id.in_(ids.scalar_subquery()))).rowcount  # type: ignore[attr-defined]


def test_purge_removes_old_unpinned_rows_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = build_hub(make_settings(tmp_path, retention=RetentionSettings(events_days=30)))
    try:
        assert hub.worker(retention.WORKER) is not None  # a hub worker, started and stopped with the hub
        _md.create_all(hub.store.engine)
        now = datetime(2026, 12, 1, tzinfo=UTC)
        old, new = (now - timedelta(days=40)).isoformat(), (now - timedelta(days=5)).isoformat()
        with hub.store.tx() as db:
            db.run(sa.insert(rows), [{"id": i, "ts": old if i < 50 else new, "pinned": int(i % 10 == 0)}
                                     for i in range(60)])
        monkeypatch.setattr(retention, "purgers", lambda: {"events": _purge})
        monkeypatch.setattr(retention, "BATCH", 7)
        out = hub.services["retention"].run_once(now)
        assert out == {"events": 45}  # 50 old, 5 of them pinned (still needed), in batches of 7
        with hub.store.read() as db:
            left = sorted(db.run(sa.select(rows.c.id)).scalars())
        assert left == [0, 10, 20, 30, 40] + list(range(50, 60))
        assert hub.services["retention"].run_once(now) == {"events": 0}
    finally:
        hub.close()


def test_audit_retention_has_the_legal_floor() -> None:
    with pytest.raises(ValueError, match="audit_days"):
        RetentionSettings(audit_days=30)


def test_media_by_checksum_under_s3_style_keys(tmp_path: Path) -> None:
    m = MediaStore(tmp_path / "media")
    data = b"\xff\xd8jpeg bytes"
    ref = m.put("snapshots", data, "jpg", at=datetime(2026, 12, 2, tzinfo=UTC))
    assert ref.key == f"snapshots/2026/12/02/{hashlib.sha256(data).hexdigest()}.jpg" and ref.size == len(data)
    assert m.put("snapshots", data, "jpg", at=datetime(2026, 12, 2, tzinfo=UTC)) == ref  # stored once
    assert m.get(ref.key, ref.sha256) == data
    m.path(ref.key).write_bytes(b"changed on disk")
    with pytest.raises(MediaError, match="checksum"):
        m.get(ref.key, ref.sha256)
    for bad in ("../etc/passwd", "/etc/passwd", "snapshots/2026/12/02/../../x.jpg"):
        with pytest.raises(MediaError):
            m.get(bad, ref.sha256)
