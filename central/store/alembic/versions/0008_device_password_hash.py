"""Devices' broker password as a hash on their row (`devices.password_hash`, mosquitto's own PBKDF2-SHA512
format), so a broker that asks the hub (EMQX's HTTP authentication hook) checks the same credential the
mosquitto password file holds. NULL for devices provisioned before: the mosquitto backend copies their
hash from its password file at hub start.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("password_hash", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as b:
        b.drop_column("password_hash")
