"""Video tables: cases (one per incident, across events and adjacent cameras), their events, feedback per
camera+rule, routing rules, alert deliveries, site->org mapping, camera positions/adjacency."""

from __future__ import annotations

import sqlite_utils

SCHEMA = """
CREATE TABLE video_sites (site TEXT PRIMARY KEY, org_path TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE video_cameras (
  site TEXT NOT NULL, device TEXT NOT NULL, camera TEXT NOT NULL,
  lat REAL, lon REAL, neighbours TEXT NOT NULL DEFAULT '[]',  -- JSON list of "device/camera" on the same site
  updated_at TEXT NOT NULL,
  PRIMARY KEY (site, device, camera)
);
CREATE TABLE video_cases (
  id INTEGER PRIMARY KEY,
  site TEXT NOT NULL, device TEXT NOT NULL, camera TEXT, zone TEXT, kind TEXT NOT NULL,
  org TEXT NOT NULL,
  status TEXT NOT NULL,            -- new | reviewed | dispatched | acknowledged | resolved | dismissed
  verdict TEXT, reason TEXT,
  score REAL NOT NULL DEFAULT 0, peak_count INTEGER,
  first_ts TEXT NOT NULL, last_ts TEXT NOT NULL, live INTEGER NOT NULL DEFAULT 1,  -- live: incident not ended
  event_count INTEGER NOT NULL DEFAULT 0, cameras TEXT NOT NULL DEFAULT '[]',
  lat REAL, lon REAL,
  snapshot BLOB,
  department TEXT, route_id INTEGER,
  due_at TEXT,                     -- SLA deadline of the current step
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
  reviewed_at TEXT, dispatched_at TEXT, acknowledged_at TEXT, resolved_at TEXT
);
CREATE INDEX video_cases_open ON video_cases(site, kind, status, last_ts);
CREATE INDEX video_cases_org ON video_cases(org, status);
CREATE TABLE video_case_events (
  event_id TEXT PRIMARY KEY, case_id INTEGER NOT NULL REFERENCES video_cases(id),
  site TEXT NOT NULL, device TEXT NOT NULL, incident_id TEXT, camera TEXT,
  phase TEXT NOT NULL, ts TEXT NOT NULL, score REAL, count INTEGER
);
CREATE INDEX video_case_events_incident ON video_case_events(site, device, incident_id);
CREATE INDEX video_case_events_case ON video_case_events(case_id, ts);
CREATE TABLE video_case_log (
  id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, ts TEXT NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX video_case_log_case ON video_case_log(case_id, id);
CREATE TABLE video_feedback (
  site TEXT NOT NULL, device TEXT NOT NULL, camera TEXT NOT NULL, kind TEXT NOT NULL, zone TEXT NOT NULL,
  confirmed INTEGER NOT NULL DEFAULT 0, false_positive INTEGER NOT NULL DEFAULT 0,
  reasons TEXT NOT NULL DEFAULT '[]',  -- the last 20 false-positive reasons, newest last
  updated_at TEXT NOT NULL,
  PRIMARY KEY (site, device, camera, kind, zone)
);
CREATE TABLE video_routes (
  id INTEGER PRIMARY KEY, org_prefix TEXT NOT NULL, kind TEXT NOT NULL,  -- kind '*' = any
  department TEXT NOT NULL, webhook_url TEXT, webhook_secret TEXT, mqtt INTEGER NOT NULL DEFAULT 1,
  ack_sla_min REAL NOT NULL, resolve_sla_min REAL NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE video_alerts (
  id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL,
  status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
  created_at TEXT NOT NULL, sent_at TEXT
);
CREATE INDEX video_alerts_case ON video_alerts(case_id);
"""


def _v1(db: sqlite_utils.Database) -> None:
    # Migrations run inside Store.tx(); executescript would commit behind its back, so one at a time.
    for stmt in _statements():
        db.execute(stmt)


def _statements() -> list[str]:
    out, buf = [], []
    for line in SCHEMA.splitlines():
        buf.append(line.split("--")[0])
        if line.rstrip().endswith(";"):
            out.append("\n".join(buf))
            buf = []
    return out


def _v2(db: sqlite_utils.Database) -> None:
    # Correlation consumes the bridge's `events` table from a durable cursor (rowid), in its own
    # transactions: ingest stays fast and a crash between the two resumes exactly where it stopped.
    db["video_cursor"].create({"id": int, "last_rowid": int}, pk="id")
    last = db.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]
    db["video_cursor"].insert({"id": 1, "last_rowid": last})


MIGRATIONS = [(1, _v1), (2, _v2)]
