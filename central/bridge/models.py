"""Answers of the bridge API (response models)."""

from __future__ import annotations

from pydantic import Field

from central.schema import Out


class BridgeStatsOut(Out):
    """Ingest counters. A caller below the city root sees its own devices only and no `since_start`."""

    connected: bool
    events_stored: int
    rejected_by_reason: dict[str, int] = Field(description="stored rejects per reason")
    since_start: dict[str, int] | None = Field(
        default=None, description="this process's counters (events, duplicates, rejected.<reason>, ...)")


class RejectOut(Out):
    """A refused MQTT payload and why."""

    id: int
    at: str
    topic: str | None
    reason: str
    detail: str
