"""Audit chain: every write lands in it; change / delete / re-order are detected and named (both profiles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from central.hub import Hub
from central.iam import store as iam_store
from central.iam.audit import record
from central.iam.cli import app as cli
from tests.iam.conftest import attacker, audit_column, hub_config, hub_url, make_hub, verify_in


def _hub_with_rows(tmp_path: Path, profile: str, n: int = 6) -> Hub:
    hub = make_hub(tmp_path, profile)
    for i in range(n):
        with hub.store.tx() as db:
            record(db, actor="alice", action="test.write", target=f"thing:{i}", org="/city/district-a",
                   detail={"i": i, "名": "城市码"})
    return hub


def _kinds(hub: Hub) -> set[tuple[int, str]]:
    return {(p["seq"], p["kind"]) for p in verify_in(hub).problems}


def test_chain_is_intact_and_uses_profile_hash(tmp_path: Path, profile: str) -> None:
    hub = _hub_with_rows(tmp_path, profile)
    res = verify_in(hub)
    assert res.ok and res.rows >= 6
    algs = set(audit_column(hub, "alg"))
    assert algs == {"hmac-sm3" if profile == "gm" else "hmac-sha256"}  # keyed: see test_audit_attacks


def test_append_only_inside_the_product(tmp_path: Path) -> None:
    hub = _hub_with_rows(tmp_path, "intl")
    t = iam_store.audit
    with pytest.raises(sa.exc.IntegrityError, match="append-only"), hub.store.tx() as db:
        db.run(sa.update(t).where(t.c.seq == 2).values(actor="mallory"))
    with pytest.raises(sa.exc.IntegrityError, match="append-only"), hub.store.tx() as db:
        db.run(sa.delete(t).where(t.c.seq == 2))
    assert audit_column(hub, "actor")[1] == "alice"


def test_rollback_takes_the_audit_row_with_it(tmp_path: Path) -> None:
    hub = _hub_with_rows(tmp_path, "intl")
    before = len(audit_column(hub, "seq"))
    with pytest.raises(RuntimeError), hub.store.tx() as db:
        record(db, actor="alice", action="test.write", target="x")
        raise RuntimeError("the write failed")
    assert len(audit_column(hub, "seq")) == before
    assert verify_in(hub).ok


def test_changed_row_detected(tmp_path: Path, profile: str) -> None:
    hub = _hub_with_rows(tmp_path, profile)
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET detail = '{\"i\": 99}' WHERE seq = 4")
    assert _kinds(hub) == {(4, "changed")}


def test_deleted_row_detected(tmp_path: Path, profile: str) -> None:
    hub = _hub_with_rows(tmp_path, profile)
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq = 3")
    assert (4, "deleted") in _kinds(hub)


def test_deleted_tail_detected(tmp_path: Path) -> None:
    hub = _hub_with_rows(tmp_path, "intl")
    last = audit_column(hub, "seq")[-1]
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq = ?", (last,))
    assert (last, "deleted") in _kinds(hub)


def test_deleted_and_renumbered_detected(tmp_path: Path) -> None:
    hub = _hub_with_rows(tmp_path, "intl")
    with attacker(hub) as c:
        c.execute("DELETE FROM iam_audit WHERE seq = 3")
        last = c.execute("SELECT MAX(seq) FROM iam_audit").scalar()
        for s in range(4, last + 1):  # close the gap so seq looks continuous
            c.execute("UPDATE iam_audit SET seq = ? WHERE seq = ?", (s - 1, s))
    kinds = _kinds(hub)
    assert (3, "deleted") in kinds


def test_reordered_rows_detected(tmp_path: Path, profile: str) -> None:
    hub = _hub_with_rows(tmp_path, profile)
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET seq = -1 WHERE seq = 4")
        c.execute("UPDATE iam_audit SET seq = 4 WHERE seq = 5")
        c.execute("UPDATE iam_audit SET seq = 5 WHERE seq = -1")
    kinds = _kinds(hub)
    assert (4, "reordered") in kinds and (5, "reordered") in kinds
    assert not any(k == "changed" for _s, k in kinds)  # each row is intact; only the order is wrong


def test_cli_audit_verify_exit_codes(tmp_path: Path) -> None:
    hub = _hub_with_rows(tmp_path, "gm")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(json.dumps(hub_config(hub)))
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit-verify", "--config", str(cfg)])
    assert ok.exit_code == 0 and "OK" in ok.output
    with attacker(hub) as c:
        c.execute("UPDATE iam_audit SET actor = 'mallory' WHERE seq = 2")
    bad = runner.invoke(cli, ["audit-verify", "--config", str(cfg)])
    assert bad.exit_code == 1
    assert "row 2: changed" in bad.output and "BROKEN" in bad.output
    js = runner.invoke(cli, ["audit-verify", "--config", str(cfg), "--json"])
    assert json.loads(js.output.strip().splitlines()[-1])["problems"][0]["seq"] == 2


def test_cli_bootstrap_admin_then_login(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    url = hub_url(tmp_path)  # the database make_hub below opens too
    cfg.write_text(json.dumps({"data_dir": str(tmp_path / "hub"), "mqtt": {"enabled": False},
                               **({"database_url": url} if url else {})}))
    runner = CliRunner()
    r = runner.invoke(cli, ["bootstrap-admin", "--username", "admin", "--password", "Weak", "--config", str(cfg)])
    assert r.exit_code == 2 and "password" in r.output
    r = runner.invoke(cli, ["bootstrap-admin", "--username", "admin", "--password", "First-Boss-2024!",
                            "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    again = runner.invoke(cli, ["bootstrap-admin", "--username", "x2", "--password", "First-Boss-2024!",
                                "--config", str(cfg)])
    assert again.exit_code == 1
    hub = make_hub(tmp_path)
    out = hub.services["iam"].login("admin", "First-Boss-2024!")
    assert out["must_change_password"] is True
    p = hub.services["iam"].principal_for_session(out["token"])
    assert p.allowed("iam.users.write", "/city/anything") and p.must_change


def test_http_audit_scoped_and_verify(ihub: Hub, iclient) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import auth, token_for

    a = token_for(ihub, "aud-a", "auditor", "/city/district-a")
    token_for(ihub, "admin-b", "district_admin", "/city/district-b")
    rows = iclient.get("/api/v1/iam/audit?limit=1000", headers=auth(a)).json()
    assert rows and all(r["org"] and r["org"].startswith("/city/district-a") for r in rows)
    assert iclient.get("/api/v1/iam/audit?org=/city/district-b", headers=auth(a)).status_code == 403
    assert iclient.get("/api/v1/iam/audit/verify", headers=auth(a)).json()["ok"] is True
