"""What `bench_service` reports of a run with a writer: each file's latency from its last write
to its row, overall and per window of the run, and the reconciliation passes meanwhile."""

from __future__ import annotations

import statistics
from typing import Any

import anyio

from indexer_service import IndexerService

__all__ = ["latencies", "latency_series", "pct", "record_passes"]


def pct(values: list[float], q: int) -> float:
    """The ``q``th percentile of ``values`` (the value itself for one, 0 for none)."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _delays(writes: dict[str, float], indexed: dict[str, float]) -> list[tuple[float, float]]:
    """(last write, ms from it to the file's row) of each file indexed."""
    return [(t, max(0.0, indexed[p] - t) * 1000) for p, t in writes.items() if p in indexed]


def latencies(writes: dict[str, float], indexed: dict[str, float]) -> dict[str, Any]:
    """From each file's last write to its row: p50/p95/p99/max ms, and the files never indexed."""
    lat = [ms for _, ms in _delays(writes, indexed)]
    return {
        "files": len(writes),
        "p50_ms": round(pct(lat, 50), 1),
        "p95_ms": round(pct(lat, 95), 1),
        "p99_ms": round(pct(lat, 99), 1),
        "max_ms": round(max(lat), 1),
        "missing": len(set(writes) - set(indexed)),
    }


async def record_passes(svc: IndexerService, passes: list[tuple[float, float, bool]]) -> None:
    """Append (end, seconds, full) of each reconciliation pass the service ends from now on
    (a pass holds a core and the GIL for its listing: the live latency may follow it)."""
    seen = svc.stats()["reconciler"]["last_scan_at"]
    while True:
        await anyio.sleep(0.25)
        rec = svc.stats()["reconciler"]
        at = rec["last_scan_at"]
        if at is not None and at != seen:
            seen = at
            passes.append((at, rec["last_duration_s"], bool(rec["last_scan_full"])))


def latency_series(
    writes: dict[str, float], indexed: dict[str, float], began: float, step: float
) -> list[dict[str, float]]:
    """The latency of the files written in each ``step`` seconds of the run: p95 and max ms."""
    buckets: dict[int, list[float]] = {}
    for t, ms in _delays(writes, indexed):
        buckets.setdefault(int((t - began) // step), []).append(ms)
    return [
        {"at_s": k * step, "files": len(v), "p95_ms": round(pct(v, 95)), "max_ms": round(max(v))}
        for k, v in sorted(buckets.items())
    ]
