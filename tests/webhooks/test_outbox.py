"""The webhook outbox end to end on both backends: Standard Webhooks signatures checked by the reference
`standardwebhooks` package in a real HTTP receiver on loopback, back-off and dead letters, replay over the
API (scoped, audited), gap-free secret rotation, leases that two senders honour, and re-sending after a
sender stopped mid-delivery (same webhook-id, so the receiver can drop the repeat)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import standardwebhooks
from fastapi.testclient import TestClient

from central.app import build_hub, create_app
from central.hub import Hub
from central.settings import WebhooksSettings
from central.webhooks import service as wh
from central.webhooks import store as wstore
from tests.conftest import make_settings
from tests.helpers import token_for

pytestmark = pytest.mark.both_backends

SECRET = wh.new_secret()
OTHER = wh.new_secret()


class Receiver:
    """A loopback HTTP receiver: keeps every request and answers the next status of `answers` (then 204)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.hook: Callable[[int], int] = lambda code: code  # runs before the answer is sent
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    code = outer.answers.pop(0) if outer.answers else 204
                code = outer.hook(code)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def ids(self) -> list[str]:
        return [h["webhook-id"] for h, _b in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.srv.shutdown()
    r.srv.server_close()


def _hub(tmp_path: Path, **over: Any) -> Hub:
    cfg = {"worker": False, "max_attempts": 3, "backoff_base_s": 1.0, "backoff_cap_s": 8.0, "lease_s": 30.0, **over}
    return build_hub(make_settings(tmp_path, webhooks=WebhooksSettings(**cfg)))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = _hub(tmp_path)
    yield h
    h.close()


def target(url: str, secret: str = SECRET, key: str = "test:a", org: str = "/city/district-a") -> wh.Target:
    return wh.Target(key=key, org=org, url=url, secret=secret)


def enqueue(hub: Hub, t: wh.Target, n: int = 1, event: str = "thing.happened") -> list[str]:
    with hub.store.tx() as db:
        return [wh.enqueue(db, event, {"n": i, "event": event}, t) for i in range(n)]


def row(hub: Hub, msg_id: str) -> dict[str, Any]:
    with hub.store.read() as db:
        r = db.first(sa.select(wstore.deliveries).where(wstore.deliveries.c.msg_id == msg_id))
    assert r is not None
    return r


def test_enqueued_in_the_callers_transaction_and_signed_per_standard_webhooks(hub: Hub, receiver: Receiver) -> None:
    with pytest.raises(RuntimeError), hub.store.tx() as db:  # the event's transaction fails: no webhook
        wh.enqueue(db, "thing.happened", {"n": -1}, target(receiver.url))
        raise RuntimeError("the caller's write failed")
    (mid,) = enqueue(hub, target(receiver.url))
    raw = "a-route-secret-chosen-by-its-owner"  # not whsec_: its UTF-8 bytes are the key
    (mid2,) = enqueue(hub, target(receiver.url, raw, key="test:raw"))
    assert wh.service_of(hub).deliver_due() == {"delivered": 2, "failed": 0, "dead": 0}
    assert sorted(receiver.ids()) == sorted([mid, mid2])
    for h, body in receiver.got:
        key: str | bytes = SECRET if h["webhook-id"] == mid else raw.encode()
        assert standardwebhooks.Webhook(key).verify(body, h)["event"] == "thing.happened"
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(OTHER).verify(body, h)
        with pytest.raises(standardwebhooks.WebhookVerificationError):  # the id is signed: no swapping
            standardwebhooks.Webhook(key).verify(body, {**h, "webhook-id": "msg_other"})
    assert row(hub, mid)["status"] == "delivered" and row(hub, mid)["attempts"] == 1
    assert not any(k.startswith("x-city") for h, _b in receiver.got for k in h)  # one header family


def test_failures_back_off_with_jitter_then_go_dead_and_replay_resends(hub: Hub, receiver: Receiver) -> None:
    svc = wh.service_of(hub)
    (mid,) = enqueue(hub, target(receiver.url))
    receiver.answers = [500, 503, 500]
    t = time.time()
    assert svc.deliver_due(now=t) == {"delivered": 0, "failed": 1, "dead": 0}
    r = row(hub, mid)
    assert r["status"] == "pending" and r["attempts"] == 1 and r["last_error"] == "HTTP 500"
    assert t + 1.0 <= r["next_at"] <= t + 1.0 + 1e-6  # the 1st retry: the ceiling is the base (1 s)
    assert svc.deliver_due(now=t + 0.5) == {"delivered": 0, "failed": 0, "dead": 0}  # backing off
    assert svc.deliver_due(now=t + 100)["failed"] == 1
    assert t + 100 + 1.0 <= row(hub, mid)["next_at"] <= t + 100 + 2.0  # full jitter under a doubled ceiling
    assert svc.deliver_due(now=t + 200) == {"delivered": 0, "failed": 0, "dead": 1}  # the 3rd try: dead
    assert row(hub, mid)["status"] == "dead"
    assert svc.deliver_due(now=t + 10**6) == {"delivered": 0, "failed": 0, "dead": 0}  # never retried alone
    assert len(receiver.got) == 3

    # Replay over the API, in scope only; every replay is audited.
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        a = {"Authorization": "Bearer " + token_for(hub, "ada", role="district_admin", org="/city/district-a")}
        b = {"Authorization": "Bearer " + token_for(hub, "bob", role="district_admin", org="/city/district-b")}
        aud = {"Authorization": "Bearer " + token_for(hub, "aud", role="auditor", org="/city")}
        did = row(hub, mid)["id"]
        listed = c.get("/api/v1/webhooks/deliveries", params={"status": "dead"}, headers=a).json()
        assert [d["msg_id"] for d in listed] == [mid] and "secret" not in json.dumps(listed)
        assert c.get("/api/v1/webhooks/deliveries", headers=b).json() == []
        assert c.post(f"/api/v1/webhooks/deliveries/{did}/replay", headers=b).status_code == 404  # out of scope
        assert c.post(f"/api/v1/webhooks/deliveries/{did}/replay", headers=aud).status_code == 403  # read-only
        r2 = c.post(f"/api/v1/webhooks/deliveries/{did}/replay", headers=a)
        assert r2.status_code == 200 and r2.json()["status"] == "pending" and r2.json()["attempts"] == 0
        assert svc.deliver_due()["delivered"] == 1
        assert receiver.ids() == [mid] * 4  # the same webhook-id every time: receivers dedupe on it

        # Every dead one of an endpoint at once.
        mids = enqueue(hub, target(receiver.url), n=2)
        receiver.answers = [500] * 6
        for k in range(3):
            svc.deliver_due(now=time.time() + 1000 * (k + 1))
        assert {row(hub, m)["status"] for m in mids} == {"dead"}
        assert c.post("/api/v1/webhooks/endpoints/test:a/replay-dead", headers=b).status_code == 404
        out = c.post("/api/v1/webhooks/endpoints/test:a/replay-dead", headers=a)
        assert out.status_code == 200 and out.json()["replayed"] == 2
        assert svc.deliver_due()["delivered"] == 2
    actions = audit_actions(hub)
    assert actions.count("webhooks.replay") == 1 and actions.count("webhooks.replay_dead") == 1


def test_rotation_signs_with_both_secrets_until_the_old_one_expires(hub: Hub, receiver: Receiver) -> None:
    svc = wh.service_of(hub)
    enqueue(hub, target(receiver.url))
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        a = {"Authorization": "Bearer " + token_for(hub, "ada", role="district_admin", org="/city/district-a")}
        b = {"Authorization": "Bearer " + token_for(hub, "bob", role="district_admin", org="/city/district-b")}
        assert c.post("/api/v1/webhooks/endpoints/test:a/rotate-secret", headers=b).status_code == 404
        r = c.post("/api/v1/webhooks/endpoints/test:a/rotate-secret", headers=a)
        assert r.status_code == 200
        new = r.json()["secret"]
        assert new.startswith("whsec_") and new != SECRET
        assert [e["id"] for e in c.get("/api/v1/webhooks/endpoints", headers=a).json()] == ["test:a"]
        assert "secret" not in c.get("/api/v1/webhooks/endpoints", headers=a).text
    enqueue(hub, target(receiver.url))  # the owner's unchanged secret does not undo the rotation
    svc.deliver_due()
    for h, body in receiver.got:  # during the overlap a receiver holding either secret verifies
        assert len(h["webhook-signature"].split(" ")) == 2
        standardwebhooks.Webhook(SECRET).verify(body, h)
        standardwebhooks.Webhook(new).verify(body, h)
    (mid,) = enqueue(hub, target(receiver.url))
    svc.deliver_due(now=time.time() + 2 * 86400)  # past the overlap: the old secret no longer signs
    h, body = receiver.got[-1]
    assert h["webhook-id"] == mid and len(h["webhook-signature"].split(" ")) == 1
    standardwebhooks.Webhook(new).verify(body, h)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, h)
    assert "webhooks.rotate" in audit_actions(hub)
    # The owner gives a secret of its own (e.g. a department re-registered its hook): it applies at once.
    (mid,) = enqueue(hub, target(receiver.url, OTHER))
    svc.deliver_due()
    h, body = receiver.got[-1]
    assert h["webhook-id"] == mid and len(h["webhook-signature"].split(" ")) == 1
    standardwebhooks.Webhook(OTHER).verify(body, h)


def test_an_unusable_url_is_a_failed_try_not_a_stuck_delivery(hub: Hub) -> None:
    mids = enqueue(hub, target("http://[::1"), n=1) + enqueue(hub, target("ftp://127.0.0.1/x", key="test:ftp"))
    assert wh.service_of(hub).deliver_due() == {"delivered": 0, "failed": 2, "dead": 0}
    assert [row(hub, m)["status"] for m in mids] == ["pending", "pending"]
    assert all(row(hub, m)["last_error"] and row(hub, m)["lease_owner"] is None for m in mids)


def test_a_lease_keeps_a_delivery_with_its_sender(hub: Hub) -> None:
    with hub.store.tx() as db:
        for i in range(40):
            wh.enqueue(db, "e", {"i": i}, target("http://127.0.0.1:9/x"), now=100.0)
    taken: dict[str, list[int]] = {"w1": [], "w2": []}

    def sender(me: str) -> None:
        while True:
            with hub.store.tx() as db:
                due = wstore.claim(db, 1000.0, 30.0, me, 3)
                time.sleep(0.002)  # hold the claim a while: the other sender must skip these rows
            if not due:
                return
            taken[me] += [d["id"] for d in due]
            with hub.store.tx() as db:
                for d in due:
                    assert wstore.delivered(db, d["id"], me, 1, "t")

    ts = [threading.Thread(target=sender, args=(w,)) for w in taken]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    everything = taken["w1"] + taken["w2"]
    assert len(everything) == 40 and len(set(everything)) == 40  # each claimed by one sender only
    with hub.store.tx() as db:
        wh.enqueue(db, "e", {}, target("http://127.0.0.1:9/x"), now=100.0)
        (d,) = wstore.claim(db, 1000.0, 30.0, "w1", 10)
    with hub.store.tx() as db:
        assert wstore.claim(db, 1029.0, 30.0, "w2", 10) == []  # still w1's
        assert [r["id"] for r in wstore.claim(db, 1031.0, 30.0, "w2", 10)] == [d["id"]]  # w1 died: w2's now
        assert not wstore.delivered(db, d["id"], "w1", 1, "t")  # w1 came back late: its result is not kept
        assert wstore.failed(db, d["id"], "w2", 3, "HTTP 500", 2000.0, dead=True)
    with hub.store.tx() as db:
        assert wstore.claim(db, 10.0**9, 30.0, "w1", 10) == []  # dead letters are not retried


def test_two_senders_on_one_database_deliver_each_once(tmp_path: Path, receiver: Receiver) -> None:
    """Two hubs (two stores, two sender identities) over the same database, delivering at once."""
    one = _hub(tmp_path)
    two = Hub(one.settings)  # a second process's store and outbox on the same database
    try:
        mids = enqueue(one, target(receiver.url), n=30)
        a, b = wh.WebhooksService(one), wh.WebhooksService(two)
        assert a.owner != b.owner
        outs: list[dict[str, int]] = []
        ts = [threading.Thread(target=lambda s=s: outs.append(s.deliver_due(limit=2))) for s in (a, b) * 10]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        outs.append(a.deliver_due())
        assert sum(o["delivered"] for o in outs) == 30
        assert sorted(receiver.ids()) == sorted(mids)  # none twice, none lost
    finally:
        two.close()
        one.close()


def test_a_sender_stopped_mid_delivery_is_resent_after_restart(tmp_path: Path, receiver: Receiver) -> None:
    first = _hub(tmp_path)
    (mid,) = enqueue(first, target(receiver.url))
    old = wh.service_of(first)
    t = time.time()
    with first.store.tx() as db:  # the first hub claims it and posts ...
        (d,) = wstore.claim(db, t, first.settings.webhooks.lease_s, old.owner, 10)
    body = d["body"].encode()
    httpx.post(d["url"], content=body, headers=wh.headers(d["msg_id"], int(time.time()), body, d["secret"]))
    first.close()  # ... and stops before it stored the answer
    assert row_of(first, mid) == "delivering"

    again = build_hub(first.settings)  # the restarted hub: a new sender identity on the same database
    try:
        svc = wh.service_of(again)
        assert svc.owner != old.owner
        assert svc.deliver_due(now=t + 1) == {"delivered": 0, "failed": 0, "dead": 0}  # the lease still holds
        assert svc.deliver_due(now=t + 31)["delivered"] == 1  # lease ran out: sent again
        assert receiver.ids() == [mid, mid]  # at least once, with the same webhook-id
        for h, b in receiver.got:
            standardwebhooks.Webhook(SECRET).verify(b, h)
        assert row(again, mid)["status"] == "delivered"
    finally:
        again.close()


def test_the_worker_delivers_in_the_background(tmp_path: Path, receiver: Receiver) -> None:
    h = _hub(tmp_path, worker=True, poll_s=0.05)
    try:
        assert h.worker("webhooks-deliver") is not None
        h.start()
        (mid,) = enqueue(h, target(receiver.url))
        wh.service_of(h).kick()
        deadline = time.monotonic() + 30
        while row(h, mid)["status"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert row(h, mid)["status"] == "delivered" and receiver.ids() == [mid]
    finally:
        h.close()


def audit_actions(hub: Hub) -> list[str]:
    from central.iam.store import audit as _audit

    with hub.store.read() as db:
        return list(db.run(sa.select(_audit.c.action).order_by(_audit.c.seq)).scalars())


def test_a_stopping_worker_hands_back_what_it_has_not_sent(tmp_path: Path, receiver: Receiver) -> None:
    h = _hub(tmp_path, worker=True)
    svc = wh.service_of(h)
    stopper: list[threading.Thread] = []

    def stop_during_first(status: int = 204) -> int:  # the hub is told to stop while #1 is being posted
        if not stopper:
            t = threading.Thread(target=svc.worker.stop)
            t.start()  # started before it is published: the test thread joins whatever it finds in `stopper`
            stopper.append(t)
            deadline = time.monotonic() + 30
            while not svc.worker.stopping and time.monotonic() < deadline:
                time.sleep(0.01)
        return status

    receiver.hook = stop_during_first
    try:
        mids = enqueue(h, target(receiver.url), n=3)
        h.start()
        svc.kick()
        stopper_joined = False
        deadline = time.monotonic() + 30
        while not stopper_joined and time.monotonic() < deadline:
            if stopper:
                stopper[0].join(30)
                stopper_joined = True
            else:
                time.sleep(0.02)
        assert stopper_joined and not svc.worker.alive
        assert [row(h, m)["status"] for m in mids] == ["delivered", "pending", "pending"]
        assert [row(h, m)["lease_owner"] for m in mids[1:]] == [None, None] and row(h, mids[1])["attempts"] == 0
        assert receiver.ids() == mids[:1]
    finally:
        h.close()


def row_of(closed: Hub, mid: str) -> str:
    h = Hub(closed.settings)  # a fresh store on the closed hub's database
    try:
        return str(row(h, mid)["status"])
    finally:
        h.close()
