"""Snapshots move out of the database: `events` and `video_cases` get `snapshot_key` + `snapshot_sha256` (a
central.media key and the file's SHA-256). The old `snapshot` BLOB columns stay, read as a fallback, until
the hub's `media-move` worker (central/retention/service.py) has moved every BLOB into a file; a later
revision drops them.

Partial indexes (both backends support `WHERE` on an index): by key, for the purge's "does any row still
refer to this file" check; by primary key over rows that still hold a BLOB, so the mover finds them without
a table scan and costs nothing once they are gone. Neither touches rows without a snapshot, so the ingest
path (most events have none) pays nothing for them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TABLES = (("events", "idx_events", "seq"), ("video_cases", "video_cases", "id"))


def upgrade() -> None:
    for table, prefix, pk in _TABLES:
        op.add_column(table, sa.Column("snapshot_key", sa.Text(), nullable=True))
        op.add_column(table, sa.Column("snapshot_sha256", sa.Text(), nullable=True))
        has_key = sa.text("snapshot_key IS NOT NULL")
        has_blob = sa.text("snapshot IS NOT NULL")
        op.create_index(f"{prefix}_snapshot_key", table, ["snapshot_key"], sqlite_where=has_key,
                        postgresql_where=has_key)
        op.create_index(f"{prefix}_legacy_snapshot", table, [pk], sqlite_where=has_blob, postgresql_where=has_blob)


def downgrade() -> None:
    for table, prefix, _pk in _TABLES:
        op.drop_index(f"{prefix}_legacy_snapshot", table_name=table)
        op.drop_index(f"{prefix}_snapshot_key", table_name=table)
        with op.batch_alter_table(table) as b:
            b.drop_column("snapshot_sha256")
            b.drop_column("snapshot_key")
