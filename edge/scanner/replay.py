"""Replay guard for single-use codes: accepted once per terminal, flagged when seen again, across reboots.

One SQLite table keyed by (kid, serial). An entry is useless once its code has expired (an expired code
is refused anyway), so rows past expiry + skew are purged and the file stays small.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class ReplayGuard:
    def __init__(self, path: Path, skew_s: float = 300) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.skew_s = skew_s
        self._lock = threading.Lock()
        # The agent's scan thread and the CLI share this class; one connection guarded by a lock.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a single-use pass must not be re-usable after a crash
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (kid TEXT NOT NULL, serial TEXT NOT NULL, first_seen REAL NOT NULL,"
            " expires_at INTEGER NOT NULL, PRIMARY KEY (kid, serial))"
        )
        self._last_purge = 0.0

    def first_use(self, kid: str, serial: str, expires_at: int, now: float | None = None) -> tuple[bool, float]:
        """Record a use; (True, now) the first time, (False, first_seen) on a replay."""
        t = time.time() if now is None else now
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen (kid, serial, first_seen, expires_at) VALUES (?, ?, ?, ?)",
                (kid, serial, t, int(expires_at)),
            )
            if cur.rowcount == 1:
                self._maybe_purge(t)
                return True, t
            row = self._db.execute("SELECT first_seen FROM seen WHERE kid = ? AND serial = ?",
                                   (kid, serial)).fetchone()
            return False, float(row[0]) if row else t

    def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge > 3600:
            self._db.execute("DELETE FROM seen WHERE expires_at < ?", (now - self.skew_s,))
            self._last_purge = now

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
