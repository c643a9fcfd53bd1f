"""Answer models of /api/v1/webhooks (issue 16: the OpenAPI document says what each route returns). Keys and
types follow central/webhooks/service.py and the columns central/webhooks/store.py selects. No model but
RotatedSecretOut carries a secret: rotation is the one answer that shows it."""

from __future__ import annotations

from typing import Literal

from central.schema import Out

# central.webhooks.service.STATUSES
DeliveryStatus = Literal["pending", "delivering", "delivered", "dead"]


# ---- answers ---------------------------------------------------------------------------------------------
class EndpointOut(Out):
    """One webhook receiver, keyed by its owner (e.g. `video.route:3`); never its secrets."""

    id: str
    org: str
    url: str
    prev_until: float | None  # Unix time until which the rotated-out secret still signs
    created_at: str
    updated_at: str


class DeliveryOut(Out):
    """One delivery in the outbox (its body is not shown), with its endpoint's url and org."""

    id: int
    msg_id: str  # the `webhook-id` header; the same on every retry and replay
    endpoint_id: str
    event_type: str
    ref: str | None  # what it is about, for its owner's views (e.g. video.case:12)
    status: DeliveryStatus
    attempts: int
    next_at: float  # Unix time of the next try
    last_error: str | None
    created_at: str
    delivered_at: str | None
    url: str
    org: str


class ReplayDeadOut(Out):
    """How many dead deliveries of an endpoint were queued again."""

    endpoint_id: str
    replayed: int


class RotatedSecretOut(Out):
    """An endpoint's new signing secret (shown only here) and until when the previous one still signs."""

    endpoint_id: str
    secret: str
    previous_valid_until: str  # ISO-8601 UTC
