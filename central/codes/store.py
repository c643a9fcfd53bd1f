"""Tables of the city code authority. Issued codes are keyed by serial (the revocation/verify lookup is
one primary-key probe even with millions of codes)."""

from __future__ import annotations

import sqlite_utils

_V1 = """
CREATE TABLE codes_departments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    org TEXT NOT NULL,
    webhook_url TEXT,
    webhook_secret TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE codes_duties (
    dept_id TEXT NOT NULL,
    scene_type TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (dept_id, scene_type)
) WITHOUT ROWID;
CREATE TABLE codes_applications (
    id INTEGER PRIMARY KEY,
    dept_id TEXT NOT NULL REFERENCES codes_departments(id),
    applicant TEXT NOT NULL,
    scene_name TEXT NOT NULL,
    scene_type TEXT NOT NULL,
    code_type TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    purpose TEXT NOT NULL,
    share_commitment INTEGER NOT NULL,
    validity TEXT NOT NULL,
    single_use INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    checks TEXT,
    code_system TEXT,
    auth_id TEXT UNIQUE,
    decided_by TEXT,
    decided_at TEXT,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX codes_applications_dup ON codes_applications(entity_type, scene_type, status);
CREATE INDEX codes_applications_dept ON codes_applications(dept_id, status);
CREATE TABLE codes_appkeys (
    id INTEGER PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES codes_applications(id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE codes_urls (
    id INTEGER PRIMARY KEY,
    dept_id TEXT,
    url TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'pending',
    filed_by TEXT NOT NULL,
    decided_by TEXT,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE codes_keys (
    kid TEXT PRIMARY KEY,
    dept_id TEXT NOT NULL,
    alg TEXT NOT NULL,
    pub TEXT NOT NULL,
    status TEXT NOT NULL,
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX codes_keys_dept ON codes_keys(dept_id, status);
CREATE TABLE codes_issued (
    serial TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL,
    dept_id TEXT NOT NULL,
    code_system TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    text TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    revoked_at INTEGER,
    scans INTEGER NOT NULL DEFAULT 0,
    last_scan_at INTEGER
) WITHOUT ROWID;
CREATE INDEX codes_issued_identity ON codes_issued(identity_id);
CREATE INDEX codes_issued_app ON codes_issued(app_id, issued_at);
CREATE TABLE codes_revoked_identities (
    identity_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE codes_lists (
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    published_at TEXT NOT NULL,
    PRIMARY KEY (kind, version)
) WITHOUT ROWID;
CREATE TABLE codes_scans (
    scan_id TEXT PRIMARY KEY,
    serial TEXT,
    app_id INTEGER,
    dept_id TEXT,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX codes_scans_serial ON codes_scans(serial);
CREATE INDEX codes_scans_app_ts ON codes_scans(app_id, ts);
CREATE TABLE codes_verify_stats (
    day TEXT NOT NULL,
    app_id INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (day, app_id, verdict)
) WITHOUT ROWID;
CREATE TABLE codes_webhooks (
    id INTEGER PRIMARY KEY,
    dept_id TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX codes_webhooks_due ON codes_webhooks(status, next_at);
CREATE TABLE codes_rules (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


def _v1(db: sqlite_utils.Database) -> None:
    for stmt in _V1.split(";"):
        if stmt.strip():
            db.conn.execute(stmt)


MIGRATIONS = [(1, _v1)]
