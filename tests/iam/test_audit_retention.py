"""Audit retention: the purge cuts only a checkpointed prefix older than the cutoff, records itself in the
chain, and verification accepts the missing prefix up to that record and no further (both backends)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from central.hub import Hub
from central.iam import audit
from central.iam import store as iam_store
from central.iam.audit import PURGE_ACTION, record
from central.settings import RetentionSettings, SecuritySettings
from tests.iam.conftest import attacker, audit_column, hub_url, make_checkpoint, make_hub, verify_in

FAR = datetime.now(UTC) + timedelta(days=1)  # a cutoff every row written by the test is older than


def _rows(hub: Hub, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with hub.store.tx() as db:
            record(db, actor="alice", action="test.write", target=f"thing:{i}", org="/city/district-a",
                   detail={"i": i})


def _purge(hub: Hub, cutoff: datetime = FAR, limit: int = 2000) -> int:
    with hub.store.tx() as db:
        return iam_store.RETENTION["audit"](db, cutoff, limit)


def _purges(hub: Hub) -> list[dict[str, object]]:
    with hub.store.read() as db:
        rows = audit.fetch_rows(db)
    return [json.loads(r[6]) for r in rows if r[3] == PURGE_ACTION]


def _kinds(hub: Hub) -> set[tuple[int, str]]:
    return {(p["seq"], p["kind"]) for p in verify_in(hub).problems}


def test_purge_keeps_what_the_checkpoint_does_not_cover_and_verifies(tmp_path: Path, profile: str) -> None:
    hub = make_hub(tmp_path, profile)
    _rows(hub, 6)
    cp = make_checkpoint(hub)
    assert cp is not None
    head = int(cp["seq"])
    _rows(hub, 3, start=6)  # newer than the checkpoint: never purged, whatever their age
    assert _purge(hub) == head
    seqs = audit_column(hub, "seq")
    assert seqs[0] == head + 1 and len(seqs) == 3 + 1  # the 3 unvouched rows + the purge record
    assert _purges(hub)[-1]["from_seq"] == 1 and _purges(hub)[-1]["to_seq"] == head
    res = verify_in(hub)
    assert res.ok, res.problems
    assert any("purged by retention" in n for n in res.notes)
    assert _purge(hub) == 0  # nothing else is checkpointed yet
    # The chain goes on: a new checkpoint, a second purge, verification still clean.
    assert make_checkpoint(hub) is not None
    n = _purge(hub)
    assert n == 4  # the 3 rows + the first purge record
    assert [p["from_seq"] for p in _purges(hub)] == [head + 1]
    assert verify_in(hub).ok
    assert make_checkpoint(hub) is not None and verify_in(hub).ok


def test_only_rows_strictly_older_than_the_cutoff_and_in_batches(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    _rows(hub, 8)
    make_checkpoint(hub)
    ts = audit_column(hub, "ts")
    cutoff = datetime.fromisoformat(ts[4])  # row 5's own time: rows 1..4 are older, row 5 is not
    assert _purge(hub, cutoff, limit=3) == 3
    assert _purge(hub, cutoff, limit=3) == 1
    assert _purge(hub, cutoff, limit=3) == 0
    assert audit_column(hub, "seq")[0] == 5
    assert [(p["from_seq"], p["to_seq"]) for p in _purges(hub)] == [(1, 3), (4, 4)]
    assert verify_in(hub).ok


def _purged_prefix(tmp_path: Path) -> tuple[Hub, int]:
    """Ten rows under two checkpoints, the first checkpoint's rows purged; returns the hub and that head."""
    hub = make_hub(tmp_path)
    _rows(hub, 6)
    head = int(make_checkpoint(hub)["seq"])  # type: ignore[index]
    _rows(hub, 4, start=6)
    make_checkpoint(hub)
    assert _purge(hub, limit=head) == head
    return hub, head


def test_a_row_deleted_after_the_purge_is_still_detected(tmp_path: Path) -> None:
    hub, head = _purged_prefix(tmp_path)
    assert verify_in(hub).ok
    with attacker(hub) as c:  # one row past the horizon, in the middle
        c.execute("DELETE FROM iam_audit WHERE seq = ?", (head + 2,))
    assert (head + 3, "deleted") in _kinds(hub)


def test_rows_cut_right_after_the_horizon_are_detected(tmp_path: Path) -> None:
    """Deleting the rows that follow the purged prefix (the prefix made longer) is not a purge."""
    hub, head = _purged_prefix(tmp_path)
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq <= ?", (head + 2,))
    kinds = {k for _s, k in _kinds(hub)}
    assert "deleted" in kinds
    assert _purge(hub) == 0  # and the purge refuses to go on from a chain that starts in the wrong place
    assert audit_column(hub, "seq")[0] == head + 3


def test_a_forged_purge_record_is_detected(tmp_path: Path) -> None:
    """Someone with database access deletes old rows and appends a purge record of their own: without the
    chain key its hash cannot be made, so the record is no horizon and the deletion is reported."""
    hub = make_hub(tmp_path)
    _rows(hub, 6)
    make_checkpoint(hub)
    with hub.store.read() as db:
        last = iam_store.audit_head(db)
        fourth = iam_store.audit_row(db, 4)
    assert last is not None and fourth is not None
    ts = datetime.now(UTC).isoformat(timespec="microseconds")
    detail = json.dumps({"from_seq": 1, "to_seq": 4, "last_hash": fourth[9], "rows": 4, "cutoff": ts,
                         "checkpoint_seq": last[0]}, sort_keys=True)
    body = audit.row_body(ts, "system", PURGE_ACTION, "audit:1..4", None, detail)
    forged_hash = audit.digest(last[1].encode() + body, "intl").hex()  # what one can make without the key
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq <= 4")
        c.execute("INSERT INTO iam_audit (seq, ts, actor, action, target, org, detail, alg, prev_hash, hash)"
                  " VALUES (?, ?, 'system', ?, 'audit:1..4', NULL, ?, 'hmac-sha256', ?, ?)",
                  (last[0] + 1, ts, PURGE_ACTION, detail, last[1], forged_hash))
        c.execute("UPDATE iam_meta SET value = ? WHERE key = 'audit_head'", (f"{last[0] + 1}:{forged_hash}",))
    kinds = _kinds(hub)
    assert (last[0] + 1, "changed") in kinds  # the forged record itself
    assert any(k == "deleted" and s <= 5 for s, k in kinds)  # and the rows it claims were purged


def test_no_purge_of_rows_that_changed_since_their_checkpoint(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    _rows(hub, 6)
    make_checkpoint(hub)
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET detail = '{\"i\": 99}' WHERE seq = 3")
    assert _purge(hub) == 0  # purging would destroy the evidence
    assert audit_column(hub, "seq")[0] == 1
    assert (3, "changed") in _kinds(hub)


def test_no_checkpoint_no_purge(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    _rows(hub, 4)
    assert _purge(hub) == 0
    assert audit_column(hub, "seq")[0] == 1


def test_the_retention_worker_purges_audit_only_when_configured(tmp_path: Path) -> None:
    from central.app import build_hub
    from tests.conftest import make_settings

    hub = make_hub(tmp_path)
    _rows(hub, 5)
    head = int(make_checkpoint(hub)["seq"])  # type: ignore[index]
    later = datetime.now(UTC) + timedelta(days=400)
    assert hub.services["retention"].run_once(later).get("audit", 0) == 0  # audit_days None: for ever
    hub.close()
    hub2 = build_hub(make_settings(tmp_path, database_url=hub_url(tmp_path),
                                   security=SecuritySettings(crypto_profile="intl"),
                                   retention=RetentionSettings(audit_days=180)))
    assert hub2.services["retention"].run_once(later)["audit"] == head
    assert verify_in(hub2).ok
    hub2.close()
