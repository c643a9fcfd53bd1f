"""The hub's capabilities, in one explicit order: each `central/<cap>/` may offer routes, service, store, cli
and demo modules, and app, store, CLI and demo all take them from here, in this order.

The order is the wiring order: a capability comes after the ones whose tables it references (stores are
created and adopted in this order), whose services it calls in its `setup(hub)`, or whose hooks it handles.
Workers start in the order their capabilities add them and stop in reverse. A new capability folder must
be added here: an unlisted one fails the hub at import (`check()`), never silently left out."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import central

CAPABILITIES: tuple[str, ...] = (
    "devices",    # sites' devices, provisioning, broker accounts
    "bridge",     # MQTT <-> store: events, scans, heartbeats (references devices)
    "iam",        # users, orgs, roles, audit chain
    "webhooks",   # the one durable webhook outbox (codes, video and dialer enqueue into it)
    "registry",   # unified identifiers
    "codes",      # city codes: keys, issuing, verification (references registry identities)
    "channel",    # access-channel pilot (handles codes.revoked)
    "video",      # cases from stored events (handles events.ingested)
    "dialer",     # voice robot
    "feeds",      # change feeds' shared shape and MQTT push (reads every capability's feed.py)
    "retention",  # purges what every store above offers (runs last)
    "web",        # the console's pages (mounted last: it serves `/`)
)
NOT_CAPABILITIES = frozenset({"store", "__pycache__"})


def check() -> None:
    """Every capability folder is listed, and every listed one exists."""
    found = {m.name for m in pkgutil.iter_modules(central.__path__) if m.ispkg} - NOT_CAPABILITIES
    if found != set(CAPABILITIES):
        listed = set(CAPABILITIES)
        raise RuntimeError("central/capabilities.py: CAPABILITIES must list exactly the capability folders;"
                           f" unlisted: {sorted(found - listed)}, missing: {sorted(listed - found)}")


def names() -> list[str]:
    return list(CAPABILITIES)


def optional_module(name: str) -> ModuleType | None:
    """Import `name`, or None when that module itself does not exist (an error inside it still raises)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


def modules(kind: str) -> list[tuple[str, ModuleType]]:
    """(capability, module) for every capability that has `central/<cap>/<kind>.py`, in CAPABILITIES order."""
    found = []
    for cap in CAPABILITIES:
        mod = optional_module(f"central.{cap}.{kind}")
        if mod is not None:
            found.append((cap, mod))
    return found


check()
