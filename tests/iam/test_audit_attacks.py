"""The audit chain against someone with write access to the database file (issue 14, point 5).

Each attack is done for real on the database, as an attacker with its credentials would: switch off the
append-only triggers, edit, re-chain with plain SHA-256 (what the chain was before it was keyed,
so the old `audit verify` said ok), fix the head marker, put the triggers back. `audit verify` must fail
and name the rows, by the sequence numbers the signed checkpoint vouched for.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from central.hub import Hub
from central.iam import checkpoints
from central.iam.audit import KEY_FILE, record
from central.iam.cli import app as cli
from protocol.signing import canonical
from tests.iam.conftest import (
    Attacker,
    attacker,
    audit_column,
    hub_config,
    hub_url,
    make_checkpoint,
    make_hub,
    record_in,
    verify_in,
)

GENESIS = "0" * 64


def _hub(tmp_path: Path, profile: str = "intl", n: int = 40, denied_every: int = 5) -> tuple[Hub, list[int]]:
    """A hub with n rows (every `denied_every`-th an access denial), checkpointed after the last."""
    hub = make_hub(tmp_path, profile)
    denied = []
    for i in range(n):
        action = "denied" if i % denied_every == 2 else "test.write"
        with hub.store.tx() as db:
            seq = record(db, actor="alice", action=action, target=f"thing:{i}", org="/city/district-a",
                         detail={"i": i, "名": "城市码"})
        if action == "denied":
            denied.append(seq)
    assert hub.services["audit_checkpoints"].checkpoint() is not None
    return hub, denied


def rechain_plain(c: Attacker, alg: str | None = "sha256") -> None:
    """Recompute every hash as the unkeyed SHA-256 chain (alg None: keep the keyed alg name) and move
    the head marker to match: a chain the pre-keying verifier accepted."""
    prev = GENESIS
    last = 0
    for seq, ts, actor, action, target, org, detail in c.execute(
            "SELECT seq, ts, actor, action, target, org, detail FROM iam_audit ORDER BY seq").fetchall():
        body = canonical({"ts": ts, "actor": actor, "action": action, "target": target, "org": org,
                          "detail": detail})
        h = hashlib.sha256(prev.encode() + body).hexdigest()
        c.execute("UPDATE iam_audit SET prev_hash = ?, hash = ?, alg = COALESCE(?, alg) WHERE seq = ?",
                  (prev, h, alg, seq))
        prev, last = h, seq
    c.execute("UPDATE iam_meta SET value = ? WHERE key = 'audit_head'", (f"{last}:{prev}",))


def renumber(c: Attacker) -> None:
    for n, (seq,) in enumerate(c.execute("SELECT seq FROM iam_audit ORDER BY seq").fetchall(), 1):
        c.execute("UPDATE iam_audit SET seq = ? WHERE seq = ?", (n, seq))


def named(problems: list[dict[str, Any]], kind: str) -> set[int]:
    """Every seq the problems of this kind name (ranges expanded)."""
    out: set[int] = set()
    for p in problems:
        if p["kind"] == kind:
            out.update(range(p["seq"], p.get("last", p["seq"]) + 1))
    return out


def cli_verify(hub: Hub, *extra: str) -> tuple[int, str]:
    cfg = hub.settings.data_dir.parent / "hub.yaml"
    cfg.write_text(json.dumps(hub_config(hub, mqtt=hub.settings.mqtt.model_dump(mode="json"))))
    r = CliRunner().invoke(cli, ["audit-verify", "--config", str(cfg), *extra])
    return r.exit_code, r.output


def test_clean_chain_verifies_against_its_checkpoint(tmp_path: Path, profile: str) -> None:
    hub, _ = _hub(tmp_path, profile)
    res = verify_in(hub)
    assert res.ok, res.problems
    assert res.checkpoint is not None and res.checkpoint["seq"] == res.rows == 40
    code, out = cli_verify(hub)
    assert code == 0 and "audit chain OK: 40 rows" in out and "checkpoint" in out, out
    algs = set(audit_column(hub, "alg"))
    assert algs == {"hmac-sm3" if profile == "gm" else "hmac-sha256"}


def test_rechained_modified_row_is_named(tmp_path: Path, profile: str) -> None:
    hub, _ = _hub(tmp_path, profile)
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET detail = '{\"i\": 99}' WHERE seq = 4")
        rechain_plain(c)
    res = verify_in(hub)
    assert not res.ok
    assert named(res.problems, "changed") == {4}
    assert named(res.problems, "rechained") == set(range(1, 41)) - {4}  # content intact, hashes rewritten
    code, out = cli_verify(hub)
    assert code == 1 and "row 4: changed" in out and "BROKEN" in out, out


def test_rechained_keeping_the_keyed_alg_name_is_named(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path)
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET actor = 'mallory' WHERE seq = 7")
        rechain_plain(c, alg=None)
    res = verify_in(hub)
    assert named(res.problems, "changed") == {7}
    assert 6 in named(res.problems, "rechained")


def test_denied_rows_deleted_renumbered_rechained_are_named(tmp_path: Path, profile: str) -> None:
    hub, denied = _hub(tmp_path, profile)
    with attacker(hub) as c:
        assert c.execute("DELETE FROM iam_audit WHERE action = 'denied'").rowcount == len(denied)
        renumber(c)
        rechain_plain(c)
    res = verify_in(hub)
    assert not res.ok
    assert named(res.problems, "deleted") == set(denied)  # exactly the removed rows, by their old seq
    assert named(res.problems, "changed") == set()  # nothing edited: the survivors were only moved
    assert named(res.problems, "reordered") == set(range(1, 41)) - set(denied) - {1, 2}  # 1, 2 stay put
    code, out = cli_verify(hub, "--json")
    assert code == 1
    assert named(json.loads(out.strip().splitlines()[-1])["problems"], "deleted") == set(denied)


def test_truncated_tail_with_moved_head_marker_is_cut(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path)
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq > 35")
        h = c.execute("SELECT hash FROM iam_audit WHERE seq = 35").fetchone()[0]
        c.execute("UPDATE iam_meta SET value = ? WHERE key = 'audit_head'", (f"35:{h}",))
    res = verify_in(hub)
    assert [(p["kind"], p["seq"], p.get("last")) for p in res.problems] == [("cut", 36, 40)]
    assert "moved back from 40" in res.problems[0]["why"]


def test_truncated_tail_with_deleted_head_marker_is_cut(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path)
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq > 30")
        c.execute("DELETE FROM iam_meta WHERE key = 'audit_head'")
    res = verify_in(hub)
    assert named(res.problems, "cut") == set(range(31, 41))


def test_emptied_table_fails(tmp_path: Path, profile: str) -> None:
    hub, _ = _hub(tmp_path, profile)
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit")
        c.execute("DELETE FROM iam_meta WHERE key = 'audit_head'")
    res = verify_in(hub)
    assert not res.ok and [p["kind"] for p in res.problems] == ["emptied"]
    code, out = cli_verify(hub)
    assert code == 1 and "emptied" in out


@pytest.mark.sqlite_only(reason="puts an old copy of the SQLite file back (PostgreSQL: a restored base backup)")
def test_head_moved_back_by_an_old_copy_of_the_file(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=10)
    old = tmp_path / "old.db"
    hub.store.backup(old)
    for i in range(5):
        record_in(hub, actor="alice", action="test.write", target=f"late:{i}")
    hub.services["audit_checkpoints"].checkpoint()
    hub.store.close()
    os.replace(old, hub.settings.database)  # the file put back as it was: rows 11..15 never happened
    for suffix in ("-wal", "-shm"):
        Path(str(hub.settings.database) + suffix).unlink(missing_ok=True)
    hub2 = make_hub(tmp_path)
    assert named(verify_in(hub2).problems, "cut") == set(range(11, 16))
    with pytest.raises(checkpoints.CheckpointWithheld, match="moved back"):  # never vouched for
        make_checkpoint(hub2)
    hub2.close()


def test_rows_newer_than_the_checkpoint_are_still_keyed(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=10)
    for i in range(3):
        record_in(hub, actor="alice", action="test.write", target=f"new:{i}")
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET target = 'nothing' WHERE seq = 12")
        rechain_plain(c, alg=None)
    res = verify_in(hub)
    assert 12 in named(res.problems, "changed") and not res.ok


def test_checkpoint_withheld_for_a_broken_chain(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=10)
    record_in(hub, actor="alice", action="test.write", target="x")
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET actor = 'mallory' WHERE seq = 11")
    with pytest.raises(checkpoints.CheckpointWithheld, match="row 11: changed"):
        make_checkpoint(hub)


def test_forged_checkpoint_line_is_named(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=10)
    path = checkpoints.checkpoint_file(hub.settings)
    line = json.loads(path.read_text().splitlines()[-1])
    line["seq"] = 5  # claim a shorter chain
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    res = verify_in(hub)
    assert [p["kind"] for p in res.problems] == ["checkpoint"]
    assert "signature does not verify" in res.problems[0]["why"]


@pytest.mark.sqlite_only(reason="reads the SQLite file's bytes for the key")
def test_key_and_checkpoints_live_outside_the_database(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=3)
    keys = hub.settings.keys_dir
    key_path = keys / KEY_FILE
    for p in (key_path, *keys.glob("audit-checkpoint-*.json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    raw_key = json.loads(key_path.read_text())["key"]
    c = sqlite3.connect(hub.settings.database)
    try:  # the WAL copied back into the file: every byte the database holds is in it
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        c.close()
    assert raw_key.encode() not in hub.settings.database.read_bytes()
    cp = checkpoints.checkpoint_file(hub.settings)
    assert cp.parent.parent == hub.settings.data_dir and len(cp.read_text().splitlines()) == 1


def test_hmac_matches_the_standard_constructions(tmp_path: Path) -> None:
    import hmac as std_hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as c_hmac

    hub = make_hub(tmp_path)
    key = hub.services["audit_checkpoints"].chain.key
    data = "城市码 audit row".encode() * 7
    assert key.mac(data, "intl") == std_hmac.new(key.key, data, hashlib.sha256).digest()
    h = c_hmac.HMAC(key.key, hashes.SM3())
    h.update(data)
    assert key.mac(data, "gm") == h.finalize()


def test_legacy_chain_upgrades_at_a_marked_boundary(tmp_path: Path) -> None:
    """A database written before keying (plain SHA-256 rows) gets one keyed boundary row that seals it."""
    from central.store import Store

    db_path = tmp_path / "hub" / "hub.db"
    bare = Store(hub_url(tmp_path) or db_path)  # no hub ever bound it: the legacy unkeyed chain, as the old code wrote
    bare.migrate()
    for i in range(5):
        with bare.tx() as db:
            record(db, actor="old", action="test.write", target=f"legacy:{i}")
    bare.close()
    hub = make_hub(tmp_path)
    assert audit_column(hub, "alg") == ["sha256"] * 5 + ["hmac-sha256"]
    assert audit_column(hub, "action")[5] == "audit.chain.keyed"
    assert json.loads(audit_column(hub, "detail")[5]) == {"legacy_rows": 5, "legacy_verified": True,
                                                          "legacy_problems": [], "keyed_from": 6}
    record_in(hub, actor="new", action="test.write", target="keyed")
    hub.services["audit_checkpoints"].checkpoint()
    assert verify_in(hub).ok
    make_hub(tmp_path)  # binding again adds no second boundary
    assert len(audit_column(hub, "seq")) == 7
    # The plain prefix is sealed: re-chaining it breaks the boundary row, and the edit is named.
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET actor = 'mallory' WHERE seq = 2")
        rechain_plain(c, alg=None)
    res = verify_in(hub)
    assert 2 in named(res.problems, "changed") and 6 in named(res.problems, "rechained")


def test_plain_row_after_the_boundary_is_a_downgrade(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=5)
    record_in(hub, actor="alice", action="test.write", target="after-checkpoint")
    with attacker(hub) as c:  # re-hash only the row no checkpoint covers yet
        prev = c.execute("SELECT hash FROM iam_audit WHERE seq = 5").fetchone()[0]
        ts, actor, action, target, org, detail = c.execute(
            "SELECT ts, actor, action, target, org, detail FROM iam_audit WHERE seq = 6").fetchone()
        body = canonical({"ts": ts, "actor": actor, "action": action, "target": "nothing", "org": org,
                          "detail": detail})
        h = hashlib.sha256(prev.encode() + body).hexdigest()
        c.execute("UPDATE iam_audit SET target = 'nothing', alg = 'sha256', hash = ? WHERE seq = 6", (h,))
        c.execute("UPDATE iam_meta SET value = ? WHERE key = 'audit_head'", (f"6:{h}",))
    res = verify_in(hub)
    assert [(p["seq"], p["kind"]) for p in res.problems] == [(6, "changed")]
    assert "unkeyed" in res.problems[0]["why"]


def test_writer_without_a_hub_keys_its_rows(tmp_path: Path) -> None:
    """Another process writing to the hub's database (e.g. the registry import writer) keys its rows."""
    import subprocess
    import sys

    hub, _ = _hub(tmp_path, n=3)
    code = ("import sys\nfrom central.store import Store\nfrom central.iam.audit import record\n"
            "s = Store(sys.argv[1])\nwith s.tx() as db:\n"
            "    print(record(db, actor='writer', action='registry.import'))")
    out = subprocess.run([sys.executable, "-c", code, hub.settings.store_url], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    seq = int(out.stdout.strip())
    alg = audit_column(hub, "alg")[seq - 1]
    assert alg == "hmac-sha256" and verify_in(hub).ok


def test_worker_publishes_retained_checkpoints_on_mqtt(tmp_path: Path, broker: Any) -> None:
    """Worker + hub.stopping hook on a real hub and mosquitto; the retained checkpoint alone still
    catches an emptied table when the checkpoint file is gone too."""
    from central.app import build_hub
    from tests.conftest import make_settings

    hub = build_hub(make_settings(tmp_path, broker))
    for i in range(4):
        record_in(hub, actor="alice", action="test.write", target=f"before-start:{i}")
    hub.start(bridge=True)
    assert hub.publisher.wait_connected(20)  # type: ignore[attr-defined]
    cp_file = checkpoints.checkpoint_file(hub.settings)
    for _ in range(400):  # the worker's first pass checkpoints what was written before the start
        if cp_file.exists() and cp_file.read_text().strip():
            break
        hub.worker(checkpoints.WORKER).kick()  # type: ignore[union-attr]
        time.sleep(0.05)
    assert json.loads(cp_file.read_text().splitlines()[-1])["seq"] == 4
    for i in range(3):
        record_in(hub, actor="alice", action="test.write", target=f"running:{i}")
    hub.stop()  # the hub.stopping checkpoint, published while the bridge is still up
    assert json.loads(cp_file.read_text().splitlines()[-1])["seq"] == 7
    chain = hub.services["audit_checkpoints"].chain
    payload = None
    for _ in range(20):  # QoS 1 + retained: wait until the broker holds the newest one
        payload, note = checkpoints.fetch_retained(hub.settings.mqtt, timeout=10)
        if payload is not None and json.loads(payload)["seq"] == 7:
            break
    assert payload is not None, note
    m = checkpoints.parse(json.loads(payload), checkpoints.key_ring(chain.keys_dir), "MQTT")
    assert m.seq == 7 and m.tags is None
    code, out = cli_verify(hub)
    assert code == 0 and "retained checkpoint read" in out, out

    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit")
        c.execute("DELETE FROM iam_meta WHERE key = 'audit_head'")
    cp_file.unlink()
    res = checkpoints.verify_hub(hub, mqtt=True, timeout=10)
    assert {p["kind"] for p in res.problems} == {"emptied", "checkpoint"}, res.problems
    assert res.checkpoint is not None and res.checkpoint["source"] == "MQTT"
    hub.close()


def test_cli_checkpoint_command(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(json.dumps(hub_config(hub)))
    runner = CliRunner()
    r = runner.invoke(cli, ["audit-checkpoint", "--config", str(cfg)])
    assert r.exit_code == 0 and "nothing to checkpoint" in r.output, r.output
    for i in range(3):
        record_in(hub, actor="alice", action="test.write", target=f"t:{i}")
    r = runner.invoke(cli, ["audit-checkpoint", "--config", str(cfg)])
    assert r.exit_code == 0 and "checkpoint: row 3" in r.output, r.output
    pub = json.loads(runner.invoke(cli, ["audit-checkpoint", "--config", str(cfg), "--public-key"]).output)
    line = json.loads(checkpoints.checkpoint_file(hub.settings).read_text().splitlines()[-1])
    assert pub["kid"] == line["kid"]
    record_in(hub, actor="alice", action="test.write", target="t:3")
    with attacker(hub) as c:  # edited before any checkpoint vouched for it: never vouched for
        c.execute("UPDATE iam_audit SET actor = 'mallory' WHERE seq = 4")
    r = runner.invoke(cli, ["audit-checkpoint", "--config", str(cfg)])
    assert r.exit_code == 1 and "refused" in r.output


def test_profile_switch_keeps_the_chain_and_its_checkpoints(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, "intl", n=6)
    gm = make_hub(tmp_path, "gm")  # the same data dir and database, now under the domestic profile
    for i in range(4):
        record_in(gm, actor="alice", action="test.write", target=f"gm:{i}")
    gm.services["audit_checkpoints"].checkpoint()
    algs = audit_column(gm, "alg")
    assert algs == ["hmac-sha256"] * 6 + ["hmac-sm3"] * 4
    assert verify_in(gm).ok
    with attacker(gm) as c:
        c.execute("DELETE FROM iam_audit WHERE seq IN (3, 8)")
        renumber(c)
        rechain_plain(c)
    assert named(verify_in(gm).problems, "deleted") == {3, 8}


def test_interrupted_checkpoint_append_is_a_note_and_the_next_starts_fresh(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=3)
    path = checkpoints.checkpoint_file(hub.settings)
    with open(path, "a") as f:
        f.write('{"v": 1, "seq": 9')  # a crash in the middle of an append
    res = verify_in(hub)
    assert res.ok and any("interrupted append" in n for n in res.notes)
    record_in(hub, actor="alice", action="test.write", target="after-crash")
    assert hub.services["audit_checkpoints"].checkpoint()["seq"] == 4  # type: ignore[index]
    assert path.read_text().splitlines()[-1].startswith('{"v":1')  # a line of its own
    assert verify_in(hub).ok


def test_checkpoint_lines_removed_from_the_file_are_named(tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path, n=3)
    for i in range(2):
        record_in(hub, actor="alice", action="test.write", target=f"more:{i}")
        hub.services["audit_checkpoints"].checkpoint()
    path = checkpoints.checkpoint_file(hub.settings)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    res = verify_in(hub)
    assert [p["kind"] for p in res.problems] == ["checkpoint"] and "lines are missing" in res.problems[0]["why"]


def test_worker_step_checkpoints_when_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = make_hub(tmp_path)
    cp = hub.services["audit_checkpoints"]
    path = checkpoints.checkpoint_file(hub.settings)
    record_in(hub, actor="alice", action="test.write", target="a")
    cp.step()  # the first pass checkpoints whatever is there
    assert len(path.read_text().splitlines()) == 1
    record_in(hub, actor="alice", action="test.write", target="b")
    cp.step()  # one row, seconds later: not due yet
    assert len(path.read_text().splitlines()) == 1
    monkeypatch.setattr(checkpoints, "EVERY_ROWS", 2)
    record_in(hub, actor="alice", action="test.write", target="c")
    cp.step()  # two rows since the last one: due
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [1, 3]
    cp.step()  # nothing new: nothing written
    assert len(path.read_text().splitlines()) == 2


def test_http_verify_answers_the_whole_verdict(tmp_path: Path) -> None:
    """GET /audit/verify answers the verifier's verdict in full (a run's `last`, the checkpoint), which
    the strict answer model must accept: a clean chain alone never shows those keys."""
    from fastapi.testclient import TestClient

    from central.app import create_app
    from tests.helpers import auth, token_for

    hub, _ = _hub(tmp_path)
    token = token_for(hub, "aud", "auditor", "/city")
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq > 35")
        h = c.execute("SELECT hash FROM iam_audit WHERE seq = 35").fetchone()[0]
        c.execute("UPDATE iam_meta SET value = ? WHERE key = 'audit_head'", (f"35:{h}",))
        c.execute("UPDATE iam_audit SET actor = 'mallory' WHERE seq = 7")  # a single row: no `last`
    r = TestClient(create_app(hub=hub, start_bridge=False)).get("/api/v1/iam/audit/verify", headers=auth(token))
    assert r.status_code == 200, r.text
    v = r.json()
    want = verify_in(hub).to_dict()
    want["problems"] = [{"last": None, **p} for p in want["problems"]]  # the model answers no `last` as null
    assert v == want
    assert v["ok"] is False and v["checkpoint"]["seq"] == 40 and v["checkpoint"]["source"] == "file"
    named = {(p["kind"], p["seq"], p["last"]) for p in v["problems"]}
    assert {("changed", 7, None), ("cut", 36, 40)} <= named
