"""Durable store-and-forward queue for an edge device: one small SQLite file (WAL).

Everything the device must not lose (events, scan batches, acks) is written here before it is sent;
a row is deleted only when the broker has acknowledged it (QoS1 PUBACK). Bounded: when the queue holds
`max_messages` rows or `max_bytes` of payload, the configured policy applies — `drop_oldest` (default:
the newest picture of the world matters most at a camera site) or `reject_new` — and every drop is
counted so the heartbeat reports it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class OutboxFull(RuntimeError):
    pass


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    def __init__(
        self,
        path: Path,
        max_messages: int = 200_000,
        max_bytes: int = 512 * 1024 * 1024,
        on_full: Literal["drop_oldest", "reject_new"] = "drop_oldest",
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.on_full = on_full
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()
        row = self._db.execute("SELECT v FROM meta WHERE k='dropped'").fetchone()
        self.dropped = int(row[0]) if row else 0

    def put(self, topic: str, payload: bytes, qos: int = 1) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._make_room(len(payload)):
                    self._db.execute("ROLLBACK")
                    self._bump_dropped(1)
                    raise OutboxFull(
                        f"outbox full ({self._count} messages, {self._bytes} bytes); policy reject_new"
                    )
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, created) VALUES (?, ?, ?, ?)",
                    (topic, payload, qos, time.time()),
                )
                self._db.execute("COMMIT")
            except OutboxFull:
                raise
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._count += 1
            self._bytes += len(payload)
            return int(cur.lastrowid or 0)

    def _make_room(self, size: int) -> bool:
        over = self._count + 1 > self.max_messages or self._bytes + size > self.max_bytes
        if not over:
            return True
        if self.on_full == "reject_new":
            return False
        dropped = 0
        while self._count > 0 and (self._count + 1 > self.max_messages or self._bytes + size > self.max_bytes):
            rows = self._db.execute(
                "SELECT id, LENGTH(payload) FROM outbox ORDER BY id LIMIT 64"
            ).fetchall()
            for rid, n in rows:
                self._db.execute("DELETE FROM outbox WHERE id=?", (rid,))
                self._count -= 1
                self._bytes -= n
                dropped += 1
                if self._count + 1 <= self.max_messages and self._bytes + size <= self.max_bytes:
                    break
        if dropped:
            self._bump_dropped(dropped)
        return self._bytes + size <= self.max_bytes

    def _bump_dropped(self, n: int) -> None:
        self.dropped += n
        self._db.execute(
            "INSERT INTO meta (k, v) VALUES ('dropped', ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            (self.dropped,),
        )

    def pending(self, after_id: int, limit: int = 500) -> list[Row]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [Row(int(r[0]), r[1], bytes(r[2]), int(r[3])) for r in rows]

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            removed = 0
            freed = 0
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                marks = ",".join("?" * len(part))
                r = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)),0) FROM outbox WHERE id IN ({marks})", part
                ).fetchone()
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part)
                removed += r[0]
                freed += r[1]
            self._db.execute("COMMIT")
            self._count -= removed
            self._bytes -= freed

    def depth(self) -> int:
        return self._count

    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
