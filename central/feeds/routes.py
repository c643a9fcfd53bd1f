"""The HTTP answer of every `GET /api/v1/<cap>/feed`: each capability's routes.py declares its own route and
permission and calls `feed_response` (the rules stay in `central.feeds.service`). No `router` here: the feeds
live under their capabilities' prefixes."""

from __future__ import annotations

from fastapi import Query, Response
from fastapi.exceptions import RequestValidationError

from central.feeds import service as feeds
from central.feeds.service import FeedSource, Scoped
from central.hub import Hub

MEDIA_TYPE = "application/x-ndjson"
AFTER = Query(None, max_length=200, description="The cursor to resume from (X-Feed-Cursor or a line's cursor);"
                                               " absent: the start of the feed")
LIMIT = Query(1000, ge=1, le=feeds.MAX_LIMIT, description="At most this many changes")


def feed_response(hub: Hub, who: Scoped, source: FeedSource, after: str | None, limit: int) -> Response:
    """JSON Lines, one change per line, with the next cursor in `X-Feed-Cursor` and `X-Feed-More: true`
    when the page was full. A bad cursor is the same 422 as any bad query parameter, naming `after`."""
    try:
        lines, cursor, more = feeds.read(hub, who, source, after, limit)
    except feeds.CursorError as e:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "after"), "msg": str(e),
                                       "input": after}]) from None
    body = "".join(x + "\n" for x in lines)
    return Response(body, media_type=MEDIA_TYPE,
                    headers={"X-Feed-Cursor": cursor, "X-Feed-More": "true" if more else "false",
                             "Cache-Control": "no-store"})
