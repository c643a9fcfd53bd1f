"""Tables and queries of the webhook outbox (SQLAlchemy Core; the same on SQLite and PostgreSQL).

An endpoint is one receiver, keyed by its owner (`codes:HEALTH`, `video.route:3`, `dialer.task:7`). A
delivery moves pending -> delivering (claimed: `lease_owner` holds it until `lease_until`) -> delivered, or
back to pending with a later `next_at`, or dead after the last try. A delivering row whose lease ran out
(its sender died) is claimable again, so delivery is at least once; its `msg_id` (the `webhook-id`) never
changes, so receivers can drop a repeat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.store import dialect, metadata
from central.store.dialect import BigId

if TYPE_CHECKING:
    from central.store import Db

endpoints = sa.Table(
    "webhooks_endpoints", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    # The secret the owning capability last gave: a different one from the owner replaces `secret`, a
    # rotation through this capability does not (the owner's copy is then older than `secret`).
    sa.Column("source_secret", sa.Text, nullable=False),
    sa.Column("prev_secret", sa.Text),  # still signed with until prev_until (gap-free rotation)
    sa.Column("prev_until", sa.Float),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)
deliveries = sa.Table(
    "webhooks_deliveries", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("msg_id", sa.Text, nullable=False, unique=True),
    sa.Column("endpoint_id", sa.Text, sa.ForeignKey("webhooks_endpoints.id"), nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("ref", sa.Text),  # what the delivery is about, for its owner's views (e.g. video.case:12)
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("lease_owner", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("delivered_at", sa.Text),
)
sa.Index("webhooks_deliveries_due", deliveries.c.status, deliveries.c.next_at)
sa.Index("webhooks_deliveries_endpoint", deliveries.c.endpoint_id, deliveries.c.status)
sa.Index("webhooks_deliveries_ref", deliveries.c.ref)

TABLES = [endpoints, deliveries]

_VIEW = (deliveries.c.id, deliveries.c.msg_id, deliveries.c.endpoint_id, deliveries.c.event_type, deliveries.c.ref,
         deliveries.c.status, deliveries.c.attempts, deliveries.c.next_at, deliveries.c.last_error,
         deliveries.c.created_at, deliveries.c.delivered_at, endpoints.c.url, endpoints.c.org)


# ---- endpoints ---------------------------------------------------------------------------------------

def endpoint(db: Db, endpoint_id: str) -> dict[str, Any] | None:
    return db.first(sa.select(endpoints).where(endpoints.c.id == endpoint_id))


def put_endpoint(db: Db, endpoint_id: str, org: str, url: str, secret: str, at: str) -> None:
    """Insert the endpoint, or bring its url/org up to date; an owner's new secret replaces the current one
    at once (an owner's edit is meant to take effect now; only `rotate` keeps the old one valid). One
    primary-key read when nothing changed (the common case: it runs once per enqueued delivery)."""
    e = endpoints.c
    cur = db.first(sa.select(e.org, e.url, e.source_secret).where(e.id == endpoint_id))
    if cur is None:
        db.run(dialect.insert_ignore(db, endpoints, "id").values(
            id=endpoint_id, org=org, url=url, secret=secret, source_secret=secret, created_at=at, updated_at=at))
        return
    if (cur["org"], cur["url"]) != (org, url):
        db.run(sa.update(endpoints).where(e.id == endpoint_id).values(url=url, org=org, updated_at=at))
    if cur["source_secret"] != secret:
        db.run(sa.update(endpoints).where(e.id == endpoint_id).values(
            secret=secret, source_secret=secret, prev_secret=None, prev_until=None, updated_at=at))


def rotate(db: Db, endpoint_id: str, new_secret: str, prev_until: float, at: str) -> None:
    db.run(sa.update(endpoints).where(endpoints.c.id == endpoint_id).values(
        prev_secret=endpoints.c.secret, prev_until=prev_until, secret=new_secret, updated_at=at))


def list_endpoints(db: Db) -> list[dict[str, Any]]:
    e = endpoints.c
    return db.all(sa.select(e.id, e.org, e.url, e.prev_until, e.created_at, e.updated_at).order_by(e.id))


# ---- deliveries --------------------------------------------------------------------------------------

def insert_delivery(db: Db, row: dict[str, Any]) -> None:
    db.run(sa.insert(deliveries).values(**row))


def _due(now: float) -> Any:
    return dialect.lease_due(deliveries, now, "pending", "delivering")


def any_due(db: Db, now: float) -> bool:
    return db.scalar(sa.select(sa.literal(1)).where(_due(now)).limit(1)) is not None


def claim(db: Db, now: float, lease_s: float, owner: str, limit: int) -> list[dict[str, Any]]:
    """Take up to `limit` due deliveries for `owner` until now + lease_s: pending ones whose time came, and
    delivering ones whose lease ran out (their sender died mid-send). PostgreSQL: FOR UPDATE SKIP LOCKED, so
    concurrent claimers skip each other's rows; SQLite: the write transaction serialises claims."""
    d = deliveries.c
    ids = dialect.take_leases(db, deliveries, _due(now), (d.next_at, d.id), now, lease_s, owner, limit,
                              status="delivering")
    if not ids:
        return []
    e = endpoints.c
    return db.all(sa.select(d.id, d.msg_id, d.body, d.attempts, d.event_type, e.url, e.secret, e.prev_secret,
                            e.prev_until).join(endpoints, e.id == d.endpoint_id)
                  .where(d.id.in_(ids)).order_by(d.next_at, d.id))


def _held(did: int, owner: str) -> Any:
    return sa.and_(dialect.lease_held(deliveries, did, owner), deliveries.c.status == "delivering")


def delivered(db: Db, did: int, owner: str, attempts: int, at: str) -> bool:
    """Mark a delivery sent, if `owner` still holds its lease (False: another sender took it over)."""
    return bool(db.run(sa.update(deliveries).where(_held(did, owner)).values(
        status="delivered", attempts=attempts, delivered_at=at, last_error=None, lease_until=None,
        lease_owner=None)).rowcount)


def failed(db: Db, did: int, owner: str, attempts: int, error: str, next_at: float, dead: bool) -> bool:
    return bool(db.run(sa.update(deliveries).where(_held(did, owner)).values(
        status="dead" if dead else "pending", attempts=attempts, last_error=error, next_at=next_at,
        lease_until=None, lease_owner=None)).rowcount)


def release(db: Db, ids: Sequence[int], owner: str) -> None:
    """Hand claimed but unsent deliveries back (due at once, tries unchanged): a stopping sender."""
    d = deliveries.c
    db.run(sa.update(deliveries).where(d.id.in_(list(ids)), d.status == "delivering", d.lease_owner == owner)
           .values(status="pending", lease_until=None, lease_owner=None))


def delivery(db: Db, did: int) -> dict[str, Any] | None:
    return db.first(sa.select(*_VIEW).join(endpoints, endpoints.c.id == deliveries.c.endpoint_id)
                    .where(deliveries.c.id == did))


def in_scopes(org: Any, scopes: Sequence[str]) -> Any:
    """`org` equal to or under one of `scopes` (an empty list matches nothing)."""
    return sa.or_(sa.false(), *[sa.or_(org == s, org.like(dialect.like_escape(s.rstrip("/")) + "/%", escape="\\"))
                                for s in scopes])


def list_deliveries(db: Db, endpoint_id: str | None, status: str | None, ref: str | None, before: int | None,
                    limit: int, scopes: Sequence[str] | None) -> list[dict[str, Any]]:
    """Newest first; `scopes` None means every org."""
    d = deliveries.c
    q = sa.select(*_VIEW).join(endpoints, endpoints.c.id == d.endpoint_id)
    if scopes is not None:
        q = q.where(in_scopes(endpoints.c.org, scopes))
    if endpoint_id is not None:
        q = q.where(d.endpoint_id == endpoint_id)
    if status is not None:
        q = q.where(d.status == status)
    if ref is not None:
        q = q.where(d.ref == ref)
    if before is not None:
        q = q.where(d.id < before)
    return db.all(q.order_by(d.id.desc()).limit(limit))


def replay(db: Db, ids: Sequence[int], now: float) -> int:
    """Due again now with a fresh count of tries (a delivering one is left to its sender)."""
    if not ids:
        return 0
    d = deliveries.c
    return int(db.run(sa.update(deliveries).where(d.id.in_(list(ids)), d.status != "delivering").values(
        status="pending", attempts=0, next_at=now, lease_until=None, lease_owner=None)).rowcount)


def dead_ids(db: Db, endpoint_id: str, limit: int) -> list[int]:
    d = deliveries.c
    return list(db.run(sa.select(d.id).where(d.endpoint_id == endpoint_id, d.status == "dead")
                       .order_by(d.id).limit(limit)).scalars())


def queue_figures(db: Db, now: float) -> dict[str, Any]:
    """Deliveries per status, how many are due now, the oldest due one's wait and the oldest held lease's
    expiry (for /metrics)."""
    d = deliveries.c
    counts = {r["status"]: int(r["n"]) for r in db.all(
        sa.select(d.status, sa.func.count().label("n")).group_by(d.status))}
    due = db.first(sa.select(sa.func.count().label("n"), sa.func.min(d.next_at).label("oldest"))
                   .where(d.status == "pending", d.next_at <= now)) or {}
    lease = db.scalar(sa.select(sa.func.min(d.lease_until)).where(d.status == "delivering"))
    return {"counts": counts, "due": int(due.get("n") or 0), "oldest_due": due.get("oldest"),
            "first_lease_until": lease}
