"""The hub's runtime context: settings, store, MQTT publisher and an in-process hook bus.

Services get a `Hub`; routes reach it through `central.deps.get_hub` (request.app.state.hub). No FastAPI here.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal, Protocol, get_args

from central.metrics import Metrics
from central.settings import Settings
from central.store import Store

log = logging.getLogger("citybrain.hub")


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                confirm: float | None = None) -> None:
        """Send `payload`; with `confirm`, wait up to that many seconds for the broker's acknowledgement
        (QoS 1: its PUBACK) and raise if it does not come (not connected, or no answer in time)."""
        ...


class LoggingPublisher:
    """Used when MQTT is disabled in settings: publishes are logged and kept (the last 1,000)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                confirm: float | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sent = [*self.sent[-999:], (topic, data, qos, retain)]
        log.info("mqtt disabled; not sent: %s (%d bytes)", topic, len(data))


# Every hook, with what it is called with. A name not listed here is refused by `on()` and `emit()`: a typo
# must fail at wiring, not leave a handler that never runs.
HookName = Literal[
    "hub.started",         # ()                          after every worker started
    "hub.stopping",        # ()                          before the workers are stopped
    "bridge.connected",    # ()                          the bridge (re)connected to the broker
    "events.ingested",     # (db, [(site, device, Event)])  inside the bridge's write transaction
    "scans.ingested",      # (db, [(site, device, ScanBatch)])  inside the bridge's write transaction
    "mqtt.registry_push",  # (payload: bytes)            a registry push arrived over MQTT
    "devices.config",      # (cfg: dict)                 a device config is being built: fill your part
    "devices.reported",    # (db, now, statuses, heartbeats, acks)  inside the bridge's write transaction
    "codes.revoked",       # (serials=, identity_id=, kid=)  after a revocation committed
]
HOOK_NAMES: frozenset[str] = frozenset(get_args(HookName))


class Hooks:
    """Named hooks between capabilities (e.g. the bridge calls `events.ingested` inside its write
    transaction, so video's correlation is atomic with the event insert)."""

    def __init__(self) -> None:
        self._fns: dict[str, list[Callable[..., Any]]] = defaultdict(list)

    @staticmethod
    def _known(name: str) -> None:
        if name not in HOOK_NAMES:
            raise ValueError(f"no hook named {name!r} (central.hub.HookName lists them)")

    def on(self, name: HookName, fn: Callable[..., Any]) -> None:
        self._known(name)
        self._fns[name].append(fn)

    def emit(self, name: HookName, *args: Any, **kwargs: Any) -> None:
        self._known(name)
        for fn in self._fns.get(name, []):
            fn(*args, **kwargs)


class Worker(Protocol):
    """A background worker the hub owns: started by `Hub.start()`, stopped and joined by `Hub.stop()`."""

    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...  # signal, then join; returns when the thread is gone


class LoopWorker:
    """A thread that calls `step()` until stopped. `step()` returns True when it did work (called again
    at once) and False when idle (then it waits `interval_s` or until `kick()`). An exception is logged
    and retried after `error_backoff_s`: a worker never dies of one bad pass, and never outlives `stop()`."""

    def __init__(self, name: str, step: Callable[[], bool | int | None], interval_s: float = 0.5,
                 error_backoff_s: float = 1.0) -> None:
        self.name = name
        self._step = step
        self.interval_s = interval_s
        self.error_backoff_s = error_backoff_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.errors = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called: a long step should finish early (and leave its work consistent)."""
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.error("worker %s did not stop within %.0f s", self.name, timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self._step()
                self.passes += 1
            except Exception:
                self.errors += 1
                log.exception("worker %s failed; retrying", self.name)
                self._stop.wait(self.error_backoff_s)
                continue
            if busy and not self._stop.is_set():
                continue
            self._wake.wait(self.interval_s)
            self._wake.clear()


class Hub:
    """Settings, store, publisher, hooks and services, plus the background workers the hub owns.

    Capabilities register workers in their `setup(hub)` with `add_worker`; nothing starts a thread lazily
    from a request or a hook. `start()` starts them (the app's lifespan, the CLI, tests); `stop()` stops
    and joins them in reverse order; `close()` stops them and only then closes the store."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.store_url)
        self.publisher: Publisher = LoggingPublisher()
        self.hooks = Hooks()
        self.services: dict[str, Any] = {}  # capability name -> its service object
        self._workers: list[Worker] = []
        self.metrics = Metrics(self)
        self._lock = threading.Lock()
        self.running = False

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                confirm: float | None = None) -> None:
        self.publisher.publish(topic, payload, qos=qos, retain=retain, confirm=confirm)

    # --- workers ---------------------------------------------------------------------------------------
    def add_worker(self, worker: Worker) -> Worker:
        """Register a worker; on a hub already running it starts at once."""
        with self._lock:
            self._workers.append(worker)
            running = self.running
        if running:
            worker.start()
        return worker

    def worker(self, name: str) -> Worker | None:
        return next((w for w in self._workers if w.name == name), None)

    @property
    def workers(self) -> list[Worker]:
        return list(self._workers)

    def start(self, bridge: bool = False) -> Hub:
        """Start every registered worker (and the MQTT bridge when `bridge`); idempotent."""
        with self._lock:
            if self.running:
                return self
            self.running = True
        if bridge and self.worker("mqtt-bridge") is None:
            from central.bridge.service import Bridge

            with self._lock:  # first: later workers may publish through it
                self._workers.insert(0, Bridge(self))
        for w in list(self._workers):
            w.start()
        self.hooks.emit("hub.started")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and join every worker, last started first. The store stays open (see `close`)."""
        with self._lock:
            was_running, self.running = self.running, False
        if not was_running:
            return
        self.hooks.emit("hub.stopping")
        for w in reversed(list(self._workers)):
            try:
                w.stop(timeout)
            except Exception:
                log.exception("worker %s failed to stop", w.name)
        with self._lock:  # the bridge belongs to this run only; a restart makes a fresh client
            self._workers = [w for w in self._workers if w.name != "mqtt-bridge"]
        if not isinstance(self.publisher, LoggingPublisher):
            self.publisher = LoggingPublisher()

    def close(self) -> None:
        """Stop the workers, then close the store (never the other way round)."""
        self.stop()
        self.store.close()

