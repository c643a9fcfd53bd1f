"""Alembic environment of the hub: always run by `central.store.migrations.upgrade`, on the connection
(and inside the transaction) the store opened, so a failing revision leaves nothing half-applied."""

from __future__ import annotations

from alembic import context

from central.store import metadata
from central.store.migrations import load_tables

connection = context.config.attributes["connection"]
load_tables()
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite's ALTER TABLE: move-and-copy
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
