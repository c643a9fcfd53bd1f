"""A hub database the legacy registry made (tests/data/legacy) reads back the same through the service after
the upgrade to Core tables, and takes new writes: entities get rid = their old rowid, so links and the FTS
index keep their keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from central.app import build_hub
from central.registry import service as svc
from central.registry.store import tables as tb
from central.store import migrations
from tests.legacy import legacy_settings
from tests.registry.conftest import rows

pytestmark = pytest.mark.sqlite_only(reason="the legacy store only made SQLite databases")

ORG = "/city/district-a"
TOWER, OWNER, HYDRANT, EXTINGUISHER = "L3301060000000001N", "E33010600000000011", "O33010600000000016", \
    "O33010600000000024"


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent / "alembic"))
    return str(ScriptDirectory.from_config(cfg).get_current_head())


def test_legacy_registry_reads_back_and_takes_new_writes(tmp_path: Path) -> None:
    settings = legacy_settings(tmp_path)
    import sqlite3

    c = sqlite3.connect(settings.data_dir / "hub.db")
    old_rowids = dict(c.execute("SELECT id, rowid FROM registry_entities"))
    c.close()
    hub = build_hub(settings)
    try:
        assert hub.store.versions() == {"alembic": _head()}  # adopted at the baseline, then upgraded
        assert dict(rows(hub, tb.entities.c.id, tb.entities.c.rid)) == old_rowids
        actor = svc.SystemActor("t", ORG)
        tower = svc.get_entity(hub, actor, TOWER)
        assert tower["name"] == "文三大厦 (Wensan Tower)" and tower["grid"] == "wtmkmb73"
        assert svc.get_entity(hub, actor, HYDRANT)["attrs"] == {"kind": "hydrant", "pressure_mpa": 0.35}
        # the FTS rows the old code wrote still find their entities (by the same keys)
        assert [h["id"] for h in svc.search(hub, actor, "文三大厦")] == [HYDRANT, TOWER]
        assert [h["id"] for h in svc.search(hub, actor, "Wensan")] == [TOWER]
        down = svc.descendants(hub, actor, TOWER)["items"]
        assert {i["id"] for i in down} == {HYDRANT, EXTINGUISHER}
        assert [i["id"] for i in svc.ancestors(hub, actor, HYDRANT)["items"]] == [TOWER]
        assert {i["id"] for i in svc.linked(hub, actor, OWNER)["items"]} >= {HYDRANT, TOWER}
        assert svc.resolve_alias(hub, actor, "/city/district-a/fire", "HYD-0001")["base_id"] == HYDRANT
        items, cursor = svc.read_feed(hub, svc.SystemActor("t"), 0, 100)
        assert [i["seq"] for i in items] == list(range(1, 26)) and cursor == 25
        apps = svc.list_applications(hub, svc.SystemActor("t"))
        assert [(a["id"], a["status"], a["fields"]) for a in apps] == [(1, "approved", ["grid", "name"])]

        # new writes: the serials go on, new links join the old ones, the FTS index takes renames
        new = svc.register(hub, actor, {"type": "object", "region": "330106", "name": "消防栓 F2-02 new",
                                        "links": [{"rel": "contained_in", "target": TOWER},
                                                  {"rel": "managed_by", "target": OWNER}]})
        assert new["id"].startswith("O330106000000000") and new["id"] not in (HYDRANT, EXTINGUISHER)
        assert max(old_rowids.values()) < dict(rows(hub, tb.entities.c.id, tb.entities.c.rid))[new["id"]]
        assert {i["id"] for i in svc.descendants(hub, actor, TOWER)["items"]} == {HYDRANT, EXTINGUISHER, new["id"]}
        with pytest.raises(svc.Conflict, match="cycle"):
            svc.add_link(hub, actor, TOWER, "contained_in", new["id"])
        svc.update(hub, actor, TOWER, svc.EntityPatch(name="Wensan Plaza 文三广场"))
        assert [h["id"] for h in svc.search(hub, actor, "Plaza")] == [TOWER]
        assert svc.search(hub, actor, "Wensan Tower") == []
        feed = svc.read_feed(hub, svc.SystemActor("t"), 25, 100)[0]
        assert [i["kind"] for i in feed] == ["entity.create", "entity.update"] and feed[0]["seq"] == 26
        rep = svc.import_rows(hub, actor, [(1, {"type": "place", "region": "330106", "name": "Bulk 1"}),
                                           (2, {"type": "place", "region": "330106", "name": "Bulk 2"})], org=ORG)
        assert rep.created == 2 and not rep.errors
        with hub.store.read() as db:  # the adopted tables kept their indexes
            names = {ix["name"] for ix in sa.inspect(db.sa).get_indexes("registry_entities")}
        assert {"registry_entities_org", "registry_entities_type_region", "registry_entities_grid"} <= names
    finally:
        hub.close()
