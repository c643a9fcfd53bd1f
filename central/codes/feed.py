"""The codes change feed (docs/FEEDS.md): `code.issued` and `code.revoked` (scope serial / identity / key)
from the authority, and `code.scanned`, one line per terminal scan the hub accepted into `codes_scans`
(deduplicated by scan_id and tied to its code's application and department, hence to an org; the bridge's
`scans` rows are the raw ingest log, with neither)."""

from __future__ import annotations

from central.codes import store
from central.feeds.service import FeedSource

SOURCE = FeedSource(cap="codes", perm="codes.feed.read", page=store.feed_page, last=store.feed_last)
