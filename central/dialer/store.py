"""Dialer tables. Phones are stored encrypted (central.iam.pii) with a keyed blind index for the
do-not-call lookup and a masked copy for display."""

from __future__ import annotations

import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db.conn.executescript(
        """
        CREATE TABLE dialer_templates (
            id INTEGER PRIMARY KEY, key TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
            org TEXT NOT NULL, language TEXT NOT NULL, body TEXT NOT NULL, based_on TEXT,
            builtin INTEGER NOT NULL DEFAULT 0, created_by TEXT, created_at TEXT NOT NULL,
            UNIQUE (key, version));
        CREATE TABLE dialer_tasks (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, org TEXT NOT NULL, template_key TEXT NOT NULL,
            template_version INTEGER NOT NULL, template TEXT NOT NULL, schedule TEXT NOT NULL,
            status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, webhook_url TEXT, webhook_secret TEXT,
            created_by TEXT, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT);
        CREATE TABLE dialer_contacts (
            id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL REFERENCES dialer_tasks(id), row_no INTEGER,
            phone_enc TEXT NOT NULL, phone_idx TEXT NOT NULL, phone_masked TEXT NOT NULL, name TEXT,
            vars TEXT NOT NULL DEFAULT '{}', priority INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_at TEXT, outcome TEXT, answers TEXT,
            updated_at TEXT NOT NULL);
        CREATE INDEX dialer_contacts_due ON dialer_contacts (task_id, status, next_at);
        CREATE UNIQUE INDEX dialer_contacts_phone ON dialer_contacts (task_id, phone_idx);
        CREATE TABLE dialer_cdrs (
            id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, contact_id INTEGER NOT NULL, attempt INTEGER,
            engine TEXT, started_at TEXT NOT NULL, answered_at TEXT, ended_at TEXT, sip_status INTEGER,
            outcome TEXT NOT NULL, answers TEXT, asr_text TEXT, transcript TEXT, recording TEXT,
            duration_s REAL);
        CREATE INDEX dialer_cdrs_task ON dialer_cdrs (task_id, contact_id);
        CREATE TABLE dialer_dnc (
            phone_idx TEXT NOT NULL, org TEXT NOT NULL, phone_masked TEXT, reason TEXT,
            added_at TEXT NOT NULL, PRIMARY KEY (phone_idx, org));
        """
    )


def _v2(db: sqlite_utils.Database) -> None:
    # Several engine processes share the store (the pjsua2 wheel allows 4 calls per process): each
    # claim records its engine so a restarting engine releases only its own unfinished attempts.
    db.conn.execute("ALTER TABLE dialer_contacts ADD COLUMN claimed_by TEXT")


MIGRATIONS = [(1, _v1), (2, _v2)]
