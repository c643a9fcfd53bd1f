"""Registry service: feed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from central import csvsafe
from central.registry import store
from central.registry.service.common import (
    Actor,
    RegistryError,
    _dumps,
    _now,
)

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.registry")



# ---------------------------------------------------------------- change feed

def append_feed(db: Db, kind: str, entity_id: str | None, data: dict[str, Any], org: str | None = None) -> int:
    """Append one change record; returns its seq. Call inside the write's transaction (other capabilities
    call this with their own `Db`). Exactly-once for a resuming reader: see `store.append_feed`."""
    if org is None and entity_id is not None:
        org = store.org_of(db, entity_id)
    return store.append_feed(db, _now(), kind, entity_id, org, _dumps(data))


def read_feed(hub: Hub, actor: Actor, after: int = 0, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """Records with seq > after, visible to the actor, oldest first; returns (items, next cursor)."""
    if after < 0 or not 1 <= limit <= 10000:
        raise RegistryError("limit" if after >= 0 else "after", "after must be >= 0, limit 1..10000")
    with hub.store.read() as db:
        items = store.feed_page(db, after, actor.scopes("registry.feed.read"), limit)
    for it in items:
        it["data"] = json.loads(it["data"])
    return items, (items[-1]["seq"] if items else after)


def export_feed(hub: Hub, actor: Actor, after: int = 0, page: int = 5000) -> Iterator[str]:
    """The feed as JSONL lines from `after` to the current end (paged so memory stays flat)."""
    cursor = after
    while True:
        items, cursor = read_feed(hub, actor, cursor, page)
        for it in items:
            yield json.dumps(it, ensure_ascii=False, separators=(",", ":")) + "\n"
        if len(items) < page:
            return


FEED_CSV_COLUMNS = ("seq", "ts", "kind", "entity_id", "org", "name", "address", "data")


def export_feed_csv(hub: Hub, actor: Actor, after: int = 0, page: int = 5000) -> Iterator[str]:
    """The feed as CSV lines for a spreadsheet (header first): name and address in their own columns, the
    whole record as JSON in `data`. Cells go through csvsafe: a registered name such as `=HYPERLINK(...)`
    is shown as text, never run. (The JSONL feed is for machines and carries values verbatim.)"""
    yield csvsafe.format_row(FEED_CSV_COLUMNS)
    cursor = after
    while True:
        items, cursor = read_feed(hub, actor, cursor, page)
        for it in items:
            d = it["data"] if isinstance(it["data"], dict) else {}
            yield csvsafe.format_row([it["seq"], it["ts"], it["kind"], it["entity_id"], it["org"], d.get("name"),
                                      d.get("address"), json.dumps(it["data"], ensure_ascii=False)])
        if len(items) < page:
            return


