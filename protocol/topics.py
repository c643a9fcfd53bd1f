"""MQTT topic builders and parsers: one function per topic of the contract.

city/v1/{site}/{device}/status|hb|event/{kind}|scan|cmd|ack|receipt, city/v1/trust, city/v1/revocations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

ROOT = "city/v1"
TRUST = f"{ROOT}/trust"
REVOCATIONS = f"{ROOT}/revocations"
# Business systems push registry records here (real-time automatic registration).
REGISTRY_PUSH = f"{ROOT}/registry/push"
AUDIT_CHECKPOINT = f"{ROOT}/audit/checkpoint"  # retained, signed: the hub's latest audit-chain checkpoint

# Site and device ids become topic levels and ACL patterns: keep them to a safe alphabet.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DEVICE_CHANNELS = ("status", "hb", "event", "scan", "cmd", "ack", "receipt")
# Device -> hub channels whose messages the hub confirms on .../receipt, and the payload field naming each.
RECEIPTED = {"event": "event_id", "scan": "batch_id", "ack": "cmd_id"}


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def _check(site: str, device: str) -> None:
    if not valid_id(site):
        raise ValueError(f"site: {site!r} must match {_ID.pattern}")
    if not valid_id(device):
        raise ValueError(f"device: {device!r} must match {_ID.pattern}")


def prefix(site: str, device: str) -> str:
    _check(site, device)
    return f"{ROOT}/{site}/{device}"


def status(site: str, device: str) -> str:
    return f"{prefix(site, device)}/status"


def heartbeat(site: str, device: str) -> str:
    return f"{prefix(site, device)}/hb"


def event(site: str, device: str, kind: str) -> str:
    if not _KIND.match(kind):
        raise ValueError(f"kind: {kind!r} must match {_KIND.pattern}")
    return f"{prefix(site, device)}/event/{kind}"


def scan(site: str, device: str) -> str:
    return f"{prefix(site, device)}/scan"


def cmd(site: str, device: str) -> str:
    return f"{prefix(site, device)}/cmd"


def ack(site: str, device: str) -> str:
    return f"{prefix(site, device)}/ack"


def receipt(site: str, device: str) -> str:
    """Hub -> device: ids the hub has stored (after its transaction committed); see messages.Receipt."""
    return f"{prefix(site, device)}/receipt"


def alert(capability: str, department: str) -> str:
    """Hub -> department alert push, e.g. city/v1/alerts/video/fire-dept."""
    if not _KIND.match(capability) or not valid_id(department):
        raise ValueError(f"alert topic: bad capability {capability!r} or department {department!r}")
    return f"{ROOT}/alerts/{capability}/{department}"


_ORG = re.compile(r"^(/[a-z0-9][a-z0-9_-]{0,62})+$")
FEED = f"{ROOT}/feed"


def feed(capability: str, org: str | None) -> str:
    """Hub -> subscribers: one change of a capability's feed, under its org path so a broker ACL can scope
    a subscriber to a subtree, e.g. city/v1/feed/video/city/district-a (`-` when the change has no org).
    Subscribe to city/v1/feed/<cap>/# for all of a feed (docs/FEEDS.md)."""
    if not _KIND.match(capability) or (org is not None and not _ORG.match(org)):
        raise ValueError(f"feed topic: bad capability {capability!r} or org {org!r}")
    return f"{FEED}/{capability}{org or '/-'}"


# Subscriptions used by the hub bridge.
SUB_STATUS = f"{ROOT}/+/+/status"
SUB_HEARTBEAT = f"{ROOT}/+/+/hb"
SUB_EVENT = f"{ROOT}/+/+/event/+"
SUB_SCAN = f"{ROOT}/+/+/scan"
SUB_ACK = f"{ROOT}/+/+/ack"


@dataclass(frozen=True)
class DeviceTopic:
    site: str
    device: str
    channel: str  # one of DEVICE_CHANNELS
    kind: str | None = None  # only for channel == "event"


@lru_cache(maxsize=65536)  # devices publish on a handful of topics each: parse each once
def parse(topic: str) -> DeviceTopic:
    """Parse a device topic; raises ValueError naming what is wrong."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != ROOT:
        raise ValueError(f"topic: {topic!r} is not under {ROOT}/{{site}}/{{device}}/")
    site, device, channel = parts[2], parts[3], parts[4]
    _check(site, device)
    if channel not in DEVICE_CHANNELS:
        raise ValueError(f"topic: unknown channel {channel!r}")
    if channel == "event":
        if len(parts) != 6 or not _KIND.match(parts[5]):
            raise ValueError(f"topic: event topic needs one kind level, got {topic!r}")
        return DeviceTopic(site, device, channel, parts[5])
    if len(parts) != 5:
        raise ValueError(f"topic: unexpected levels after {channel!r}")
    return DeviceTopic(site, device, channel)
