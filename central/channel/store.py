"""Tables of the access channel pilot. A grant row keeps the peer's public key, never its private key (that
is handed out once, inside the WireGuard config)."""

from __future__ import annotations

import sqlite_utils

_V1 = """
CREATE TABLE channel_scenes (
    app_id INTEGER PRIMARY KEY,
    org TEXT NOT NULL,
    service_name TEXT NOT NULL,
    service_addr TEXT NOT NULL,
    service_port INTEGER NOT NULL,
    ttl_s INTEGER NOT NULL,
    gateway_public_key TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    terminals TEXT NOT NULL DEFAULT '[]',
    enabled INTEGER NOT NULL DEFAULT 1,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE channel_grants (
    id TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES channel_scenes(app_id),
    org TEXT NOT NULL,
    serial TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    via TEXT NOT NULL,
    peer_public_key TEXT NOT NULL,
    peer_address TEXT NOT NULL,
    allowed_ips TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    ended_at REAL,
    end_reason TEXT
) WITHOUT ROWID;
CREATE INDEX channel_grants_active ON channel_grants(status, expires_at);
CREATE INDEX channel_grants_serial ON channel_grants(serial);
CREATE UNIQUE INDEX channel_grants_addr ON channel_grants(peer_address) WHERE status = 'active';
"""


def _v1(db: sqlite_utils.Database) -> None:
    for stmt in _V1.split(";"):
        if stmt.strip():
            db.conn.execute(stmt)


MIGRATIONS = [(1, _v1)]

GRANT_COLS = ("id", "app_id", "org", "serial", "identity_id", "via", "peer_public_key", "peer_address", "allowed_ips",
              "issued_at", "expires_at", "status", "ended_at", "end_reason")
SCENE_COLS = ("app_id", "org", "service_name", "service_addr", "service_port", "ttl_s", "gateway_public_key",
              "endpoint", "terminals", "enabled", "created_by", "created_at")


def revoked_serials(db: sqlite_utils.Database, serials: list[str]) -> dict[str, str]:
    """serial -> why, for those of `serials` that central/codes now counts as revoked (the code itself, every
    code of its entity, or its department key). Read-only over codes' tables: the same facts its
    verify_online checks, without counting a verification in the supervision statistics."""
    out: dict[str, str] = {}
    for i in range(0, len(serials), 500):
        part = serials[i : i + 500]
        marks = ",".join("?" * len(part))
        rows = db.conn.execute(
            "SELECT c.serial, c.status, k.status, (SELECT 1 FROM codes_revoked_identities r"
            " WHERE r.identity_id = c.identity_id) FROM codes_issued c JOIN codes_keys k ON k.kid = c.kid"
            f" WHERE c.serial IN ({marks})", part)  # noqa: S608
        for serial, status, key_status, id_revoked in rows:
            if status == "revoked":
                out[serial] = "code revoked"
            elif key_status == "revoked":
                out[serial] = "department key revoked"
            elif id_revoked:
                out[serial] = "all codes of the entity revoked"
    return out
