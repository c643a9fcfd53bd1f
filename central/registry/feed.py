"""The registry's change feed in the shared shape (central/feeds, docs/FEEDS.md): `registry_feed` rows, with
the entity id inside `data` (the other feeds have no entity column)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from central.feeds.service import FeedSource
from central.registry import store

if TYPE_CHECKING:
    from central.store import Db


def _page(db: Db, after: int, scopes: list[str], limit: int) -> list[dict[str, Any]]:
    out = []
    for r in store.feed_page(db, after, scopes, limit):
        data = json.loads(r["data"])
        out.append({"seq": r["seq"], "at": r["ts"], "type": r["kind"], "org": r["org"],
                    "data": {"entity_id": r["entity_id"], **(data if isinstance(data, dict) else {"value": data})}})
    return out


SOURCE = FeedSource(cap="registry", perm="registry.feed.read", page=_page, last=store.feed_last)
