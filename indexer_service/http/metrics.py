"""Prometheus metrics of one service, in a registry of its own (several services per process).

Counters and histograms are fed by the service as work completes (`batch_done`,
`reconcile_done`, `query_done`); gauges describing current state (files by type and status,
accumulator pending, busy workers, uptime) are set from ``stats()`` at scrape time (`render`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from indexer_service.model import ScanReport

__all__ = ["CONTENT_TYPE", "Buckets", "Metrics", "histogram_quantile"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of `Metrics.render` output (Prometheus text format 0.0.4)."""

# Batches take milliseconds to seconds; events reach the index in ~window + write time.
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_QUERY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
_FINDINGS = ("new", "modified", "retried", "deleted")

Buckets = Sequence[tuple[float, float]]
"""A histogram as cumulative ``(upper bound, observations)`` pairs, the last bound ``inf``."""


class Metrics:
    """The service's metrics; every method is cheap and may be called from any thread."""

    def __init__(self, namespace: str = "indexer") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.files_indexed = Counter(
            "files_indexed",
            "Files whose rows were written, by file type",
            ["file_type"],
            namespace=ns,
            registry=r,
        )
        self.file_errors = Counter(
            "file_errors",
            "Files that failed to index (kept as status=error)",
            namespace=ns,
            registry=r,
        )
        self.files_deleted = Counter(
            "files_deleted", "Deleted files whose rows were removed", namespace=ns, registry=r
        )
        self.batches = Counter("batches", "Batches written", namespace=ns, registry=r)
        self.batch_seconds = Histogram(
            "batch_seconds",
            "Time to read, extract and write one batch",
            namespace=ns,
            registry=r,
            buckets=_BATCH_BUCKETS,
        )
        self.event_to_index_seconds = Histogram(
            "event_to_index_seconds",
            "Time from a file change being seen to its rows being committed",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.reconciles = Counter(
            "reconciles", "Reconciliation scans done", namespace=ns, registry=r
        )
        self.reconcile_seconds = Histogram(
            "reconcile_seconds",
            "Duration of one reconciliation scan",
            namespace=ns,
            registry=r,
            buckets=_RECONCILE_BUCKETS,
        )
        self.reconcile_findings = Counter(
            "reconcile_findings",
            "Files a reconciliation found out of sync, by kind (new, modified, retried, deleted)",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        self.queries = Counter(
            "queries",
            "Read-only queries answered, by outcome (ok, refused, failed, timeout)",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        self.query_seconds = Histogram(
            "query_seconds",
            "Duration of read-only queries",
            namespace=ns,
            registry=r,
            buckets=_QUERY_BUCKETS,
        )
        self.files = Gauge(
            "files",
            "Files in file_index by file type and status (indexed, error)",
            ["file_type", "status"],
            namespace=ns,
            registry=r,
        )
        self.accumulator_pending = Gauge(
            "accumulator_pending",
            "Files detected and waiting to be batched",
            namespace=ns,
            registry=r,
        )
        self.workers_busy = Gauge(
            "workers_busy", "Batch workers busy now", namespace=ns, registry=r
        )
        self.uptime_seconds = Gauge(
            "uptime_seconds", "Seconds since the pipeline started", namespace=ns, registry=r
        )
        self._namespace = ns
        self._sink: dict[str, Gauge] = {}  # created with the first stats that have a sink
        for kind in _FINDINGS:  # export zeros so rate() works from the first scrape
            self.reconcile_findings.labels(kind=kind)

    def batch_done(
        self,
        *,
        indexed_by_type: Mapping[str, int],
        errors: int = 0,
        deleted: int = 0,
        seconds: float,
        latencies_s: Iterable[float] = (),
    ) -> None:
        """Record one written batch: files by type, errors, deletions, its duration, and the
        event-to-index latency of each file that came from a watched change."""
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        for file_type, n in indexed_by_type.items():
            if n:
                self.files_indexed.labels(file_type=file_type).inc(n)
        self.file_errors.inc(errors)
        self.files_deleted.inc(deleted)
        for latency in latencies_s:
            self.event_to_index_seconds.observe(max(latency, 0.0))

    def latency_buckets(self) -> Buckets:
        """`event_to_index_seconds` now; subtract an earlier snapshot for a window."""
        return [
            (float(sample.labels["le"]), sample.value)
            for metric in self.event_to_index_seconds.collect()
            for sample in metric.samples
            if sample.name.endswith("_bucket")
        ]

    def reconcile_done(self, report: ScanReport) -> None:
        """Record one reconciliation scan and what it found out of sync."""
        self.reconciles.inc()
        self.reconcile_seconds.observe(report.duration_s)
        for kind in _FINDINGS:
            if n := report.counts.get(kind, 0):
                self.reconcile_findings.labels(kind=kind).inc(n)

    def query_done(self, outcome: str, seconds: float) -> None:
        """Record one read-only query: ``ok``, ``refused``, ``failed`` or ``timeout``."""
        self.queries.labels(outcome=outcome).inc()
        self.query_seconds.observe(seconds)

    def update_from_stats(self, stats: Mapping[str, Any]) -> None:
        """Set the state gauges from a service ``stats()`` dict (missing keys are skipped)."""
        files = stats.get("files")
        if isinstance(files, Mapping):
            self.files.clear()  # a type or status that disappeared must not linger
            for file_type, by_status in files.items():
                for status, n in by_status.items():
                    self.files.labels(file_type=file_type, status=status).set(n)
        acc = stats.get("accumulator")
        if isinstance(acc, Mapping) and "pending" in acc:
            self.accumulator_pending.set(acc["pending"])
        workers = stats.get("workers")
        if isinstance(workers, Mapping) and "busy" in workers:
            self.workers_busy.set(workers["busy"])
        if "uptime_s" in stats:
            self.uptime_seconds.set(stats["uptime_s"])
        sink = stats.get("sink")
        if isinstance(sink, Mapping):
            self._update_sink(sink)

    def _update_sink(self, sink: Mapping[str, Any]) -> None:
        """The sink's gauges (a service without ``ship_to`` exports none): whether it ships,
        and how far behind the index it is."""
        if not self._sink:
            ns, r = self._namespace, self.registry
            for name, doc in (
                ("sink_up", "1 while the PostgreSQL sink ships or is caught up, else 0"),
                ("sink_behind_changes", "Transactions in the index not yet on the server"),
                ("sink_behind_seconds", "Age of the oldest unshipped change (0: caught up)"),
            ):
                self._sink[name] = Gauge(name, doc, namespace=ns, registry=r)
        self._sink["sink_up"].set(1 if sink.get("state") in ("shipping", "caught_up") else 0)
        self._sink["sink_behind_changes"].set(sink.get("behind_changes", 0))
        self._sink["sink_behind_seconds"].set(sink.get("behind_seconds", 0.0))

    def render(self, stats: Mapping[str, Any] | None = None) -> bytes:
        """The Prometheus text exposition, after updating the gauges from ``stats``."""
        if stats is not None:
            self.update_from_stats(stats)
        return generate_latest(self.registry)


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a histogram, interpolated linearly inside its bucket as
    Prometheus' ``histogram_quantile`` does; None without observations. A quantile beyond the
    last finite bound is reported as that bound: nothing more precise is known."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = min(q, 1.0) * total, 0.0, 0.0
    for bound, count in buckets:
        if math.isinf(bound):
            break
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
