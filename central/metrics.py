"""The hub's Prometheus metrics (`GET /metrics`).

Two kinds, one registry per hub (tests build many hubs in one process; a global registry would mix them):
- instruments this process updates as it works: HTTP latency by route template, ingested messages and their
  lag, receipts waiting to be published, verification verdicts. They count this process only; with several
  hub processes Prometheus scrapes each one (`instance` label) and the queries sum them.
- figures read from the shared store at scrape time: queue depth and oldest lease per work kind, devices
  online and their reported outbox depth, dialer calls in progress. Every process answers the same city-wide
  values for these (read them with `max`, not `sum`, across instances). Each capability offers its own in
  its `setup(hub)` through `hub.metrics.source(fn)`; `fn(db)` returns samples and does its SQL in its store.

A source that fails (a table being migrated, a lock timeout) is skipped and counted in
`citybrain_metrics_source_errors_total`: a scrape never fails because one figure could not be read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# HTTP answers: most are a few ms; verification and search sit near 10-50 ms; imports and exports take seconds.
HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


@dataclass
class Sample:
    """One store-derived gauge value: `citybrain_<name>{labels} value`."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


Source = Callable[["Db"], Iterable[Sample]]


class _StoreCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        hub = self.m.hub
        if hub is None or not self.m.sources:
            return
        families: dict[str, GaugeMetricFamily] = {}
        label_names: dict[str, list[str]] = {}
        for name, fn in self.m.sources:
            try:
                with hub.store.read() as db:
                    samples = list(fn(db))
            except Exception:  # noqa: BLE001  a figure that cannot be read is skipped, not the scrape
                log.exception("metrics source %s failed", name)
                self.m.source_errors.labels(source=name).inc()
                continue
            for s in samples:
                full = f"citybrain_{s.name}"
                if full not in families:
                    label_names[full] = sorted(s.labels)
                    families[full] = GaugeMetricFamily(full, s.help, labels=label_names[full])
                families[full].add_metric([s.labels.get(k, "") for k in label_names[full]], s.value)
        yield from families.values()

    def describe(self) -> list[Metric]:
        return []  # values come from the store at scrape time; nothing to check at registration


class Metrics:
    def __init__(self, hub: Hub | None = None) -> None:
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_duration = Histogram(
            "citybrain_http_request_duration_seconds", "HTTP answers by route template, method and status class",
            ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=r)
        self.ingested = Counter(
            "citybrain_ingest_messages_total", "Device messages the bridge stored or refused, by kind and result",
            ["kind", "result"], registry=r)
        self.ingest_lag = Histogram(
            "citybrain_ingest_lag_seconds", "From a device message's own timestamp to its commit in the store",
            ["kind"], buckets=LAG_BUCKETS, registry=r)
        self.receipts_backlog = Gauge(
            "citybrain_receipts_backlog", "Stored messages whose receipt this process has not yet published",
            registry=r)
        self.verdicts = Counter(
            "citybrain_verify_verdicts_total", "City-code verifications answered, by verdict", ["verdict"],
            registry=r)
        self.source_errors = Counter(
            "citybrain_metrics_source_errors_total", "Store-derived figures that could not be read at a scrape",
            ["source"], registry=r)
        self.sources: list[tuple[str, Source]] = []
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._verdict_children: dict[str, Any] = {}
        r.register(_StoreCollector(self))

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        # the labelled child cached per series: `.labels()` builds and locks on every call (hot path)
        key = (route, method, status // 100)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_duration.labels(route=route, method=method,
                                                                         status=f"{key[2]}xx")
        child.observe(seconds)

    def verdict(self, verdict: str) -> None:
        child = self._verdict_children.get(verdict)
        if child is None:
            child = self._verdict_children[verdict] = self.verdicts.labels(verdict=verdict)
        child.inc()

    def source(self, name: str, fn: Source) -> None:
        """Register a store-derived figure set (a capability's `setup(hub)` calls this)."""
        self.sources.append((name, fn))

    def observe_ingest(self, kind: str, stored: int, refused: int, lags_s: Iterable[float] = ()) -> None:
        if stored:
            self.ingested.labels(kind=kind, result="stored").inc(stored)
        if refused:
            self.ingested.labels(kind=kind, result="refused").inc(refused)
        h = self.ingest_lag.labels(kind=kind)
        for lag in lags_s:
            h.observe(max(0.0, lag))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def lag_from(ts: Any, now: float | None = None) -> float | None:
    """Seconds since a message's epoch timestamp (None when it carries none or an absurd one)."""
    if not isinstance(ts, int | float) or ts <= 0:
        return None
    return (now or time.time()) - float(ts)
