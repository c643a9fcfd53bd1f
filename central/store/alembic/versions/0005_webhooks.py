"""One durable webhook outbox for every capability (central/webhooks): `webhooks_endpoints` (one receiver
each, with the secret and, during a rotation, the previous one until it expires) and `webhooks_deliveries`
(pending / delivering under a lease / delivered / dead).

Codes' own queue (`codes_webhooks`) moves into it: every department with a webhook URL becomes endpoint
`codes:<dept>` with its secret, every pending row a pending delivery (`webhook-id` `msg_codes_<id>`) with
its tries so far; sent and dead rows are history and are dropped with the table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhooks_endpoints",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("org", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("source_secret", sa.Text(), nullable=False),
        sa.Column("prev_secret", sa.Text(), nullable=True),
        sa.Column("prev_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_endpoints")),
    )
    op.create_table(
        "webhooks_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("endpoint_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("delivered_at", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhooks_endpoints.id"],
                                name=op.f("fk_webhooks_deliveries_endpoint_id_webhooks_endpoints")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks_deliveries")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_webhooks_deliveries_msg_id")),
    )
    op.create_index("webhooks_deliveries_due", "webhooks_deliveries", ["status", "next_at"], unique=False)
    op.create_index("webhooks_deliveries_endpoint", "webhooks_deliveries", ["endpoint_id", "status"], unique=False)
    op.create_index("webhooks_deliveries_ref", "webhooks_deliveries", ["ref"], unique=False)

    op.execute(
        "INSERT INTO webhooks_endpoints (id, org, url, secret, source_secret, created_at, updated_at)"
        " SELECT 'codes:' || id, org, webhook_url, COALESCE(webhook_secret, ''), COALESCE(webhook_secret, ''),"
        " created_at, created_at FROM codes_departments WHERE webhook_url IS NOT NULL")
    op.execute(
        "INSERT INTO webhooks_deliveries (msg_id, endpoint_id, event_type, body, status, attempts, next_at,"
        " last_error, created_at)"
        " SELECT 'msg_codes_' || CAST(w.id AS TEXT), 'codes:' || w.dept_id, w.event, w.body, 'pending',"
        " w.attempts, w.next_at, w.last_error, w.created_at FROM codes_webhooks w"
        " JOIN webhooks_endpoints e ON e.id = 'codes:' || w.dept_id WHERE w.status = 'pending' ORDER BY w.id")
    op.drop_index("codes_webhooks_due", table_name="codes_webhooks")
    op.drop_table("codes_webhooks")


def downgrade() -> None:
    op.create_table(
        "codes_webhooks",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("dept_id", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_codes_webhooks")),
    )
    op.create_index("codes_webhooks_due", "codes_webhooks", ["status", "next_at"], unique=False)
    op.drop_index("webhooks_deliveries_ref", table_name="webhooks_deliveries")
    op.drop_index("webhooks_deliveries_endpoint", table_name="webhooks_deliveries")
    op.drop_index("webhooks_deliveries_due", table_name="webhooks_deliveries")
    op.drop_table("webhooks_deliveries")
    op.drop_table("webhooks_endpoints")
