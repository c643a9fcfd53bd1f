"""The dialer change feed (docs/FEEDS.md): `call.result`, one line per finished call attempt (the CDR's
times, SIP status and outcome, the dialog's answers, and the contact's result: retry or final), and
`task.completed`. Phones, ASR text and transcripts are not in it (personal data)."""

from __future__ import annotations

from central.dialer import store
from central.feeds.service import FeedSource

SOURCE = FeedSource(cap="dialer", perm="dialer.feed.read", page=store.feed_page, last=store.feed_last)
