"""Reconciler: the periodic scan that makes sure no storage file is missed.

Each scan lists the tree (`lister.TreeLister`: scandir + stat, ~3x faster here than DuckDB
``glob``/``read_blob``) into Arrow and compares it with ``file_index`` in one DuckDB join, in a
worker thread. New files (no row), modified ones (size or mtime: `file_index.same_version_sql`),
retried ones (an ``error`` row of the same version whose ``retry_after`` passed) and rows of any
other status go to ``on_missing_files`` and are `scan_now`'s result, all of them, in chunks,
sorted by path (a bulk batch holds one record type and neighbouring records). Rows whose file is
gone go to ``on_deleted_files``, only from directories listed completely in that scan (a failed
listing infers nothing) and once a ``stat`` confirms ENOENT. A storage root that is missing, cannot
be listed, or holds none of the record folders while the index has rows under it (the empty mount
point of a disk not mounted) is *unavailable*: the pass reports nothing, the source's health says
so, and the next pass after it is back is a full one, which finds the real differences.

When a change the watcher missed is seen (I = ``interval_seconds``, N = ``full_scan_every``):

* new or removed directories, and any change in a *hot* directory (it or a file in it changed
  within ``hot_seconds``, 15 min): at the next scan, within I;
* any other change (in a cold directory, e.g. an in-place rewrite of an old file; a ``file_index``
  row of a file never listed): at the next *full* pass, which stats every file. A full pass is due
  every Nth scan (5 min by default) but waits until the previous one's CPU time divided by
  ``full_scan_cpu_share`` (1% of a core) has passed: late by at most max(N x I, C / share), about
  5 min with 100k files and 12-15 min with 1M files here (a full pass costs 7-9 CPU-s at 1M);
* a directory whose mtime is within 2 s of a scan is listed again at the next one (a second change
  in the same timestamp tick would not move its mtime).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Self

import anyio
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from anyio.abc import TaskStatus

from indexer_service.errors import ConfigError
from indexer_service.model import SCAN_KINDS, Emit, ScanReport
from indexer_service.settings import at_least, positive
from indexer_service.source import every
from indexer_service.sources.json_tree.compare import (
    DELETED_PARTIAL_SQL,
    DUE_SQL,
    FULL_SQL,
    MISSING_SQL,
    ROWS_UP_TO_SQL,
)
from indexer_service.sources.json_tree.entries import SKIPPED_KINDS, keys
from indexer_service.sources.json_tree.layout import FILE_TYPES, classify_relative
from indexer_service.sources.json_tree.listing import (
    SCHEMA,
    CancelFlag,
    Listing,
    PathList,
    ScanCancel,
    Scandir,
)
from indexer_service.sources.json_tree.sharded import ShardedLister
from indexer_service.stats import ReconcilerStats, scan_counts
from indexer_service.store.database import Database
from indexer_service.threads import run_in_thread

__all__ = ["PathList", "Reconciler"]

log = structlog.get_logger(__name__)

_MAX_ERROR_LOGS = 20  # listing errors logged one by one per scan; the rest are counted

_EMPTY_ROOT = (
    f"it holds none of the record folders ({', '.join(FILE_TYPES)}), as the mount point of a "
    "disk that is not mounted"
)


@dataclass
class _Result:
    listing: Listing
    missing: PathList = field(default_factory=PathList)
    deleted: PathList = field(default_factory=PathList)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCAN_KINDS, 0))
    unconfirmed: int = 0
    files: int = 0  # listed (the listing's rows are dropped once compared)
    cpu_s: float = 0.0
    unavailable: str | None = None
    """Why the root is unavailable (nothing is reported)."""


class Reconciler(anyio.AsyncContextManagerMixin):
    """Scan ``storage_path`` against ``file_index`` now (`scan_now`) and every interval (`run`).

    ``async with Reconciler(...)`` runs the periodic loop;
    a service runs it in its own task group with ``await tg.start(reconciler.run)``. The loop
    waits ``interval_seconds`` (through the injectable ``sleep``) after each scan, so the first
    periodic scan comes one interval after start: callers run the initial scan themselves.
    ``clock`` gives epoch seconds (compared with ``retry_after``); ``scandir`` is the listing
    function (tests inject failures or gates through it). Once a full pass lists
    ``shard_min_files`` files, or from the first pass when the index holds that many under the
    root, a child process lists half of the tree (`ShardedLister`; not with a custom
    ``scandir``, one CPU, or None); `close` stops it.
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str],
        db: Database,
        *,
        interval_seconds: float = 30.0,
        full_scan_every: int = 10,
        on_missing_files: Emit | None = None,
        on_deleted_files: Emit | None = None,
        chunk_size: int = 5_000,
        hot_seconds: float = 900.0,
        full_scan_cpu_share: float = 0.01,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        scandir: Scandir = os.scandir,
        on_scan_done: Callable[[ScanReport], Awaitable[None]] | None = None,
        shard_min_files: int | None = 50_000,
    ) -> None:
        positive("interval_seconds", interval_seconds)
        at_least("full_scan_every", full_scan_every, 1)
        at_least("chunk_size", chunk_size, 1)
        if not 0 < full_scan_cpu_share <= 1:
            raise ConfigError(f"full_scan_cpu_share must be in (0, 1], got {full_scan_cpu_share!r}")
        self.storage_path = Path(storage_path)
        self.interval_seconds = interval_seconds
        self.full_scan_every = full_scan_every
        self.chunk_size = chunk_size
        self.full_scan_cpu_share = full_scan_cpu_share
        self._db = db
        self._on_missing = on_missing_files
        self._on_deleted = on_deleted_files
        self._on_scan_done = on_scan_done  # e.g. for metrics
        self.last_report: ScanReport | None = None
        """What the latest scan found (`scan_now` returns the missing paths themselves)."""
        self._clock = clock
        self._sleep = sleep
        self._root = str(self.storage_path)
        self._prefix = self._root.rstrip("/") + "/"
        self._lister = ShardedLister(
            self._root, scandir=scandir, hot_seconds=hot_seconds, min_files=shard_min_files
        )
        self._lock = anyio.Lock()
        self._since_full = 0
        self._last_full: tuple[float, float] | None = None  # (clock at start, CPU seconds)
        self._missing_logged = False
        self.unavailable: str | None = None
        """Why the storage root could not be listed at the latest pass (None: it could)."""
        self._stats: dict[str, Any] = {
            "scans_full": 0, "scans_partial": 0, "scans_failed": 0, "full_scans_postponed": 0,
            "last_scan_at": None, "last_scan_full": None, "last_duration_s": 0.0,
            "last_full_cpu_s": None, "files_listed": 0, "dirs_listed": 0, "dirs_checked": 0,
            "errors": 0, "errors_total": 0, "storage_missing": False,
            "last": dict.fromkeys(SCAN_KINDS, 0), "total": dict.fromkeys(SCAN_KINDS, 0),
        }  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Scan every ``interval_seconds`` until cancelled; ``started()`` at once."""
        await every(
            self.interval_seconds,
            self.scan_now,
            on_failure=self._failed,
            sleep=self._sleep,
            task_status=task_status,
        )

    def _failed(self, exc: Exception) -> None:
        self._stats["scans_failed"] += 1
        log.error("reconcile_failed", error=repr(exc), exc_info=exc)

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Self]:
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):  # the child's exit is waited for
                    await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Stop the listing child process, if one runs (a later large scan starts it again).
        Called on leaving ``async with``; safe to call more than once."""
        self._lister.close()

    # -- scanning ----------------------------------------------------------------------------

    async def scan_now(self, *, full: bool | None = None) -> PathList:
        """Scan (after any scan in flight), hand the results to the callbacks and return the
        missing files. ``full=None`` follows the schedule (every ``full_scan_every``th)."""
        async with self._lock:
            now = self._clock()
            want_full = self._full_due(now) if full is None else full
            started = time.perf_counter()
            try:
                with ScanCancel() as cancel:
                    scan = partial(self._scan_sync, want_full, now, cancel)
                    res = await run_in_thread(scan, cancel.set)
                await self._deliver(res)
            except BaseException:
                self._lister.reset()  # its memory may be ahead of what was delivered
                raise
            if res.listing.full:
                self._last_full = (now, res.cpu_s)
            report = self._record(res, time.perf_counter() - started)
            if self._on_scan_done is not None:
                await self._on_scan_done(report)
            return res.missing

    def _full_due(self, now: float) -> bool:
        """Every ``full_scan_every``th scan, unless the last full pass's CPU time divided by
        ``full_scan_cpu_share`` has not elapsed since it started."""
        if self._since_full + 1 < self.full_scan_every:
            return False
        if self._last_full is not None:
            at, cpu_s = self._last_full
            if 0 <= now - at < cpu_s / self.full_scan_cpu_share:
                self._stats["full_scans_postponed"] += 1
                return False
        return True

    def _scan_sync(self, full: bool, now: float, cancel: CancelFlag) -> _Result:
        started = time.thread_time()
        # A first pass over an index that holds none of these files needs their names only:
        # all are new and none is gone, so there is nothing to stat or join. (A file the
        # watcher indexes meanwhile goes out again and is read twice.) One over a large index
        # is split between two processes from its start.
        known = 0 if self._lister.primed else self._rows_up_to(self._lister.min_files or 1)
        stat = self._lister.primed or known > 0
        listing = self._lister.scan(full=full, cancel=cancel, stat=stat, known_files=known)
        res = _Result(listing)
        if listing.unavailable is not None:
            state = "it is missing" if listing.root_missing else "it cannot be listed"
            res.unavailable = f"{state} ({listing.unavailable})"
            return res
        if not listing.tops and self._rows_up_to(1):
            self._lister.reset()  # listed whole when it is back: the real differences then
            res.unavailable = _EMPTY_ROOT
            return res
        if stat:
            self._compare(res, now)
        else:  # all new: sorted by path in Arrow
            rel = pa.chunked_array([b.column("rel") for b in listing.batches], pa.string())
            res.files, listing.batches = len(rel), []
            rel = rel.take(pc.sort_indices(rel))
            res.missing = PathList(pc.binary_join_element_wise(self._prefix, rel, ""))
            res.counts["new"] = res.files
        if listing.full:  # hand the Arrow buffers of a big listing back to the OS
            pa.default_memory_pool().release_unused()
        res.counts["deleted"] = len(res.deleted)
        res.cpu_s = time.thread_time() - started + listing.child_cpu_s
        return res

    def _compare(self, res: _Result, now: float) -> None:
        """Join the listing with ``file_index``: what is missing, and what is gone."""
        listing, cur = res.listing, self._db.cursor()
        params = {"prefix": self._prefix, "now": now}
        if not listing.full:  # pending and due error rows in directories not listed
            rels = [p[len(self._prefix) :] for (p,) in cur.sql(DUE_SQL, params=params).fetchall()]
            rels = [r for r in rels if r.rpartition("/")[0] not in listing.covered]
            if rels := [r for r in rels if classify_relative(r) is not None]:
                listing.batches.append(self._lister.stat_files(rels))
        seen = pa.Table.from_batches(listing.batches, SCHEMA)
        cur.register("_reconcile_seen", seen)
        try:
            if listing.full or seen.num_rows:
                sql = FULL_SQL if listing.full else MISSING_SQL
                found = cur.sql(sql, params=params).to_arrow_table()
                is_deleted = pc.equal(found.column("kind"), "deleted")
                missing = found.filter(pc.invert(is_deleted))
                res.missing = PathList(missing.column("file_path"))
                for row in pc.value_counts(missing.column("kind")).to_pylist():
                    res.counts[row["values"]] = row["counts"]
                res.deleted = self._confirm(res, found.filter(is_deleted).column("file_path"))
            if listing.gone:
                cur.register("_reconcile_gone", pa.table({"rel": keys(listing.gone)}))
                try:
                    rows = cur.sql(DELETED_PARTIAL_SQL, params={"prefix": self._prefix})
                    res.deleted = self._confirm(res, rows.to_arrow_table().column(0))
                finally:
                    cur.unregister("_reconcile_gone")
        finally:
            cur.unregister("_reconcile_seen")
        res.files, listing.batches = seen.num_rows, []  # not held while the results go out

    def _rows_up_to(self, cap: int) -> int:
        """How many rows ``file_index`` holds under the root, counted up to ``cap``."""
        params = {"prefix": self._prefix, "cap": cap}
        found = self._db.cursor().sql(ROWS_UP_TO_SQL, params=params).fetchall()
        return int(found[0][0])

    def _confirm(self, res: _Result, rows: pa.ChunkedArray) -> PathList:
        """The rows whose file a stat says is gone, outside directories that failed."""
        cut = len(self._prefix)
        rels = [p[cut:] for p in rows.to_pylist()]
        gone, res.unconfirmed = self._lister.confirm_gone(rels, res.listing.failed)
        return PathList(pa.array([self._prefix + r for r in gone], pa.string()))

    async def _deliver(self, res: _Result) -> None:
        for found, callback in ((res.missing, self._on_missing), (res.deleted, self._on_deleted)):
            if callback is not None:
                for chunk in found.chunks(self.chunk_size):
                    await callback(chunk)

    def _record(self, res: _Result, duration: float) -> ScanReport:
        listing, stats = res.listing, self._stats
        stats["last_scan_at"] = self._clock()
        stats["last_duration_s"] = round(duration, 4)
        stats["last_scan_full"] = listing.full
        if listing.full:
            stats["last_full_cpu_s"] = round(res.cpu_s, 3)
        stats["scans_full" if listing.full else "scans_partial"] += 1
        self._since_full = 0 if listing.full else self._since_full + 1
        errors = len(listing.errors) + res.unconfirmed
        if listing.unavailable is not None and not listing.root_missing:
            errors += 1
            log.error("listing_failed", dir=self._root, error=listing.unavailable)
        missing = listing.root_missing or res.unavailable == _EMPTY_ROOT
        if missing and not self._missing_logged:
            log.warning(
                "storage_missing",
                path=self._root,
                error=res.unavailable,
                action="source unavailable: the index keeps its rows until it is back",
            )
        elif res.unavailable is None and self._missing_logged:
            log.info("storage_found", path=self._root)
        if missing or res.unavailable is None:
            self._missing_logged = missing
            stats["storage_missing"] = listing.root_missing
        self.unavailable = res.unavailable
        for path, error in listing.errors[:_MAX_ERROR_LOGS]:
            log.warning("listing_failed", dir=self._prefix + path, error=error)
        for path, kind in listing.skipped[:_MAX_ERROR_LOGS]:
            log.warning(
                "entry_skipped",
                path=self._prefix + path,
                kind=kind,
                action="not opened, not indexed; counted in status until it goes",
            )
        files = res.files
        stats.update(files_listed=files, dirs_checked=listing.dirs_checked, errors=errors)
        stats.update(dirs_listed=listing.dirs_listed, last=dict(res.counts))
        stats["errors_total"] += errors
        for kind, n in res.counts.items():
            stats["total"][kind] += n
        (log.info if any(res.counts.values()) or listing.full else log.debug)(
            "reconcile_done", full=listing.full, ms=round(duration * 1000, 1), files=files,
            dirs_listed=listing.dirs_listed, processes=listing.processes, errors=errors,
            **res.counts,
        )  # fmt: skip
        self.last_report = ScanReport(listing.full, duration, dict(res.counts))
        return self.last_report

    def get_stats(self) -> ReconcilerStats:
        """Scans done (full, partial, failed), the last scan's time, duration, files listed and
        findings, totals, listing errors, and the directories remembered."""
        dirs, hot, skipped = self._lister.counts()
        s = self._stats
        return ReconcilerStats(
            scans_full=s["scans_full"],
            scans_partial=s["scans_partial"],
            scans_failed=s["scans_failed"],
            full_scans_postponed=s["full_scans_postponed"],
            last_scan_at=s["last_scan_at"],
            last_scan_full=s["last_scan_full"],
            last_duration_s=s["last_duration_s"],
            last_full_cpu_s=s["last_full_cpu_s"],
            files_listed=s["files_listed"],
            dirs_listed=s["dirs_listed"],
            dirs_checked=s["dirs_checked"],
            errors=s["errors"],
            errors_total=s["errors_total"],
            storage_missing=s["storage_missing"],
            unavailable=self.unavailable,
            skipped={kind: skipped.get(kind, 0) for kind in SKIPPED_KINDS},
            last=scan_counts(s["last"]),
            total=scan_counts(s["total"]),
            dirs_known=dirs,
            dirs_hot=hot,
            listing_child_pid=self._lister.child_pid,
        )
