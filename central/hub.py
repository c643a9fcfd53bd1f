"""The hub's runtime context: settings, store, MQTT publisher and an in-process hook bus.

Services get a `Hub`; routes reach it through `get_hub` (request.app.state.hub).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import Request

from central.settings import Settings
from central.store import Store

log = logging.getLogger("citybrain.hub")


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None: ...


class LoggingPublisher:
    """Used when MQTT is disabled in settings: publishes are logged and kept (the last 1,000)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sent = [*self.sent[-999:], (topic, data, qos, retain)]
        log.info("mqtt disabled; not sent: %s (%d bytes)", topic, len(data))


class Hooks:
    """Named hooks between capabilities (e.g. the bridge calls `events.ingested` inside its write
    transaction, so video's correlation is atomic with the event insert)."""

    def __init__(self) -> None:
        self._fns: dict[str, list[Callable[..., Any]]] = defaultdict(list)

    def on(self, name: str, fn: Callable[..., Any]) -> None:
        self._fns[name].append(fn)

    def emit(self, name: str, *args: Any, **kwargs: Any) -> None:
        for fn in self._fns.get(name, []):
            fn(*args, **kwargs)


class Hub:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database)
        self.publisher: Publisher = LoggingPublisher()
        self.hooks = Hooks()
        self.services: dict[str, Any] = {}  # capability name -> its service object

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.publisher.publish(topic, payload, qos=qos, retain=retain)


def get_hub(request: Request) -> Hub:
    return request.app.state.hub
