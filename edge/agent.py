"""Runs an edge agent: the link (heartbeats, outbox) plus the kind's own loop until SIGINT/SIGTERM."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from edge.config import DeviceConfig
from edge.link import Link

log = logging.getLogger("citybrain.edge")


def kind_loop(kind: str) -> Callable[[DeviceConfig, Link, threading.Event], None] | None:
    try:
        mod = importlib.import_module(f"edge.{kind}.agent")
    except ModuleNotFoundError as e:
        if e.name == f"edge.{kind}.agent":
            return None
        raise
    return getattr(mod, "run", None)


def run_agent(cfg: DeviceConfig, test_event: bool = False) -> None:
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    link = Link(cfg).start()
    log.info("%s agent %s/%s started (outbox depth %d)", cfg.kind, cfg.site, cfg.device, link.outbox.depth())
    if test_event:
        from protocol.messages import Event

        link.publish_event(Event(kind="test", attrs={"note": "test event from citybrain edge"}))
    loop = kind_loop(cfg.kind)
    try:
        if loop is not None:
            try:
                loop(cfg, link, stop)
            except ValueError as e:
                # A box with an unusable section stays reachable (heartbeats, commands) so the hub can
                # see the fault and push a fixed config, instead of dropping off the map.
                log.error("%s loop cannot run: %s", cfg.kind, e)
                link.heartbeat_extra["fault"] = str(e)[:200]
        stop.wait()
    finally:
        link.stop(graceful=True)
        log.info("agent stopped; %d message(s) left in the outbox for next time", link.outbox.depth())
