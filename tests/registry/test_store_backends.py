"""The registry store on both backends (PostgreSQL too, while other capabilities are still on legacy SQL):
the bulk fast path (executemany / COPY), search semantics that give the same hits on each, walks, links,
the feed and serial blocks. No hub: the store's functions on a migrated database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central.registry import store
from central.registry.ids import make_id
from central.registry.store.bulk import write_rows
from central.store import Store
from tests.conftest import database_url

pytestmark = pytest.mark.both_backends

ORG = "/city/district-a"
TS = "2026-12-01T00:00:00Z"
# Chinese + Latin names and addresses, mixed case; one literal % and _
DATA = [
    ("place", "文三大厦 Wensan Tower", "浙江省杭州市西湖区文三路100号"),
    ("place", "西湖 Lakeside Park", "Xihu District, 1 Lake Road"),
    ("object", "消防栓 Hydrant F1-01", "文三大厦一楼东侧"),
    ("object", "路灯 StreetLamp 7", "Wensan Rd 7 号"),
    ("object", "灭火器 EXTINGUISHER e2", None),
    ("place", "50% Discount Mall_1", "延安路 50 号"),
    ("object", "摄像头 camera wensan-3", "文三路口"),
]


@pytest.fixture
def st(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url() or tmp_path / "r.db")
    s.migrate()
    yield s
    s.close()


def _entity(eid: str, etype: str, name: str, address: str | None, org: str = ORG) -> tuple[Any, ...]:
    return (eid, etype, "330106", name, address, org, None, None, None, None, None, None, None, None, "{}",
            "active", "t", TS, TS)


def _load(st: Store) -> list[str]:
    ids = [make_id(t, "330106", i + 1) for i, (t, _, _) in enumerate(DATA)]
    ents = [_entity(eid, t, n, a) for eid, (t, n, a) in zip(ids, DATA, strict=True)]
    links = [(ids[2], "contained_in", ids[0], "physical", ORG, "t", TS),
             (ids[6], "attached_to", ids[2], "physical", ORG, "t", TS),
             (ids[3], "contained_in", ids[1], "physical", ORG, "t", TS)]
    feeds = [(TS, eid, ORG, "{}") for eid in ids]
    with st.tx() as db:
        write_rows(db, ents, links, [(ORG, "LOCAL-1", ids[0], "t", TS)], feeds, [("L", "330106", 100)])
    return ids


def _expected(ids: list[str], terms: list[str]) -> list[str]:
    """The defined semantics, in Python: every term a case-insensitive substring of name or address;
    newest first when a term has 3+ characters, else by id."""
    hit = [eid for eid, (_, n, a) in zip(ids, DATA, strict=True)
           if all(t.lower() in n.lower() or t.lower() in (a or "").lower() for t in terms)]
    return list(reversed(hit)) if any(len(t) >= 3 for t in terms) else sorted(hit)


@pytest.mark.parametrize("q", ["wensan", "WENSAN tower", "文三大厦", "文三", "文三 camera", "号", "Lake road",
                               "50%", "l_1", "e2", "extinguisher E2", "hydrant 东侧", "nothing-here", "西湖"])
def test_search_gives_the_defined_hits(st: Store, q: str) -> None:
    ids = _load(st)
    with st.read() as db:
        got = [r["id"] for r in store.search(db, q.split(), ["/city"])]
    assert got == _expected(ids, q.split())


def test_search_filters_scope_and_renames(st: Store) -> None:
    ids = _load(st)
    with st.read() as db:
        assert store.search(db, ["wensan"], ["/city/district-b"]) == []
        assert [r["id"] for r in store.search(db, ["wensan"], ["/"], type="place")] == [ids[0]]
        assert [r["id"] for r in store.search(db, [], [ORG], limit=2, offset=1)] == sorted(ids)[1:3]
    with st.tx() as db:
        store.update_entity(db, ids[0], {"name": "Plaza 广场"}, TS)
    with st.read() as db:
        assert [r["id"] for r in store.search(db, ["plaza"], ["/"])] == [ids[0]]
        assert [r["id"] for r in store.search(db, ["tower"], ["/"])] == []


def test_walks_links_and_cycles(st: Store) -> None:
    ids = _load(st)
    with st.read() as db:
        rid = {eid: store.rid_of(db, eid) for eid in ids}
        down = store.walk(db, rid[ids[0]], 16, 100, True, ["/"])
        assert [(r[0], r[4]) for r in down] == [(ids[2], 1), (ids[6], 2)]
        up = store.walk(db, rid[ids[6]], 16, 100, False, ["/"])
        assert [(r[0], r[4]) for r in up] == [(ids[2], 1), (ids[0], 2)]
        assert store.walk(db, rid[ids[0]], 16, 100, True, ["/city/district-b"]) == []
        assert store.would_cycle(db, rid[ids[6]], rid[ids[0]]) and not store.would_cycle(db, rid[ids[0]], rid[ids[6]])
        assert [x["src"] for x in store.links_in(db, rid[ids[0]], ["/"])] == [ids[2]]
        assert store.alias_target(db, ORG, "LOCAL-1") == ids[0]
    with st.tx() as db:
        again = store.insert_link(db, ids[2], "contained_in", ids[0], "physical", ORG, "t", TS, rid[ids[2]],
                                  rid[ids[0]])
        assert again is None  # exists already
        new = store.insert_link(db, ids[4], "owned_by", ids[1], "business", ORG, "t", TS, rid[ids[4]], rid[ids[1]])
        assert new is not None
    with st.read() as db:
        assert [r[0] for r in store.linked(db, rid[ids[1]], 2, 100, ["/"])] == [ids[4]]


def test_bulk_missing_link_end_fails_whole(st: Store) -> None:
    ids = _load(st)
    orphan = make_id("object", "330106", 900)
    with pytest.raises(store.IntegrityError), st.tx() as db:
        write_rows(db, [_entity(orphan, "object", "orphan", None)],
                   [(orphan, "contained_in", make_id("place", "330106", 999), "physical", ORG, "t", TS)], [],
                   [(TS, orphan, ORG, "{}")], [])
    with st.read() as db:
        assert store.org_of(db, orphan) is None and store.org_of(db, ids[0]) == ORG
        # a second batch takes keys above the first (explicit rids, no clash with the key sequence)
        pass
    more = [make_id("place", "330106", 50 + i) for i in range(3)]
    with st.tx() as db:
        write_rows(db, [_entity(e, "place", f"more {e}", None) for e in more], [], [],
                   [(TS, e, ORG, "{}") for e in more], [])
        later = make_id("place", "330106", 60)
        db.run(store.entities.insert().values(dict(zip(store.ENTITY_COLS, _entity(later, "place", "one", None),
                                                       strict=True))))
    with st.read() as db:
        rids = [store.rid_of(db, e) for e in [*ids, *more, later]]
    assert rids == sorted(rids) and len(set(rids)) == len(rids)


def test_feed_and_serial_blocks(st: Store) -> None:
    _load(st)
    with st.tx() as db:
        seq = store.append_feed(db, TS, "entity.update", None, ORG, '{"x":1}')
    with st.read() as db:
        page = store.feed_page(db, 0, [ORG], 100)
        assert [p["seq"] for p in page] == list(range(1, len(DATA) + 2)) and page[-1]["seq"] == seq
        assert store.feed_page(db, 0, ["/city/district-b"], 100) == []
    with st.tx() as db:
        assert store.stored_serial(db, "L", "330106") == 100
        assert store.reserve_serials(db, "L", "330106", 1000) == 100
        assert store.reserve_serials(db, "L", "330106", 10) == 1100
        store.release_serials(db, [(1105, "L", "330106", 1110), (5, "O", "330106", 7)])
        assert store.stored_serial(db, "L", "330106") == 1105
        assert store.stored_serial(db, "O", "330106") == 1
