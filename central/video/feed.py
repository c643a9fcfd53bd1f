"""The video change feed (docs/FEEDS.md): one line per case log entry, written in the transaction that
changed the case: `case.create` (the correlator opened it) and `case.review`, `case.dispatch`,
`case.acknowledge`, `case.resolve`, ... (the disposal workflow), each with the case as it is after the change."""

from __future__ import annotations

from central.feeds.service import FeedSource
from central.video import store

SOURCE = FeedSource(cap="video", perm="video.feed.read", page=store.feed_page, last=store.feed_last)
