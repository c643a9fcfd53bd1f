"""Shared work is leased (issue 17 point 3): MQTT video alerts are sent from `video_alerts` rows, not from
one process's memory: each row carries its message (`body`), when it is due (`next_at`) and, while a hub
sends it, that hub's lease (`lease_owner`, `lease_until`). Rows left `pending` by an older hub have no
message to send (it was in that process's memory): they become `failed`, saying so. `registry_imports`:
an uploaded import's lease and progress, so the same upload sent again after its importer died goes on
after the last chunk stored.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("video_alerts") as b:
        b.add_column(sa.Column("body", sa.Text(), nullable=True))
        b.add_column(sa.Column("next_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("lease_owner", sa.Text(), nullable=True))
        b.add_column(sa.Column("lease_until", sa.Float(), nullable=True))
    op.create_index("video_alerts_due", "video_alerts", ["status", "next_at"], unique=False)
    op.create_table(
        "registry_imports",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("org", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("rows_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_imports")),
    )
    op.execute("UPDATE video_alerts SET status = 'failed', error = 'not sent: its hub stopped before revision 0009"
               " kept alerts in the database' WHERE status = 'pending'")


def downgrade() -> None:
    op.drop_table("registry_imports")
    op.drop_index("video_alerts_due", table_name="video_alerts")
    with op.batch_alter_table("video_alerts") as b:
        b.drop_column("lease_until")
        b.drop_column("lease_owner")
        b.drop_column("next_at")
        b.drop_column("body")
