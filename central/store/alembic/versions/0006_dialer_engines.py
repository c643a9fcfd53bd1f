"""Dialer engines that die are not a problem (issue 20): `dialer_engines` (each engine process reports
its id, host, pid, call capacity and trunk registration every few seconds), a lease on each claimed
contact (`lease_until`, the database clock's UNIX seconds: an engine that stops renewing it has died and
any live engine releases the contact), and a reason beside every outcome (`reason`, and the dialog node
a call ended at, `end_node`) on CDRs and contacts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dialer_engines",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Text(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("trunk", sa.Text(), nullable=True),
        sa.Column("reg_state", sa.Text(), nullable=True),
        sa.Column("reg_status", sa.Integer(), nullable=True),
        sa.Column("reg_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dialer_engines")),
    )
    op.add_column("dialer_contacts", sa.Column("lease_until", sa.Float(), nullable=True))
    op.add_column("dialer_contacts", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("dialer_cdrs", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("dialer_cdrs", sa.Column("end_node", sa.Text(), nullable=True))
    op.create_index("dialer_contacts_lease", "dialer_contacts", ["status", "lease_until"], unique=False)


def downgrade() -> None:
    op.drop_index("dialer_contacts_lease", table_name="dialer_contacts")
    with op.batch_alter_table("dialer_cdrs") as b:
        b.drop_column("end_node")
        b.drop_column("reason")
    with op.batch_alter_table("dialer_contacts") as b:
        b.drop_column("reason")
        b.drop_column("lease_until")
    op.drop_table("dialer_engines")
