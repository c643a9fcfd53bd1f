"""Baseline: every capability's tables as their stores declare them, plus each store's dialect extras
(FTS5 / pg_trgm indexes, append-only triggers).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import context

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    from central.store.migrations import create_missing

    create_missing(context.config.attributes["db"])


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: restore a backup instead")
