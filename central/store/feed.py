"""Append-only change feeds (docs/FEEDS.md): one table per capability, the same columns everywhere, and the
one rule that makes a resuming reader exact: a seq becomes visible only in seq order.

SQLite has one writer at a time, so seqs commit in order. PostgreSQL hands seqs out from a sequence before
commit, so two writers could commit 11 before 10 and a reader at 11 would never see 10; `append` therefore
takes `dialect.serialize(db, <table>)` and holds it until the writer's transaction ends."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.store import dialect, metadata
from central.store.dialect import BigId

if TYPE_CHECKING:
    from central.store import Db


def feed_table(name: str) -> sa.Table:
    """A capability's feed table (declare it in that capability's store and list it in its TABLES)."""
    return sa.Table(
        name, metadata,
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Text, nullable=False),  # ISO-8601 UTC, when the change committed (near enough)
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("org", sa.Text),  # the org path that scopes the row; NULL: visible to city-wide scopes only
        sa.Column("data", sa.Text, nullable=False),  # JSON object
        sqlite_autoincrement=True,  # a seq is never handed out twice, even after the newest row is deleted
    )


def org_in(col: Any, scopes: Iterable[str]) -> Any:
    """`col` lies under one of `scopes` (equal or a `/`-prefix), as a range test so the org index is used."""
    parts = []
    for s in dict.fromkeys(scopes):
        if s == "/":
            return sa.true()
        s = s.rstrip("/")
        parts.append(sa.or_(col == s, sa.and_(col > s + "/", col < s + "0")))  # '0' sorts right after '/'
    return sa.or_(*parts) if parts else sa.false()


def append(db: Db, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows of {at, type, org, data (JSON text)} inside the writer's transaction."""
    if not rows:
        return
    dialect.serialize(db, table.name)
    db.run(sa.insert(table), list(rows))


def page(db: Db, table: sa.Table, after: int, scopes: Iterable[str], limit: int) -> list[dict[str, Any]]:
    """Rows with seq > after whose org is inside `scopes`, oldest first."""
    c = table.c
    return db.all(sa.select(c.seq, c.at, c.type, c.org, c.data)
                  .where(c.seq > after, org_in(c.org, scopes)).order_by(c.seq).limit(limit))


def last_seq(db: Db, table: sa.Table) -> int:
    return int(db.scalar(sa.select(sa.func.coalesce(sa.func.max(table.c.seq), 0))) or 0)
