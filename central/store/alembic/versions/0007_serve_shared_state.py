"""State several `hub serve` processes share (issue 17): `iam_login_attempts` (the login rate limit's
moving window, one row per counted attempt per key: `ip:<address>` and `user:<name>`) and `codes_meta`
(the generation of the codes service's hot-path caches, changed in the transaction of every change they
depend on, so every process drops its cached copy at its next lookup). The IAM role cache's generation
lives in the existing `iam_meta` (key `roles_generation`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "iam_login_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_iam_login_attempts")),
    )
    op.create_index("iam_login_attempts_key", "iam_login_attempts", ["key", "at"], unique=False)
    op.create_index("iam_login_attempts_at", "iam_login_attempts", ["at"], unique=False)
    op.create_table(
        "codes_meta",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_codes_meta")),
    )


def downgrade() -> None:
    op.drop_table("codes_meta")
    op.drop_index("iam_login_attempts_at", table_name="iam_login_attempts")
    op.drop_index("iam_login_attempts_key", table_name="iam_login_attempts")
    op.drop_table("iam_login_attempts")
