"""Registration, links, traversal, search and aliases over the real HTTP API and a real SQLite hub."""

from __future__ import annotations

from central.hub import Hub
from central.registry.ids import geohash_encode, make_id
from central.registry.store import tables as tb
from tests.registry.conftest import AUDIT, Api, count, id_card, rows, uscc


def test_register_types_and_identifier_shape(admin_a: Api, city: dict[str, str]) -> None:
    for kind, letter in (("building", "L"), ("enterprise", "E"), ("person", "P"), ("hydrant", "O")):
        assert city[kind][0] == letter and city[kind][1:7] == "330106" and len(city[kind]) == 18
    hyd = admin_a.ok("get", f"/entities/{city['hydrant']}")
    assert hyd["spacetime_id"] == "wtmkq8v1/2024-01-01T00:00:00Z/2030-01-01T00:00:00Z"
    assert hyd["attrs"] == {"kind": "hydrant"} and hyd["org"] == "/city/district-a"
    # lat/lon become a geohash cell
    p = admin_a.ok("post", "/entities", {"type": "place", "region": "330106", "name": "Square",
                                        "lat": 30.2741, "lon": 120.1551})
    assert p["grid"] == geohash_encode(30.2741, 120.1551, 8) and p["grid"].startswith("wtm")


def test_mistyped_id_rejected_before_lookup(admin_a: Api, city: dict[str, str]) -> None:
    good = city["hydrant"]
    typo = good[:-1] + ("A" if good[-1] != "A" else "B")
    r = admin_a.get(f"/entities/{typo}")
    assert r.status_code == 400 and "check character" in r.json()["errors"][0]["message"]
    r = admin_a.get(f"/entities/{make_id('object', '330106', 999999)}")  # well-formed, not registered
    assert r.status_code == 404


def test_bad_input_names_the_field(admin_a: Api, city: dict[str, str]) -> None:
    cases = [
        ({"type": "vehicle", "region": "330106", "name": "x"}, 422, "type"),
        ({"type": "place", "region": "33010", "name": "x"}, 422, "region"),
        ({"type": "person", "region": "330106", "name": "x"}, 400, "external_key"),
        ({"type": "person", "region": "330106", "name": "x", "external_key": id_card(5)[:-1] + "0"
          if id_card(5)[-1] != "0" else id_card(5)[:-1] + "1"}, 400, "external_key"),
        ({"type": "enterprise", "region": "330106", "name": "x", "external_key": "91350100M000100Y44"}, 400,
         "external_key"),
        ({"type": "object", "region": "330106", "name": "x", "links": [
            {"rel": "owned_by", "target": city["enterprise"]}]}, 400, "links"),
        ({"type": "object", "region": "330106", "name": "x", "links": [
            {"rel": "attached_to", "target": city["building"]}, {"rel": "owned_by", "target": city["building"]}]},
         400, "links.1.target"),
        ({"type": "object", "region": "330106", "name": "x", "links": [
            {"rel": "attached_to", "target": city["building"][:-1] + "Z"}, {"rel": "owned_by",
                                                                          "target": city["enterprise"]}]},
         400, "links.0.target"),
        ({"type": "place", "region": "330106", "name": "x", "grid": "wtmkqa"}, 422, "grid"),
        ({"type": "place", "region": "330106", "name": "x", "valid_from": "2025-01-01", "valid_to": "2024-01-01"},
         400, "valid_to"),
        ({"type": "enterprise", "region": "330106", "name": "dup", "external_key": uscc(1)}, 409, "external_key"),
    ]
    for body, status, field in cases:
        r = admin_a.post("/entities", body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["field"] == field, (body, r.text)  # a rule's refusal and a 422 name it alike
    r = admin_a.post("/entities", {"type": "object", "region": "330106", "name": "x", "links": []})
    assert "physical link" in r.json()["errors"][0]["message"] and "business link" in r.json()["errors"][0]["message"]


def test_pii_encrypted_found_by_blind_index_and_masked(hub: Hub, client, admin_a: Api,  # type: ignore[no-untyped-def]
                                                        city: dict[str, str]) -> None:
    from tests.helpers import token_for

    key = id_card(1)
    e = tb.entities.c
    raw = rows(hub, e.ext_enc, e.ext_bi, e.phone_enc, where=e.id == city["person"])[0]
    dump = "\n".join(str(r) for x in (tb.entities, tb.feed, tb.links, tb.aliases) for r in rows(hub, *x.c))
    dump += "\n".join(str(r) for r in rows(hub, AUDIT.c.detail))
    assert key not in dump and "13812345678" not in dump and raw[0].startswith("aes:") and raw[2]
    found = admin_a.ok("post", "/lookup", {"type": "person", "external_key": key.lower()})
    assert found["id"] == city["person"] and found["external_key"] == key  # district_admin holds pii.read
    op = Api(client, token_for(hub, "op-a", role="street_operator", org="/city/district-a"))
    masked = op.ok("get", f"/entities/{city['person']}")
    assert masked["external_key"] == key[:6] + "********" + key[-4:]
    assert count(hub, AUDIT, AUDIT.c.action == "registry.pii_read") >= 1
    assert admin_a.post("/lookup", {"type": "person", "external_key": id_card(77)}).status_code == 404


def test_links_cycles_and_traversal(admin_a: Api, city: dict[str, str]) -> None:
    bld, ent = city["building"], city["enterprise"]

    def obj(name: str, parent: str) -> str:
        return admin_a.ok("post", "/entities", {
            "type": "object", "region": "330106", "name": name, "attrs": {"kind": name.split()[0]},
            "links": [{"rel": "contained_in", "target": parent}, {"rel": "owned_by", "target": ent}]})["id"]

    floor = obj("floor 3", bld)
    room = obj("room 301", floor)
    ext = obj("extinguisher 301-1", room)
    # cycles: bld <- floor <- room <- ext; making floor a child of ext (or self) is refused
    for src, dst in ((floor, ext), (floor, floor), (bld, room)):
        r = admin_a.post("/links", {"src": src, "rel": "attached_to", "dst": dst})
        assert r.status_code == 409 and r.json()["field"] == "dst", r.text
    assert "cycle" in admin_a.post("/links", {"src": floor, "rel": "attached_to", "dst": ext}).json()["detail"]
    # a second parent (DAG) is fine
    admin_a.ok("post", "/links", {"src": ext, "rel": "attached_to", "dst": floor})
    d = admin_a.ok("get", f"/entities/{bld}/descendants")
    assert {i["id"]: i["depth"] for i in d["items"]} == {city["hydrant"]: 1, floor: 1, room: 2, ext: 2}
    d1 = admin_a.ok("get", f"/entities/{bld}/descendants", params={"depth": 1})
    assert {i["id"] for i in d1["items"]} == {city["hydrant"], floor}
    only = admin_a.ok("get", f"/entities/{bld}/descendants", params={"type": "object", "limit": 2})
    assert len(only["items"]) == 2 and only["truncated"]
    a = admin_a.ok("get", f"/entities/{ext}/ancestors")
    assert {i["id"]: i["depth"] for i in a["items"]} == {floor: 1, room: 1, bld: 2}
    assert admin_a.get(f"/entities/{bld}/descendants", params={"depth": 0}).status_code == 400
    # everything the enterprise is linked to
    lk = admin_a.ok("get", f"/entities/{ent}/linked", params={"depth": 1})
    assert {i["id"] for i in lk["items"]} == {city["hydrant"], floor, room, ext}
    assert {i["via"] for i in lk["items"]} == {"managed_by", "owned_by"}
    # unlinking an object's last business link is refused; removing a redundant physical one is fine
    links = admin_a.ok("get", f"/entities/{ext}/links")["outgoing"]
    biz = next(x for x in links if x["category"] == "business")
    r = admin_a.delete(f"/links/{biz['id']}")
    assert r.status_code == 409 and "last business link" in r.json()["errors"][0]["message"]
    extra = next(x for x in links if x["rel"] == "attached_to")
    admin_a.ok("delete", f"/links/{extra['id']}")
    # person/enterprise are targets only; physical target must be an object/place
    assert admin_a.post("/links", {"src": ent, "rel": "owned_by", "dst": city["person"]}).status_code == 400
    r = admin_a.post("/links", {"src": ext, "rel": "contained_in", "dst": ent})
    assert r.status_code == 400 and r.json()["field"] == "dst"


def test_search_fulltext_and_filters(admin_a: Api, city: dict[str, str]) -> None:
    def ids(**params: object) -> set[str]:
        return {i["id"] for i in admin_a.ok("get", "/search", params=params)["items"]}

    assert ids(q="消防栓") == {city["hydrant"]}  # CJK substring (trigram)
    assert ids(q="消防") == {city["hydrant"]}  # 2-char CJK term: LIKE fallback
    assert ids(q="消防栓 F1") == {city["hydrant"]} and ids(q="消防栓 F9") == set()  # long MATCH + short LIKE
    assert ids(q="wensan road") == {city["building"]}  # address, case-insensitive, AND of words
    assert ids(q="wensan nowhere") == set()
    assert ids(type="person") == {city["person"]}
    assert ids(region="3301", type="enterprise") == {city["enterprise"]}
    assert ids(region="3302") == set()
    assert ids(grid="wtmkq8") == {city["building"], city["hydrant"]}  # a cell holds its smaller cells
    assert ids(grid="wtmkq8v") == {city["hydrant"]}
    assert ids(at="2025-06-01T00:00:00Z", type="object") == {city["hydrant"]}
    assert ids(at="2031-01-01T00:00:00Z", type="object") == set()
    assert ids(at="2023-01-01T00:00:00Z") == {city["building"]}
    r = admin_a.get("/search", params={"region": "33x"})
    assert r.status_code == 400 and r.json()["field"] == "region"
    # renames reach the FTS index
    admin_a.ok("patch", f"/entities/{city['building']}", {"name": "Baochu Center 保俶中心"})
    assert ids(q="保俶中") == {city["building"]} and ids(q="Wensan Tower") == set()


def test_aliases_both_ways(hub: Hub, client, admin_a: Api, city: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import token_for

    fire = Api(client, token_for(hub, "fire", role="district_admin", org="/city/district-a/fire"))
    fire.ok("post", "/aliases", {"local_id": "HYD-0001", "base_id": city["hydrant"]})
    fire.ok("post", "/aliases", {"local_id": "hyd-legacy-7", "base_id": city["hydrant"]})  # many-to-one
    assert fire.ok("get", "/aliases/HYD-0001", params={"org": "/city/district-a/fire"})["base_id"] == city["hydrant"]
    back = fire.ok("get", f"/entities/{city['hydrant']}/aliases")["aliases"]
    assert back == [{"org": "/city/district-a/fire", "local_id": "HYD-0001"},
                    {"org": "/city/district-a/fire", "local_id": "hyd-legacy-7"}]
    r = fire.post("/aliases", {"local_id": "HYD-0001", "base_id": city["building"]})
    assert r.status_code == 409 and r.json()["field"] == "local_id"
    r = fire.post("/aliases", {"local_id": "HYD-2", "base_id": city["building"][:-1] + "0"})
    assert r.status_code in (400, 404)


def test_update_and_retire_show_in_feed(admin_a: Api, city: dict[str, str]) -> None:
    admin_a.ok("patch", f"/entities/{city['hydrant']}", {"grid": "wtmkq8v2", "status": "retired"})
    feed = admin_a.ok("get", "/feed/page")["items"]
    kinds = [f["kind"] for f in feed]
    assert kinds[:4] == ["entity.create"] * 4 and kinds[-1] == "entity.update"
    assert feed[-1]["data"] == {"grid": "wtmkq8v2", "status": "retired"}
    r = admin_a.patch(f"/entities/{city['person']}", {"grid": "wtmkq8"})
    assert r.status_code == 400 and r.json()["field"] == "grid"
    # a retired entity is no longer a link target
    r = admin_a.post("/entities", {"type": "object", "region": "330106", "name": "x", "links": [
        {"rel": "attached_to", "target": city["hydrant"]}, {"rel": "owned_by", "target": city["enterprise"]}]})
    assert r.status_code == 404 and r.json()["field"] == "links.0.target"
