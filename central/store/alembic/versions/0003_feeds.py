"""Change feeds for codes, video and the dialer (docs/FEEDS.md): `codes_feed`, `video_feed`, `dialer_feed`,
the same columns as `central.store.feed.feed_table` (seq, at, type, org, data). Rows are appended in the
transaction of the change; the registry keeps its `registry_feed`.

No backfill: a feed starts with the changes made after this revision (history before it is in the
capabilities' own tables and the audit log).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FEEDS = ("codes_feed", "video_feed", "dialer_feed")


def upgrade() -> None:
    for name in FEEDS:
        op.create_table(
            name,
            sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                      nullable=False),
            sa.Column("at", sa.Text(), nullable=False),
            sa.Column("type", sa.Text(), nullable=False),
            sa.Column("org", sa.Text(), nullable=True),
            sa.Column("data", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("seq", name=op.f(f"pk_{name}")),
            sqlite_autoincrement=True,
        )


def downgrade() -> None:
    for name in reversed(FEEDS):
        op.drop_table(name)
