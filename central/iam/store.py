"""IAM tables. Times are UNIX seconds (REAL) so the service clock is injectable and comparisons are cheap."""

from __future__ import annotations

import sqlite_utils

_V1 = """
        CREATE TABLE iam_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE iam_orgs (
            path TEXT PRIMARY KEY, parent TEXT, name TEXT NOT NULL, created_at REAL NOT NULL
        );
        CREATE INDEX iam_orgs_parent ON iam_orgs(parent);
        CREATE TABLE iam_users (
            id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, org TEXT NOT NULL,
            pw_hash TEXT NOT NULL, must_change INTEGER NOT NULL DEFAULT 1,
            failed INTEGER NOT NULL DEFAULT 0, first_failed_at REAL, locked_until REAL,
            disabled INTEGER NOT NULL DEFAULT 0,
            phone_enc TEXT, phone_bi TEXT, id_card_enc TEXT, id_card_bi TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX iam_users_phone_bi ON iam_users(phone_bi);
        CREATE INDEX iam_users_id_card_bi ON iam_users(id_card_bi);
        CREATE TABLE iam_roles (
            name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', patterns TEXT NOT NULL,
            builtin INTEGER NOT NULL DEFAULT 0, created_by TEXT, created_at REAL NOT NULL
        );
        -- A binding (user or API key, role, org). parent_id = the granter's binding it was delegated from:
        -- revoking a binding revokes its whole delegation subtree.
        CREATE TABLE iam_bindings (
            id INTEGER PRIMARY KEY, user_id INTEGER, apikey_id INTEGER, role TEXT NOT NULL,
            org TEXT NOT NULL, parent_id INTEGER, granted_by TEXT NOT NULL,
            expires_at REAL, revoked_at REAL, created_at REAL NOT NULL
        );
        CREATE INDEX iam_bindings_user ON iam_bindings(user_id);
        CREATE INDEX iam_bindings_key ON iam_bindings(apikey_id);
        CREATE INDEX iam_bindings_parent ON iam_bindings(parent_id);
        CREATE TABLE iam_sessions (
            token_hash TEXT PRIMARY KEY, user_id INTEGER NOT NULL, created_at REAL NOT NULL,
            last_seen REAL NOT NULL, ended_at REAL, must_change INTEGER NOT NULL DEFAULT 0, client TEXT
        );
        CREATE INDEX iam_sessions_user ON iam_sessions(user_id);
        CREATE TABLE iam_apikeys (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
            created_by TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL,
            last_used_at REAL
        );
        CREATE TABLE iam_audit (
            seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            target TEXT, org TEXT, detail TEXT NOT NULL, alg TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL
        );
        CREATE INDEX iam_audit_org ON iam_audit(org);
        -- Append-only inside the product: SQL cannot change or delete audit rows without dropping these.
        CREATE TRIGGER iam_audit_no_update BEFORE UPDATE ON iam_audit
            BEGIN SELECT RAISE(ABORT, 'iam_audit is append-only'); END;
        CREATE TRIGGER iam_audit_no_delete BEFORE DELETE ON iam_audit
            BEGIN SELECT RAISE(ABORT, 'iam_audit is append-only'); END;
"""


def _v1(db: sqlite_utils.Database) -> None:
    # Not executescript(): it COMMITs the migration's open transaction. Statements end with ";\n".
    for stmt in _V1.split(";\n"):
        if "CREATE" in stmt:
            db.conn.execute(stmt)


_V2 = """
        -- A custom role applies only inside the org subtree it was created in (NULL: built-in, anywhere).
        ALTER TABLE iam_roles ADD COLUMN scope TEXT;
        -- Separation of duties: everyone who filed or edited an object (an application, a URL filing):
        -- none of them may decide it.
        CREATE TABLE iam_makers (
            object TEXT NOT NULL, actor TEXT NOT NULL, act TEXT NOT NULL, at REAL NOT NULL,
            PRIMARY KEY (object, actor, act)
        );
        -- Failed logins of names that are no account: counted and locked like real ones, so the answers
        -- (401, then 423 after the fifth failure) never tell which names exist.
        CREATE TABLE iam_login_failures (
            username TEXT PRIMARY KEY, failed INTEGER NOT NULL, first_failed_at REAL NOT NULL, locked_until REAL
        );
"""


def _v2(db: sqlite_utils.Database) -> None:
    for stmt in _V2.split(";\n"):
        if "CREATE" in stmt or "ALTER" in stmt:
            db.conn.execute(stmt)


# v2: scoped custom roles, maker-checker records, login failures of any name (the audit chain needed no schema change).
MIGRATIONS = [(1, _v1), (2, _v2)]
