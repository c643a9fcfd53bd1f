"""Change feed: a consumer resuming from its cursor while writers keep writing misses nothing and sees
nothing twice; JSONL export matches the HTTP pages."""

from __future__ import annotations

import json
import threading

import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.hub import Hub
from central.registry import service as svc
from central.registry.ids import make_id
from central.registry.store import tables as tb
from tests.helpers import token_for
from tests.registry.conftest import Api, rows


def test_resuming_consumer_sees_every_change_exactly_once(hub: Hub, client: TestClient, admin_a: Api,
                                                          city: dict[str, str]) -> None:
    writer_actor = svc.SystemActor("writer", "/city/district-a")
    feed_key = Api(client, token_for(hub, "bigdata", role="city_admin", org="/city"))
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 300:
            e = svc.register(hub, writer_actor, {"type": "place", "region": "330106", "name": f"kiosk {i}"})
            written.append(e["id"])
            if i % 3 == 0:  # updates and link changes go through the feed too
                svc.update(hub, writer_actor, e["id"], svc.EntityPatch(name=f"kiosk {i} renamed"))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    seen: list[int] = []
    cursor = 0
    try:
        while True:
            # Is the writer done? Asked before the read: asked after it, the writer could commit its last
            # rows between the (empty) read and the question, and the consumer would stop short of them.
            writer_done = not t.is_alive()
            page = feed_key.ok("get", "/feed/page", params={"after": cursor, "limit": 7})
            seen += [it["seq"] for it in page["items"]]
            cursor = page["next"]  # a consumer persists only this, then resumes from it
            if not page["items"] and writer_done:
                break
    finally:
        stop.set()
        t.join()
    all_seqs = [r[0] for r in rows(hub, tb.feed.c.seq, order_by=tb.feed.c.seq)]
    assert seen == all_seqs  # nothing missed, nothing twice, in order
    creates = [json.loads(r[0])["name"] for r in rows(
        hub, tb.feed.c.data, where=sa.and_(tb.feed.c.kind == "entity.create", tb.feed.c.entity_id.in_(written)))]
    assert len(creates) == len(written) == 300


def test_feed_cursor_validation_and_jsonl_export(hub: Hub, client: TestClient, admin_a: Api,
                                                 city: dict[str, str]) -> None:
    page = admin_a.ok("get", "/feed/page", params={"after": 0, "limit": 2})
    assert [i["seq"] for i in page["items"]] == [1, 2] and page["next"] == 2
    rest = admin_a.ok("get", "/feed/page", params={"after": 2})
    assert rest["items"][0]["seq"] == 3 and rest["items"][-1]["entity_id"] == city["hydrant"]
    hyd = rest["items"][-1]["data"]
    assert hyd["links"][0] == {"rel": "contained_in", "dst": city["building"]}
    person = next(i for i in rest["items"] if i["entity_id"] == city["person"])
    assert "********" in person["data"]["external_key"]  # the feed carries no plaintext PII
    r = client.get("/api/v1/registry/feed.jsonl", params={"after": 1}, headers=admin_a.h)
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["seq"] for x in lines] == [2, 3, 4]
    assert admin_a.get("/feed/page", params={"after": -1}).status_code == 422
    assert admin_a.get("/feed/page", params={"limit": 0}).status_code == 422


def test_append_feed_for_other_capabilities(hub: Hub, admin_a: Api, city: dict[str, str]) -> None:
    with hub.store.tx() as db:
        seq = hub.services["registry"].append_feed(db, "code.issued", city["hydrant"], {"serial": "C1"})
    item = admin_a.ok("get", "/feed/page", params={"after": seq - 1})["items"][0]
    assert item == {**item, "seq": seq, "kind": "code.issued", "org": "/city/district-a", "data": {"serial": "C1"}}
    assert hub.services["registry"].lookup(city["hydrant"])["type"] == "object"
    assert hub.services["registry"].lookup(make_id("object", "330106", 5)[:-1] + "?") is None
