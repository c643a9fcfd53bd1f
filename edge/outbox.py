"""Durable store-and-forward queue for an edge device: one small SQLite file (WAL).

Everything the device must not lose (events, scan batches, acks) is written here before it is sent. A
row with a `receipt_id` (the message's own event_id / batch_id / cmd_id) is deleted only when the HUB
confirms it stored it (`confirm`, from a receipt): a broker's PUBACK is not enough, since mosquitto keeps
what it acknowledged in memory and saves it to disk only every few seconds. A row without one is deleted
on the broker's PUBACK (`delete`). Bounded: unconfirmed rows count too; when the queue holds
`max_messages` rows or `max_bytes` of payload, the configured policy applies — `drop_oldest` (default:
the newest picture of the world matters most at a camera site) or `reject_new` — and every drop is
counted so the heartbeat reports it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
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
    receipt_id: str | None = None


class Outbox:
    def __init__(
        self,
        path: Path,
        max_messages: int = 200_000,
        max_bytes: int = 512 * 1024 * 1024,
        on_full: Literal["drop_oldest", "reject_new"] = "drop_oldest",
        derive_receipt_id: Callable[[str, bytes], str | None] | None = None,
    ) -> None:
        """`derive_receipt_id(topic, payload)` fills the receipt id of rows queued by a build that had none
        (run once, when this file is upgraded), so they too wait for the hub's receipt."""
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
            " payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL, receipt_id TEXT)"
        )
        if "receipt_id" not in {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}:
            self._upgrade(derive_receipt_id)
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_receipt ON outbox (receipt_id)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()
        row = self._db.execute("SELECT v FROM meta WHERE k='dropped'").fetchone()
        self.dropped = int(row[0]) if row else 0

    def _upgrade(self, derive: Callable[[str, bytes], str | None] | None) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("ALTER TABLE outbox ADD COLUMN receipt_id TEXT")
        if derive is not None:
            for rid, topic, payload in self._db.execute("SELECT id, topic, payload FROM outbox").fetchall():
                key = derive(topic, bytes(payload))
                if key is not None:
                    self._db.execute("UPDATE outbox SET receipt_id=? WHERE id=?", (key, rid))
        self._db.execute("COMMIT")

    def put(self, topic: str, payload: bytes, qos: int = 1, receipt_id: str | None = None) -> int:
        """Queue durably. With `receipt_id` the row stays until `confirm([receipt_id])`."""
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
                    "INSERT INTO outbox (topic, payload, qos, created, receipt_id) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, qos, time.time(), receipt_id),
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
                "SELECT id, topic, payload, qos, receipt_id FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Row(int(r[0]), r[1], bytes(r[2]), int(r[3]), r[4]) for r in rows]

    def get(self, ids: list[int]) -> list[Row]:
        """The rows still queued among `ids`, in id order (a row dropped meanwhile is simply absent)."""
        out: list[Row] = []
        with self._lock:
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                marks = ",".join("?" * len(part))
                out += [
                    Row(int(r[0]), r[1], bytes(r[2]), int(r[3]), r[4])
                    for r in self._db.execute(
                        f"SELECT id, topic, payload, qos, receipt_id FROM outbox WHERE id IN ({marks})", part
                    )
                ]
        return sorted(out, key=lambda r: r.id)

    def delete(self, ids: list[int]) -> None:
        """Remove rows by row id (those the broker's PUBACK settles)."""
        self._remove("id", ids)

    def confirm(self, receipt_ids: list[str]) -> list[int]:
        """Remove the rows the hub confirmed; returns their row ids (unknown receipt ids are ignored: a
        receipt for a copy already confirmed, or for a row dropped while the queue was full)."""
        return self._remove("receipt_id", receipt_ids)

    def _remove(self, column: str, keys: list[int] | list[str]) -> list[int]:
        if not keys:
            return []
        gone: list[int] = []
        freed = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for chunk in range(0, len(keys), 500):
                    part = keys[chunk : chunk + 500]
                    marks = ",".join("?" * len(part))
                    rows = self._db.execute(
                        f"DELETE FROM outbox WHERE {column} IN ({marks}) RETURNING id, LENGTH(payload)", part
                    ).fetchall()
                    gone += [int(r[0]) for r in rows]
                    freed += sum(int(r[1]) for r in rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._count -= len(gone)
            self._bytes -= freed
        return gone

    def depth(self) -> int:
        return self._count

    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
