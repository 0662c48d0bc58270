"""The typed snapshot `IndexerService.stats()` returns, one TypedDict per stage.

A leaf: values only, imported by the stages that fill them and by hosts that read them. Every
counter counts since the service started; ``last_*`` values describe the latest event.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Literal, NotRequired, TypedDict

__all__ = [
    "AccumulatorStats",
    "BackfillStats",
    "DatabaseSourceStats",
    "LatencyStats",
    "ReconcilerStats",
    "ScanCounts",
    "ServiceState",
    "ServiceStats",
    "TreeSourceStats",
    "WatcherStats",
    "WorkerStats",
    "WriteStats",
]


class BackfillStats(TypedDict):
    """The first sync of what the stores held at start."""

    total: int
    """Records found missing or stale by the initial scans."""
    done: int
    """Of those, written (indexed, error rows or deletions) so far."""
    finished: bool
    """Whether the backfill is written (set by the service itself once its batches are)."""


class AccumulatorStats(TypedDict):
    """Keys coming in and batches going out (`accumulator.FileBatchAccumulator`)."""

    files_added: int
    duplicates_dropped: int
    """Keys already pending or in a waiting batch when they came again."""
    files_flushed: int
    files_discarded: int
    """Keys dropped at a stop that does not flush."""
    batches_size: int
    """Batches cut because they reached ``max_files``."""
    batches_timer: int
    """Batches cut by the ``window_ms`` timer."""
    batches_force: int
    """Batches cut by `drain` / `force_flush`."""
    batches_stop: int
    """Batches cut at shutdown."""
    batches_taken: int
    batches_coalesced: int
    """Waiting batches merged into one (bulk loads, bursts)."""
    largest_batch: int
    pending: int
    """Keys in the batch being collected now."""
    ready: int
    """Keys in cut batches waiting for a worker."""
    producers_waiting: int
    """Producers held back by ``max_pending`` now."""
    backpressure_wait_s: float
    """Seconds producers spent held back, summed."""


class LatencyStats(TypedDict, total=False):
    """Milliseconds from a batch's cut to its commit, over the last 1,024 batches (empty before
    the first)."""

    mean: float
    p50: float
    p95: float
    max: float


def latency_stats(ms: Iterable[float]) -> LatencyStats:
    """Mean, p50, p95 and max of ``ms`` (milliseconds), rounded to 0.1; empty for none."""
    ordered = sorted(ms)
    if not ordered:
        return LatencyStats()
    return LatencyStats(
        mean=round(statistics.fmean(ordered), 1),
        p50=round(ordered[len(ordered) // 2], 1),
        p95=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
        max=round(ordered[-1], 1),
    )


class CommitStats(TypedDict, total=False):
    """Milliseconds the writer held the database for each batch's write and each write
    group's commit (a commit that checkpoints includes the checkpoint): p50 and p99 over the
    last 1,024, the longest since start, and how many took over a second (empty before the
    first)."""

    p50: float
    p99: float
    max: float
    over_1s: int


class WorkerStats(TypedDict):
    """The worker pool (`pool.WorkerPool`)."""

    workers: int
    """Batches in flight at most."""
    readers: int
    """Batches read at once at most."""
    busy: int
    """Batches in flight now."""
    batches: int
    files_indexed: int
    files_errors: int
    """Records stored as error rows (unreadable, invalid)."""
    files_deleted: int
    files_skipped: int
    """Keys whose record had not changed since it was indexed."""
    files_requeued: int
    """Keys handed back to the accumulator after a failed write."""
    files_prefetched: int
    follow_ups: int
    """Batches read while the previous one was written (database backfills)."""
    read_seconds: float
    parse_seconds: float
    write_seconds: float
    batch_ms: LatencyStats
    write_ms: CommitStats


class WriteStats(TypedDict):
    """Writes to the index (`store.write_retry.WriteRetry`)."""

    state: Literal["ok", "failing"]
    error: str | None
    """The last write error while failing."""
    failing_since: float | None
    failed_writes: int
    reopens: int
    """Times the database was reopened after an error that invalidated it."""
    recoveries: int


class ScanCounts(TypedDict):
    """What a reconciliation pass found (`model.SCAN_KINDS`)."""

    new: int
    modified: int
    retried: int
    deleted: int
    pending: int


def scan_counts(counts: Mapping[str, int]) -> ScanCounts:
    """A pass's ``{finding: count}`` as `ScanCounts` (a finding not in it counts 0)."""
    return ScanCounts(
        new=counts.get("new", 0),
        modified=counts.get("modified", 0),
        retried=counts.get("retried", 0),
        deleted=counts.get("deleted", 0),
        pending=counts.get("pending", 0),
    )


class ReconcilerStats(TypedDict):
    """The legacy tree's reconciler (`sources.json_tree.reconciler.Reconciler`)."""

    scans_full: int
    scans_partial: int
    scans_failed: int
    full_scans_postponed: int
    """Full passes put off because the last one cost more CPU than its share."""
    last_scan_at: float | None
    """Epoch seconds."""
    last_scan_full: bool | None
    last_duration_s: float
    last_full_cpu_s: float | None
    files_listed: int
    dirs_listed: int
    dirs_checked: int
    errors: int
    """Listing errors of the last pass."""
    errors_total: int
    storage_missing: bool
    unavailable: str | None
    """Why the storage root could not be listed at the latest pass: missing, unreadable, or
    holding no record folder while the index has rows under it (None: it could)."""
    skipped: dict[str, int]
    """Entries skipped without being opened, by kind (``fifo``, ``socket``, ``device``,
    ``folder``, ``misplaced``, ``link``), as the tree's directories were when last listed."""
    last: ScanCounts
    total: ScanCounts
    dirs_known: int
    dirs_hot: int
    """Directories changed recently, listed by every partial pass."""
    listing_child_pid: int | None


class WatcherStats(TypedDict):
    """The legacy tree's watcher (`sources.json_tree.watcher.StorageWatcher`)."""

    events: int
    dirs_swept: int
    """New directories listed because events inside them may have been missed."""
    files_from_sweeps: int
    rearms: int
    restarts: int
    """Watches armed again after watchfiles gave them up (a name that is not valid UTF-8)."""
    failures: int


class TreeSourceStats(TypedDict):
    """A legacy tree's stages, as `ServiceStats` shows them."""

    reconciler: ReconcilerStats
    watcher: WatcherStats


class DatabaseSourceStats(TypedDict):
    """One OpenCode database followed (`sources.sqlite.source.DatabaseSource`)."""

    path: str
    exists: bool
    unavailable: str | None
    """Why it cannot be read now, if it cannot."""
    polls: int
    polls_skipped: int
    """Polls that found no commit since the previous one."""
    last_poll_at: float | None
    busy_retries: int
    longest_read_s: float
    connection_open: bool
    signals: int
    """Changes of the file or its WAL seen by the watcher."""
    scans: int
    listings: int
    scans_failed: int
    last_scan_at: float | None
    last_duration_s: float
    last: ScanCounts


class SinkStats(TypedDict):
    """The PostgreSQL sink (`ship.sink.Sink`): where it ships and how far behind it is."""

    target: str
    """The server's URL, its password hidden."""
    machine_id: str | None
    state: Literal["starting", "shipping", "caught_up", "unreachable", "failing"]
    shipped_seq: int | None
    """The last change number on the server (None until the server was reached)."""
    committed_seq: int
    """The last change number written to the index."""
    behind_changes: int
    """Transactions written to the index and not yet shipped."""
    behind_seconds: float
    """Age of the oldest unshipped change written by this run (0 when caught up)."""
    rows_shipped: int
    groups_replaced: int
    windows: int
    """PostgreSQL transactions that shipped changes."""
    restarts: int
    """Times the machine was shipped from the start (first shipment, another index)."""
    last_shipped_at: float | None
    """Epoch seconds of the last window shipped."""
    lag_ms: LatencyStats
    """Milliseconds from a change's commit in the index to its commit on the server, over the
    last 4,096 changes shipped by this run (empty before the first)."""
    error: str | None
    """Why the sink is unreachable or failing (one line, no password)."""


ServiceState = Literal["starting", "running", "stopping", "stopped"]


class ServiceStats(TypedDict):
    """`IndexerService.stats()`: the whole service at one moment."""

    state: ServiceState
    uptime_s: float
    storage_path: str | None
    """The legacy tree followed, if any."""
    db_path: str
    """The index."""
    backfill: BackfillStats
    accumulator: AccumulatorStats
    workers: WorkerStats
    database: WriteStats
    reconciler: NotRequired[ReconcilerStats]
    """With a legacy tree only."""
    watcher: NotRequired[WatcherStats]
    """With a legacy tree only."""
    databases: dict[str, DatabaseSourceStats]
    """OpenCode databases followed, by path."""
    sink: NotRequired[SinkStats]
    """With ``ship_to`` set only."""
    files: dict[str, dict[str, int]]
    """``{record type: {status: count}}`` in the index, refreshed after writes (at most once a
    second) and by `wait_until_synced`."""
