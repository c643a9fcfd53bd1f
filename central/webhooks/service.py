"""Webhook outbox rules: enqueue inside the caller's transaction, deliver with leases, back off, go dead,
replay, rotate secrets. No HTTP types and no SQL here (central/webhooks/store.py holds the queries).

Signing follows Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
A secret `whsec_<base64>` signs with its decoded bytes (what `standardwebhooks.Webhook(secret)` expects);
any other secret (one a caller chose, e.g. a video route's) signs with its UTF-8 bytes, which a receiver
passes as `Webhook(secret.encode())`. While a rotated-out secret has not expired the header carries both
signatures, space-separated, so a receiver holding either one verifies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from central.hub import Hub, LoopWorker
from central.metrics import Sample
from central.webhooks import store

if TYPE_CHECKING:
    from central.store import Db

log = logging.getLogger("citybrain.webhooks")

SECRET_PREFIX = "whsec_"
STATUSES = ("pending", "delivering", "delivered", "dead")


class WebhooksError(Exception):
    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.status = status
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class Target:
    """Where a capability's webhook goes. `key` names the endpoint for good (`codes:HEALTH`); `org` scopes
    who may see and replay its deliveries."""

    key: str
    org: str
    url: str
    secret: str


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def key_bytes(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX):] + "==")
    return secret.encode()


def sign(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    mac = hmac.new(key_bytes(secret), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(msg_id: str, ts: int, body: bytes, secret: str, prev_secret: str | None = None) -> dict[str, str]:
    sigs = [sign(secret, msg_id, ts, body)]
    if prev_secret:
        sigs.append(sign(prev_secret, msg_id, ts, body))
    return {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(sigs)}


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def enqueue(db: Db, event_type: str, payload: dict[str, Any], target: Target, ref: str | None = None,
            now: float | None = None) -> str:
    """Queue one delivery of `payload` (the JSON body) to `target`, inside the caller's transaction `db`:
    the event and its webhook commit together or not at all. Returns the delivery's `webhook-id`."""
    at = now_iso()
    store.put_endpoint(db, target.key, target.org, target.url, target.secret, at)
    msg_id = "msg_" + secrets.token_hex(12)
    store.insert_delivery(db, {"msg_id": msg_id, "endpoint_id": target.key, "event_type": event_type, "ref": ref,
                               "body": encode(payload), "status": "pending", "attempts": 0,
                               "next_at": time.time() if now is None else now, "created_at": at})
    return msg_id


def deliveries_of(db: Db, ref: str) -> list[dict[str, Any]]:
    """Every delivery about `ref` (newest first), for its owner's own views, inside the owner's `db`."""
    return store.list_deliveries(db, None, None, ref, None, 1000, None)


def under_any(org: str, scopes: list[str]) -> bool:
    return any(org == s or org.startswith(s.rstrip("/") + "/") for s in scopes)


class WebhooksService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.cfg = hub.settings.webhooks
        # Names this process's claims: a lease is honoured only for the sender that took it.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.worker = LoopWorker("webhooks-deliver", self.step, interval_s=self.cfg.poll_s)

    # ---- delivery --------------------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        """Full jitter (uniform up to base * 2^(attempts-1), capped), never under the base: a failed
        delivery is never due again in the same pass."""
        ceiling = min(self.cfg.backoff_cap_s, self.cfg.backoff_base_s * 2 ** max(attempts - 1, 0))
        return max(self.cfg.backoff_base_s, random.uniform(0, ceiling))

    def deliver_due(self, now: float | None = None, limit: int | None = None) -> dict[str, int]:
        """Claim due deliveries (a batch at a time) and post each once. `now` is the outbox's clock (tests
        move it); the `webhook-timestamp` header is always the real time, which receivers check."""
        import httpx

        t = time.time() if now is None else now
        batch = limit or self.cfg.batch
        out = {"delivered": 0, "failed": 0, "dead": 0}
        with self.hub.store.read() as db:  # the common idle pass takes no write lock
            if not store.any_due(db, t):
                return out
        with httpx.Client(timeout=self.cfg.timeout_s) as client:
            while True:
                with self.hub.store.tx() as db:
                    due = store.claim(db, t, self.cfg.lease_s, self.owner, batch)
                claimed = time.monotonic()
                for i, d in enumerate(due):
                    stopping = self.worker.stopping and self.worker.alive  # its hub is stopping
                    # Never post on a lease that may run out mid-request: another sender may own it by then.
                    late = i > 0 and time.monotonic() - claimed > self.cfg.lease_s - self.cfg.timeout_s
                    if stopping or late:  # hand the rest back, due at once
                        with self.hub.store.tx() as db:
                            store.release(db, [r["id"] for r in due[i:]], self.owner)
                        if stopping:
                            return out
                        break
                    self._send(client, d, t, out)
                if len(due) < batch or limit is not None or self.worker.stopping:
                    break
        return out

    def _send(self, client: Any, d: dict[str, Any], t: float, out: dict[str, int]) -> None:
        import httpx

        body = d["body"].encode()
        prev = d["prev_secret"] if d["prev_until"] is not None and d["prev_until"] > t else None
        err: str | None = None
        try:
            r = client.post(d["url"], content=body, headers=headers(d["msg_id"], int(time.time()), body,
                                                                    d["secret"], prev))
            if not 200 <= r.status_code < 300:
                err = f"HTTP {r.status_code}"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as e:  # a bad URL fails like a refusal
            err = f"{type(e).__name__}: {e}"[:300]
        n = d["attempts"] + 1
        with self.hub.store.tx() as db:
            if err is None:
                kept = store.delivered(db, d["id"], self.owner, n, now_iso())
                out["delivered"] += kept
            else:
                dead = n >= self.cfg.max_attempts
                kept = store.failed(db, d["id"], self.owner, n, err, t + self.backoff(n), dead)
                out["dead" if dead else "failed"] += kept
        if not kept:
            log.warning("webhook %s: lease lost before the result was stored", d["msg_id"])

    def step(self) -> bool:
        return sum(self.deliver_due().values()) > 0

    def kick(self) -> None:
        """Wake the worker (after the enqueuing transaction committed)."""
        self.worker.kick()

    # ---- views -----------------------------------------------------------------------------------------
    def deliveries(self, scopes: list[str], endpoint_id: str | None = None, status: str | None = None,
                   ref: str | None = None, before: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise WebhooksError(400, "status", f"one of {', '.join(STATUSES)}")
        with self.hub.store.read() as db:
            return store.list_deliveries(db, endpoint_id, status, ref, before, limit, scopes)

    def endpoints(self, scopes: list[str]) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            return [e for e in store.list_endpoints(db) if under_any(e["org"], scopes)]

    def delivery(self, did: int) -> dict[str, Any]:
        with self.hub.store.read() as db:
            row = store.delivery(db, did)
        if row is None:
            raise WebhooksError(404, "delivery_id", "not found")
        return row

    def delivery_org(self, did: int) -> str | None:
        with self.hub.store.read() as db:
            row = store.delivery(db, did)
        return row["org"] if row else None

    def endpoint_org(self, endpoint_id: str) -> str | None:
        with self.hub.store.read() as db:
            row = store.endpoint(db, endpoint_id)
        return row["org"] if row else None

    # ---- writes (audited in the same transaction) ------------------------------------------------------
    def replay(self, actor: str, did: int) -> dict[str, Any]:
        with self.hub.store.tx() as db:
            row = store.delivery(db, did)
            if row is None:
                raise WebhooksError(404, "delivery_id", "not found")
            if row["status"] == "delivering":
                raise WebhooksError(409, "delivery_id", "being delivered now; replay it after")
            store.replay(db, [did], time.time())
            _audit(db, actor, "webhooks.replay", f"webhook_delivery:{did}", row["org"],
                   {"msg_id": row["msg_id"], "endpoint": row["endpoint_id"], "was": row["status"]})
        self.kick()
        return self.delivery(did)

    def replay_dead(self, actor: str, endpoint_id: str, limit: int = 1000) -> dict[str, Any]:
        with self.hub.store.tx() as db:
            ep = store.endpoint(db, endpoint_id)
            if ep is None:
                raise WebhooksError(404, "endpoint_id", "not found")
            n = store.replay(db, store.dead_ids(db, endpoint_id, limit), time.time())
            _audit(db, actor, "webhooks.replay_dead", f"webhook_endpoint:{endpoint_id}", ep["org"], {"count": n})
        self.kick()
        return {"endpoint_id": endpoint_id, "replayed": n}

    def rotate(self, actor: str, endpoint_id: str, overlap_s: float | None = None) -> dict[str, Any]:
        """A new `whsec_` secret signs from now on; the old one signs too until `overlap_s` has passed, so
        receivers switch over with no gap. The new secret is shown only in this answer."""
        overlap = self.cfg.rotation_overlap_s if overlap_s is None else overlap_s
        secret = new_secret()
        until = time.time() + overlap
        with self.hub.store.tx() as db:
            ep = store.endpoint(db, endpoint_id)
            if ep is None:
                raise WebhooksError(404, "endpoint_id", "not found")
            store.rotate(db, endpoint_id, secret, until, now_iso())
            _audit(db, actor, "webhooks.rotate", f"webhook_endpoint:{endpoint_id}", ep["org"],
                   {"previous_valid_until": datetime.fromtimestamp(until, UTC).isoformat()})
        return {"endpoint_id": endpoint_id, "secret": secret,
                "previous_valid_until": datetime.fromtimestamp(until, UTC).isoformat()}


def _audit(db: Db, actor: str, action: str, target: str, org: str, detail: dict[str, Any]) -> None:
    from central.iam.audit import record

    record(db, actor=actor, action=action, target=target, org=org, detail=detail)


def kick(hub: Hub) -> None:
    """Wake this process's delivery worker after an enqueue committed; a process without one (a bare store
    in tests, a dialer engine) has nothing to wake: the hub's worker finds the row at its next poll."""
    svc = getattr(hub, "services", {}).get("webhooks")
    if svc is not None:
        svc.kick()


def service_of(hub: Hub) -> WebhooksService:
    svc = hub.services.get("webhooks")
    if svc is None:
        svc = WebhooksService(hub)
        hub.services["webhooks"] = svc
    return svc


def metric_samples(hub: Hub, db: Db) -> list[Sample]:
    """The outbox as a work queue: deliveries per status, how many are due, how long the oldest due one has
    waited, and the age of the oldest lease still held (a lease far past `lease_s` means a sender died
    holding it; the next claim takes it over)."""
    now = time.time()
    f = store.queue_figures(db, now)
    k = {"kind": "webhooks"}
    out = [Sample("queue_items", "Work items per kind and state", f["counts"].get(state, 0), {**k, "state": state})
           for state in ("pending", "delivering", "delivered", "dead")]
    out.append(Sample("queue_due", "Work items due now, per kind", f["due"], k))
    out.append(Sample("queue_oldest_due_seconds", "How long the oldest due item has waited, per kind",
                      now - f["oldest_due"] if f["oldest_due"] is not None else 0.0, k))
    lease = f["first_lease_until"]
    out.append(Sample("queue_oldest_lease_age_seconds", "Age of the oldest lease held, per kind",
                      max(0.0, now - (lease - hub.settings.webhooks.lease_s)) if lease is not None else 0.0, k))
    return out


def setup(hub: Hub) -> None:
    svc = service_of(hub)
    if hub.settings.webhooks.worker:
        hub.add_worker(svc.worker)
    hub.metrics.source("webhooks", lambda db: metric_samples(hub, db))
