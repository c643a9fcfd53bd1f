"""Tables the bridge writes: events (once per event_id), scan batches/records, rejected payloads."""

from __future__ import annotations

from typing import Any

import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db["events"].create(
        {"event_id": str, "site": str, "device": str, "kind": str, "ts": str, "received_at": str, "phase": str,
         "incident_id": str, "camera": str, "zone": str, "score": float, "count": int, "payload": str,
         "snapshot": bytes},
        pk="event_id", not_null={"site", "device", "kind", "ts", "received_at"},
    )
    db["events"].create_index(["site", "device", "ts"])
    db["events"].create_index(["kind", "ts"])
    db["scan_batches"].create(
        {"batch_id": str, "site": str, "device": str, "received_at": str, "n": int}, pk="batch_id"
    )
    db["scans"].create(
        {"scan_id": str, "batch_id": str, "site": str, "device": str, "serial": str, "code_system": str,
         "dept": str, "verdict": str, "reason": str, "ts": str, "location": str},
        pk="scan_id",
    )
    db["scans"].create_index(["serial"])
    db["scans"].create_index(["dept", "ts"])
    db["ingest_rejects"].create(
        {"id": int, "at": str, "topic": str, "reason": str, "detail": str}, pk="id"
    )
    db["ingest_rejects"].create_index(["reason"])


MIGRATIONS = [(1, _v1)]


def existing_event_ids(db: sqlite_utils.Database, ids: list[str]) -> set[str]:
    return _existing(db, "events", "event_id", ids)


def insert_events(db: sqlite_utils.Database, rows: list[tuple[Any, ...]]) -> None:
    db.conn.executemany(
        "INSERT OR IGNORE INTO events (event_id, site, device, kind, ts, received_at, phase, incident_id, camera,"
        " zone, score, count, payload, snapshot) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )


def _existing(db: sqlite_utils.Database, table: str, column: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        marks = ",".join("?" * len(part))
        found.update(r[0] for r in db.conn.execute(f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", part))
    return found


def existing_batches(db: sqlite_utils.Database, ids: list[str]) -> set[str]:
    return _existing(db, "scan_batches", "batch_id", ids)


def existing_scan_ids(db: sqlite_utils.Database, ids: list[str]) -> set[str]:
    return _existing(db, "scans", "scan_id", ids)


def insert_scan_batch(db: sqlite_utils.Database, batch: tuple[Any, ...], records: list[tuple[Any, ...]]) -> None:
    db.conn.execute("INSERT OR IGNORE INTO scan_batches VALUES (?,?,?,?,?)", batch)
    db.conn.executemany("INSERT OR IGNORE INTO scans VALUES (?,?,?,?,?,?,?,?,?,?,?)", records)


def insert_rejects(db: sqlite_utils.Database, rows: list[tuple[str, str, str, str]]) -> None:
    db.conn.executemany("INSERT INTO ingest_rejects (at, topic, reason, detail) VALUES (?,?,?,?)", rows)


def reject_counts(db: sqlite_utils.Database) -> dict[str, int]:
    return {r[0]: r[1] for r in db.conn.execute("SELECT reason, COUNT(*) FROM ingest_rejects GROUP BY reason")}


def count_events(db: sqlite_utils.Database) -> int:
    return int(db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
