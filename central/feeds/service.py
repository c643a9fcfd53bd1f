"""The one feed shape every capability answers (docs/FEEDS.md), and the MQTT push.

A change is one JSON object per line: {"seq", "type", "at", "org", "data", "cursor"}. `cursor` is opaque to
consumers: it wraps the capability and the seq, so it is the same after a restart and on either backend, and
a cursor of one feed is refused by another (a consumer mixing up its files gets an error, not a gap).

Push: the `feed-push` worker tails every feed from its own in-memory cursor and publishes each change, after
it committed, on `protocol.topics.feed(cap, org)`, QoS 1. It starts at the end of each feed when the hub
starts: MQTT is the low-latency hint, the HTTP feed the durable record a consumer resumes from."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from central import capabilities
from central.hub import LoopWorker
from protocol import topics

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.feeds")

MAX_LIMIT = 10000
PUSH_BATCH = 500
PUSH_INTERVAL_S = 0.25  # the push latency bound when idle; each pass is one indexed read per feed
_CURSOR = re.compile(r"^([a-z][a-z0-9_]{0,31}):(0|[1-9][0-9]{0,18})$")


class Scoped(Protocol):
    def scopes(self, perm: str) -> list[str]: ...


@dataclass(frozen=True)
class FeedSource:
    """One capability's feed: `page(db, after, scopes, limit)` returns rows {seq, at, type, org, data}
    (data a JSON text or a dict) with seq > after inside `scopes`, oldest first; `last(db)` the newest seq."""

    cap: str
    perm: str
    page: Callable[[Db, int, list[str], int], list[dict[str, Any]]]
    last: Callable[[Db], int]


class CursorError(ValueError):
    """A cursor this feed did not hand out (the message names `after`; it never echoes other feeds)."""


def encode_cursor(cap: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{cap}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cap: str, cursor: str | None) -> int:
    """The seq inside `cursor` (None or "": the start of the feed)."""
    if not cursor:
        return 0
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise CursorError("after: not a feed cursor (pass the X-Feed-Cursor or a line's cursor as is)") from None
    m = _CURSOR.match(text)
    if m is None or m.group(1) != cap:
        raise CursorError(f"after: not a cursor of the {cap} feed")
    return int(m.group(2))


def line(cap: str, row: dict[str, Any]) -> str:
    """One change as its JSON line (no trailing newline); the same text goes over HTTP and MQTT."""
    data = row["data"]
    obj = {"seq": int(row["seq"]), "type": row["type"], "at": row["at"], "org": row["org"],
           "data": json.loads(data) if isinstance(data, str) else data,
           "cursor": encode_cursor(cap, int(row["seq"]))}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def read(hub: Hub, who: Scoped, source: FeedSource, after: str | None, limit: int) -> tuple[list[str], str, bool]:
    """(lines, next cursor, more) of the changes after `after` that `who` may see. `more` is True when the
    page is full (ask again at once); the next cursor is the last line's, or `after` itself on an empty page,
    so a consumer that stores it never goes back."""
    seq = decode_cursor(source.cap, after)
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: 1..{MAX_LIMIT}")
    scopes = who.scopes(source.perm)
    if not scopes:
        return [], encode_cursor(source.cap, seq), False
    with hub.store.read() as db:
        rows = source.page(db, seq, scopes, limit)
    lines = [line(source.cap, r) for r in rows]
    nxt = int(rows[-1]["seq"]) if rows else seq
    return lines, encode_cursor(source.cap, nxt), len(rows) == limit


def sources() -> dict[str, FeedSource]:
    """Every capability's `central/<cap>/feed.py` SOURCE, in capability order."""
    return {src.cap: src for _cap, mod in capabilities.modules("feed")
            if isinstance(src := getattr(mod, "SOURCE", None), FeedSource)}


class FeedPusher:
    """Publishes committed changes on MQTT. Its cursors live in memory and start at each feed's end: a
    change committed while no hub ran is in the HTTP feed, never pushed late (a hint that old is noise)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.sources = sources()
        self.cursors: dict[str, int] = {}
        self.worker = LoopWorker("feed-push", self.step, interval_s=PUSH_INTERVAL_S)

    def step(self) -> bool:
        busy = False
        for cap, src in self.sources.items():
            if self.worker.stopping:
                break
            with self.hub.store.read() as db:
                if cap not in self.cursors:
                    self.cursors[cap] = src.last(db)
                    continue
                rows = src.page(db, self.cursors[cap], ["/"], PUSH_BATCH)
            for r in rows:
                try:
                    topic = topics.feed(cap, r["org"])
                except ValueError:  # an org no topic can carry (not an iam path): the all-orgs branch
                    topic = topics.feed(cap, None)
                self.hub.publish(topic, line(cap, r), qos=1)
                self.cursors[cap] = int(r["seq"])  # published once: a later failure does not repeat it
            busy = busy or len(rows) == PUSH_BATCH
        return busy


def setup(hub: Hub) -> None:
    pusher = FeedPusher(hub)
    hub.services["feeds"] = pusher
    if hub.settings.mqtt.enabled:  # without MQTT there is nobody to push to
        hub.add_worker(pusher.worker)
