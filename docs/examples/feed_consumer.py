"""A change-feed consumer for the big-data platform (docs/FEEDS.md): reads one feed page by page, hands each
page to a handler, and saves the cursor to a file after the handler returns, so a consumer that crashes
resumes where its last finished page ended.

    python docs/examples/feed_consumer.py --hub https://hub.example --feed codes \
        --api-key "$KEY" --cursor-file codes.cursor --out codes.jsonl --follow

Needs only httpx. `run()` is the part to reuse: any `httpx.Client` (the tests pass FastAPI's TestClient).

Exactly once: the cursor is saved after the page is handled. A crash between the two repeats that page on
resume; the handler below makes that harmless by skipping lines whose seq it already wrote (every line
carries its seq, and seqs only grow). A consumer writing to a database should store the cursor in the same
transaction as the page instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

Change = dict[str, Any]


def load_cursor(path: Path) -> str | None:
    """The saved cursor, or None (start of the feed) when there is none yet."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def save_cursor(path: Path, cursor: str) -> None:
    """Write-then-rename, fsynced: after a crash the file holds the old cursor or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(cursor)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_page(client: httpx.Client, url: str, cursor: str | None, limit: int,
              headers: dict[str, str] | None = None) -> tuple[list[Change], str, bool]:
    """(changes, next cursor, more) of one page."""
    params: dict[str, Any] = {"limit": limit}
    if cursor:
        params["after"] = cursor
    r = client.get(url, params=params, headers=headers)
    r.raise_for_status()
    changes = [json.loads(line) for line in r.text.splitlines() if line]
    return changes, r.headers["X-Feed-Cursor"], r.headers.get("X-Feed-More") == "true"


def run(client: httpx.Client, url: str, cursor_file: Path, handle: Callable[[list[Change]], None],
        limit: int = 500, headers: dict[str, str] | None = None, follow: bool = False, poll_s: float = 2.0,
        stop: Callable[[], bool] = lambda: False) -> int:
    """Consume `url` from the cursor in `cursor_file`; returns the number of changes handled. Without
    `follow` it returns at the end of the feed; with it, it polls every `poll_s` until `stop()`."""
    cursor = load_cursor(cursor_file)
    handled = 0
    while not stop():
        changes, nxt, more = read_page(client, url, cursor, limit, headers)
        if changes:
            handle(changes)  # raises: the cursor stays where it was, this page comes again on resume
            handled += len(changes)
        if nxt != cursor:
            save_cursor(cursor_file, nxt)
            cursor = nxt
        if not more:
            if not follow:
                return handled
            time.sleep(poll_s)
    return handled


def jsonl_sink(out: Path) -> Callable[[list[Change]], None]:
    """A handler appending each change to `out`, skipping seqs already there (a page repeated after a crash
    between writing it and saving the cursor)."""
    last = 0
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                last = max(last, int(json.loads(line)["seq"]))

    def handle(changes: list[Change]) -> None:
        nonlocal last
        with open(out, "a") as f:
            for c in changes:
                if c["seq"] > last:
                    f.write(json.dumps(c, ensure_ascii=False) + "\n")
                    last = c["seq"]
            f.flush()
            os.fsync(f.fileno())

    return handle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hub", required=True, help="the hub's base URL")
    ap.add_argument("--feed", required=True, choices=["registry", "codes", "video", "dialer"])
    ap.add_argument("--api-key", help="an iam API key holding <feed>.feed.read")
    ap.add_argument("--token", help="or a bearer session token")
    ap.add_argument("--cursor-file", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="JSON Lines file the changes are appended to")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--follow", action="store_true", help="keep polling at the end of the feed")
    args = ap.parse_args()
    headers = {"X-API-Key": args.api_key} if args.api_key else {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.hub, timeout=30) as client:
        n = run(client, f"/api/v1/{args.feed}/feed", args.cursor_file, jsonl_sink(args.out), args.limit,
                headers, follow=args.follow)
    print(f"{n} changes")


if __name__ == "__main__":
    main()
