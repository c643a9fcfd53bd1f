"""The contract: topics, payload validation, signatures in both profiles, signed list versioning."""

from __future__ import annotations

import json

import pytest

from protocol import messages, signing, topics, trust


def test_topic_round_trip() -> None:
    t = topics.event("site-1", "cam_2", "fire")
    assert t == "city/v1/site-1/cam_2/event/fire"
    p = topics.parse(t)
    assert (p.site, p.device, p.channel, p.kind) == ("site-1", "cam_2", "event", "fire")
    assert topics.parse(topics.heartbeat("s", "d")).channel == "hb"


@pytest.mark.parametrize(
    "bad", ["city/v2/s/d/hb", "city/v1/s/d/nope", "city/v1/s/d/event", "city/v1/s/d/hb/x", "city/v1/s+/d/hb"]
)
def test_topic_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        topics.parse(bad)


def test_builders_refuse_wildcards() -> None:
    with pytest.raises(ValueError, match="site"):
        topics.status("a/b", "d")
    with pytest.raises(ValueError, match="kind"):
        topics.event("s", "d", "Fire#")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (json.dumps({"schema_version": 99, "uptime_s": 1, "queue_depth": 0}).encode(), "schema_version"),
        (json.dumps({"uptime_s": -5, "queue_depth": 0}).encode(), "schema"),
        (json.dumps({"uptime_s": 1, "queue_depth": 0, "surprise": 1}).encode(), "schema"),
        (b"{" + b" " * (messages.MAX_PAYLOAD_BYTES + 1) + b"}", "oversize"),
    ],
)
def test_payload_refusals_are_classified(raw: bytes, reason: str) -> None:
    with pytest.raises(messages.PayloadError) as e:
        messages.parse_payload(messages.Heartbeat, raw)
    assert e.value.reason == reason


def test_schema_error_names_the_field() -> None:
    with pytest.raises(messages.PayloadError) as e:
        messages.parse_payload(messages.Event, json.dumps({"kind": "fire", "score": 7}).encode())
    assert "score" in e.value.detail


def test_event_ids_are_unique() -> None:
    ids = {messages.Event(kind="fire").event_id for _ in range(10_000)}
    assert len(ids) == 10_000


@pytest.mark.parametrize("alg", ["ed25519", "sm2"])
def test_sign_verify_with_key_ids(alg: signing.Algorithm) -> None:
    k = signing.generate(alg)
    ring = signing.KeyRing([k.public])
    sig = k.sign(b"payload")
    assert ring.verify(k.kid, b"payload", sig)
    assert not ring.verify(k.kid, b"payloae", sig)
    assert not ring.verify("unknown", b"payload", sig)
    again = signing.PrivateKey.from_dict(k.to_dict())
    assert signing.PublicKey.from_dict(again.public.to_dict()).verify(b"x", again.sign(b"x"))


def test_sm3_digest_matches_standard_vector() -> None:
    # GB/T 32905 example: SM3("abc")
    assert signing.digest(b"abc", "gm").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


@pytest.mark.parametrize("alg", ["ed25519", "sm2"])
def test_signed_lists_refuse_forgery_and_rollback(alg: signing.Algorithm) -> None:
    root = signing.generate(alg)
    other = signing.generate(alg)
    rl = trust.RevocationList(version=3, serials=["A1"])
    rl.sign(root)
    assert trust.accept(2, rl, root.public) == (True, "ok")
    ok, why = trust.accept(3, rl, root.public)
    assert not ok and why.startswith("rollback")
    forged = trust.RevocationList(version=9, serials=[])
    forged.sign(other)
    ok, why = trust.accept(3, forged, root.public)
    assert not ok and why.startswith("bad-signature")
    tampered = rl.model_copy(update={"serials": []})
    assert not tampered.verify(root.public)


def test_receipt_topic_and_payload() -> None:
    t = topics.receipt("site-1", "cam_2")
    assert t == "city/v1/site-1/cam_2/receipt" and topics.parse(t).channel == "receipt"
    r = messages.Receipt(stored=["a" * 32], refused=[messages.Refused(id="b" * 32, reason="schema")])
    back = messages.parse_payload(messages.Receipt, r.model_dump_json().encode())
    assert isinstance(back, messages.Receipt) and back.stored == ["a" * 32] and back.refused[0].reason == "schema"
    with pytest.raises(messages.PayloadError):
        messages.parse_payload(messages.Receipt, json.dumps({"stored": ["bad id!"]}).encode())
    with pytest.raises(messages.PayloadError):
        messages.parse_payload(messages.Receipt, json.dumps({"stored": ["a" * 32] * 1001}).encode())


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"schema_version": True}, "schema_version"),  # bool == 1 in Python: must not pass as version 1
        ({"count": True}, "count"),
        ({"count": 2**63}, "count"),  # no SQLite INTEGER holds it
        ({"count": 1.0}, "count"),
        ({"score": "0.5"}, "score"),
        ({"lat": float("inf")}, "lat"),
        ({"boxes": [{"x": float("nan"), "y": 0, "w": 1, "h": 1}]}, "boxes.0.x"),
    ],
)
def test_wire_validation_is_strict(over: dict, field: str) -> None:
    good = messages.Event(kind="fire").model_dump(mode="json")
    raw = json.dumps({**good, **over}).encode()  # json.dumps writes inf/nan as Infinity/NaN
    with pytest.raises(messages.PayloadError) as e:
        messages.parse_payload(messages.Event, raw)
    assert e.value.reason == "schema_version" if field == "schema_version" else e.value.detail.startswith(field)
    ok = messages.parse_payload(messages.Event, json.dumps({**good, "count": 2**63 - 1, "score": 1}).encode())
    assert isinstance(ok, messages.Event) and ok.count == 2**63 - 1


def test_loose_id_of_refused_payloads() -> None:
    e = messages.Event(kind="fire")
    raw = json.dumps({**e.model_dump(mode="json"), "count": "x"}).encode()
    assert messages.loose_id("event", raw) == e.event_id
    assert messages.loose_id("scan", json.dumps({"batch_id": "b" * 16}).encode()) == "b" * 16
    assert messages.loose_id("event", b"{not json") is None
    assert messages.loose_id("event", json.dumps({"event_id": "has space in it"}).encode()) is None
    assert messages.loose_id("hb", raw) is None
