"""Scan retention (both backends): terminal scans older than the cutoff are deleted in batches, and what
supervision shows of them (verdicts, daily trend, per-code counters) is the same before and after."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from central.codes import store as codes
from central.store import Store
from tests.codes.test_store import NOW, seed
from tests.conftest import database_url, make_settings

pytestmark = pytest.mark.both_backends

DAY = 86400
CUTOFF = datetime.fromtimestamp(NOW - 100 * DAY, UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url() or tmp_path / "codes.db")
    s.migrate()
    yield s
    s.close()


def _scans(s: Store, a: dict[str, Any]) -> None:
    """Old scans (200 and 150 days ago), recent ones, and one of a serial no code of ours has."""
    s0, s1, _ = a["serials"]
    rows = [(s0, "valid", NOW - 200 * DAY), (s0, "valid", NOW - 200 * DAY + 60), (s1, "replayed", NOW - 150 * DAY),
            (s1, "revoked", NOW - 150 * DAY), (s0, "valid", NOW - 5 * DAY), (s1, "expired", NOW - 1 * DAY)]
    with s.tx() as db:
        for k, (sr, verdict, ts) in enumerate(rows):
            codes.insert_scan(db, {"scan_id": f"scan{k}", "serial": sr, "app_id": a["app_id"], "dept_id": "HEALTH",
                                   "site": "s", "device": "d", "verdict": verdict, "reason": "", "ts": ts})
            codes.note_scan(db, sr, ts)
        codes.insert_scan(db, {"scan_id": "stranger", "serial": "NOTOURS", "app_id": None, "dept_id": None,
                               "site": "s", "device": "d", "verdict": "invalid", "reason": "", "ts": NOW - 300 * DAY})
        codes.add_verify_stats(db, [{"day": "2026-01-01", "app_id": a["app_id"], "verdict": "valid", "n": 3}])


def _figures(s: Store, a: dict[str, Any]) -> dict[str, Any]:
    since = NOW - 365 * DAY
    day = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d")
    with s.read() as db:
        f = codes.app_figures(db, a["app_id"], NOW, since, day, NOW - 90 * DAY)
        f["codes"] = {sr: (r["scans"], r["last_scan_at"]) for sr in a["serials"]
                      if (r := codes.code_record(db, sr)) is not None}
    return f


def _left(s: Store) -> set[str]:
    with s.read() as db:
        return set(db.run(sa.select(codes.scans.c.scan_id)).scalars())


def test_old_scans_go_and_supervision_figures_stay(store: Store) -> None:
    a = seed(store)
    _scans(store, a)
    before = _figures(store, a)
    with store.tx() as db:
        assert codes.RETENTION["scans"](db, CUTOFF, 3) == 3  # in batches
    with store.tx() as db:
        assert codes.RETENTION["scans"](db, CUTOFF, 3) == 2
    with store.tx() as db:
        assert codes.RETENTION["scans"](db, CUTOFF, 3) == 0
    assert _left(store) == {"scan4", "scan5"}  # the recent ones
    after = _figures(store, a)
    assert after == before
    assert after["scans"] == {"valid": 3, "replayed": 1, "revoked": 1, "expired": 1}
    assert after["online"] == {"valid": 3}  # online verifies are not mixed with the folded scans
    assert sum(after["scanned_by_day"].values()) == 6
    # A window that starts after the old scans shows none of them, folded or not.
    with store.read() as db:
        recent = codes.app_figures(db, a["app_id"], NOW, NOW - 30 * DAY,
                                   datetime.fromtimestamp(NOW - 30 * DAY, UTC).strftime("%Y-%m-%d"), NOW)
    assert recent["scans"] == {"valid": 1, "expired": 1}


def test_the_retention_worker_purges_scans_and_supervision_agrees(tmp_path: Path) -> None:
    from central.app import build_hub

    hub = build_hub(make_settings(tmp_path))
    try:
        a = seed(hub.store)
        _scans(hub.store, a)
        svc = hub.services["codes"]
        before = svc.supervision(["/city"], days=365, now=NOW)["rows"]
        # scans_days defaults to 180: the scans of 200 (two) and 300 days ago (the stranger) go.
        assert hub.services["retention"].run_once(datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=1))[
            "scans"] == 3
        assert _left(hub.store) == {"scan2", "scan3", "scan4", "scan5"}
        assert svc.supervision(["/city"], days=365, now=NOW)["rows"] == before
    finally:
        hub.close()
