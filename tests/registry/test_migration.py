"""Schema upgrades keep what was registered: links written under v3 (text keys) walk the same after v4."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.app import build_hub
from central.registry import service as svc
from central.registry import store as registry_store
from central.registry.ids import make_id, uscc_check
from central.settings import MqttSettings, Settings

ORG = "/city/district-a"


def _key(n: int) -> str:
    body = f"91330106{n:09d}"
    return body + uscc_check(body)


def test_v4_rekeys_existing_links_by_rowid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path / "hub", mqtt=MqttSettings(enabled=False))
    actor = svc.SystemActor("t", ORG)
    # a hub at registry v3 writes a small tree with the v3 code path's table layout
    monkeypatch.setattr(registry_store, "MIGRATIONS", registry_store.MIGRATIONS[:3])
    hub = build_hub(settings)
    c = hub.store.conn
    assert "src_rid" not in {r[1] for r in c.execute("PRAGMA table_info(registry_links)")}
    rows = [(make_id(t, "330106", n), t, name) for n, (t, name) in enumerate(
        [("place", "Tower"), ("enterprise", "Owner Co"), ("object", "Floor 1"), ("object", "Hydrant")], 1)]
    with hub.store.tx() as db:
        for i, (eid, etype, name) in enumerate(rows):
            db.conn.execute(
                "INSERT INTO registry_entities (rowid, id, type, region, name, org, ext_kind, ext_bi, created_by,"
                " created_at, updated_at) VALUES (?, ?, ?, '330106', ?, ?, ?, ?, 't', 'x', 'x')",
                (10 + 7 * i, eid, etype, name, ORG, "uscc" if etype == "enterprise" else None,
                 _key(i) if etype == "enterprise" else None))
        for src, rel, dst, cat in [(2, "contained_in", 0, "physical"), (3, "contained_in", 2, "physical"),
                                   (2, "owned_by", 1, "business"), (3, "managed_by", 1, "business")]:
            db.conn.execute("INSERT INTO registry_links (src, rel, dst, category, org, created_by, created_at)"
                            " VALUES (?, ?, ?, ?, ?, 't', 'x')", (rows[src][0], rel, rows[dst][0], cat, ORG))
    hub.close()

    monkeypatch.undo()
    hub = build_hub(settings)  # applies v4
    try:
        assert hub.store.versions()["registry"] == len(registry_store.MIGRATIONS)
        got = hub.store.conn.execute(
            "SELECT l.src_rid = s.rowid AND l.dst_rid = d.rowid FROM registry_links l"
            " JOIN registry_entities s ON s.id = l.src JOIN registry_entities d ON d.id = l.dst").fetchall()
        assert got == [(1,)] * 4
        tower, owner, floor, hydrant = (r[0] for r in rows)
        down = svc.descendants(hub, actor, tower)["items"]
        assert [(i["id"], i["depth"]) for i in down] == [(floor, 1), (hydrant, 2)]
        assert [i["id"] for i in svc.ancestors(hub, actor, hydrant)["items"]] == [floor, tower]
        assert {i["id"] for i in svc.linked(hub, actor, owner)["items"]} == {floor, hydrant}
        assert [x["src"] for x in svc.links_of(hub, actor, tower)["incoming"]] == [floor]
        # new links after the upgrade land next to the migrated ones, and the cycle guard still sees them
        with pytest.raises(svc.Conflict, match="cycle"):
            svc.add_link(hub, actor, tower, "contained_in", hydrant)
    finally:
        hub.close()
