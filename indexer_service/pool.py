"""WorkerPool: N workers take batches and run them through a `Loader`, reads overlapping writes.

Each worker prepares its batch (read + extract) in a thread, then writes it in a thread behind a
``CapacityLimiter(1)``: DuckDB allows one writer per row. Prepares, too, run one at a time by
default (``readers``): the read loop is Python and holds the GIL between its system calls, so
two readers slow each other and the writer more than they add. Measured on the 2-core machine
(100k files, batches of 5,000, `benchmarks/bench_loader.py`): two workers both reading reach a
median of 18,900 files/s at 76-93 us of CPU per file; one reader and three workers 22,200
files/s at 60-73 us, the CPU cost of a single thread. Four workers keep both stages busy: one
batch is written, one is read, two wait between them. Reading and writing take about as long
per batch (40 and 43 us a file in the pipeline), so with a single batch between them either
stage often waited for the other: 11 alternating runs gave a median of 21,200 files/s with
four workers against 18,800 with three (9 of 11 pairs faster, +2,400 files/s the median pair),
for ~65 MB more peak memory (median of the pairs).

One reader reads one file at a time, so files that are not in the page cache (a first start
after a boot) would each wait for the disk: 3,300 files/s against 23,000 from the cache. A
batch of at least `PREFETCH_MIN_FILES` whose sampled files are not cached is first handed to
the kernel to read ahead (`versions.prefetch`, on `PREFETCH_THREADS` threads, while the
previous batch is read): 11,800 files/s from a cold cache. A cached batch skips it (its cost
is an extra open per file).

At most ``workers`` batches are in flight (the hand-off stream has no buffer), so memory stays
flat however far the database falls behind: the producer simply waits.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from .recovery import DatabaseRecovery
from .versions import in_page_cache, prefetch

if TYPE_CHECKING:
    from .loader import BatchResult, Loader

__all__ = ["PREFETCH_MIN_FILES", "WorkerPool", "default_workers"]

log = structlog.get_logger(__name__)

Requeue = Callable[[list[str]], Awaitable[None]]
_COUNTERS = (
    "batches files_indexed files_errors files_deleted files_skipped files_requeued files_prefetched"
).split()

PREFETCH_MIN_FILES = 256
"""Smallest batch that is checked for files missing from the page cache (bulk loads)."""
PREFETCH_THREADS = 4
_PROBES = 8  # files per batch checked for being in the page cache


def default_workers() -> int:
    """The CPU count, at least 4: one batch read, one written, two waiting between them."""
    return max(4, os.cpu_count() or 1)


class WorkerPool:
    """Runs batches through ``loader`` with ``workers`` batches in flight (default:
    `default_workers`), of which ``readers`` are read at once."""

    def __init__(
        self,
        loader: Loader,
        workers: int | None = None,
        *,
        readers: int = 1,
        on_batch_done: Callable[[BatchResult, Sequence[str]], None] | None = None,
    ) -> None:
        self.loader = loader
        self.workers = max(1, workers or default_workers())
        self.readers = max(1, min(readers, self.workers))
        self.on_batch_done = on_batch_done
        self._prepare_limiter = anyio.CapacityLimiter(self.readers)
        self._write_limiter = anyio.CapacityLimiter(1)
        self.recovery = DatabaseRecovery(loader.db, limiter=self._write_limiter)
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._seconds = {"read": 0.0, "parse": 0.0, "write": 0.0}
        self._latency_ms: deque[float] = deque(maxlen=1024)
        self._busy = 0

    async def run(
        self,
        batches: AsyncIterable[Sequence[str]],
        requeue: Requeue,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume ``batches`` until it ends; return once every batch taken is written.

        Paths to read again go to ``requeue`` from a separate task, so a full queue upstream
        cannot stall the workers. A batch whose write fails for a database-level reason (a full
        disk) is retried by `recovery`; any other error writing a batch is raised.
        """
        send, receive = anyio.create_memory_object_stream[tuple[Sequence[str], float]](0)
        async with anyio.create_task_group() as tg:
            with receive:
                for _ in range(self.workers):
                    tg.start_soon(self._worker, receive.clone(), requeue, tg)
            task_status.started()
            async with send:
                async for paths in batches:
                    if paths:
                        self._busy += 1  # counted from here, so idle means nothing in flight
                        await send.send((paths, time.perf_counter()))

    async def _worker(
        self,
        receive: MemoryObjectReceiveStream[tuple[Sequence[str], float]],
        requeue: Requeue,
        tg: TaskGroup,
    ) -> None:
        async with receive:
            async for paths, taken in receive:
                try:  # a full disk or a failed database: wait, then load the batch again
                    result = await self.recovery.run(partial(self._load, paths), files=len(paths))
                except Exception:
                    self._busy -= 1
                    log.exception("batch_failed", files=len(paths))
                    raise
                self._record(result, (time.perf_counter() - taken) * 1000)
                if result.requeue:
                    self._busy += 1
                    tg.start_soon(self._requeue, requeue, result.requeue)
                self._busy -= 1
                if self.on_batch_done is not None:
                    self.on_batch_done(result, paths)

    async def _load(self, paths: Sequence[str]) -> BatchResult:
        await self._prefetch_if_cold(paths)
        prepared = await anyio.to_thread.run_sync(
            self.loader.prepare, paths, limiter=self._prepare_limiter
        )
        return await anyio.to_thread.run_sync(
            self.loader.write, prepared, limiter=self._write_limiter
        )

    async def _prefetch_if_cold(self, paths: Sequence[str]) -> None:
        if len(paths) < PREFETCH_MIN_FILES:
            return
        step = len(paths) // _PROBES
        probes = [paths[i * step] for i in range(_PROBES)]
        cached = await anyio.to_thread.run_sync(lambda: [in_page_cache(p) for p in probes])
        if False not in cached:
            return
        self._counts["files_prefetched"] += len(paths)
        size = -(-len(paths) // PREFETCH_THREADS)
        async with anyio.create_task_group() as tg:
            for start in range(0, len(paths), size):
                tg.start_soon(
                    partial(anyio.to_thread.run_sync, prefetch, paths[start : start + size])
                )

    async def _requeue(self, requeue: Requeue, paths: list[str]) -> None:
        try:
            await requeue(paths)
        except Exception as exc:  # e.g. the queue closed at shutdown: the next scan finds them
            log.warning("requeue_failed", files=len(paths), error=repr(exc))
        finally:
            self._busy -= 1

    def _record(self, r: BatchResult, ms: float) -> None:
        c = self._counts
        c["batches"] += 1
        c["files_indexed"] += r.indexed
        c["files_errors"] += r.errors
        c["files_deleted"] += r.deleted
        c["files_skipped"] += r.skipped
        c["files_requeued"] += len(r.requeue)
        self._seconds["read"] += r.read_seconds
        self._seconds["parse"] += r.parse_seconds
        self._seconds["write"] += r.write_seconds
        self._latency_ms.append(ms)
        log.debug(
            "batch_indexed",
            files=r.files,
            indexed=r.indexed,
            errors=r.errors,
            deleted=r.deleted,
            skipped=r.skipped,
            requeued=len(r.requeue),
            read_ms=round(r.read_seconds * 1000, 1),
            parse_ms=round(r.parse_seconds * 1000, 1),
            write_ms=round(r.write_seconds * 1000, 1),
            ms=round(ms, 1),
        )

    def get_stats(self) -> dict[str, Any]:
        """Counters since start, busy workers, and latency of the last 1,024 batches (ms)."""
        lat = sorted(self._latency_ms)
        latency: dict[str, float] = {}
        if lat:
            latency = {
                "mean": round(statistics.fmean(lat), 1),
                "p50": round(lat[len(lat) // 2], 1),
                "p95": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 1),
                "max": round(lat[-1], 1),
            }
        return {
            "workers": self.workers,
            "readers": self.readers,
            "busy": self._busy,
            **self._counts,
            **{f"{k}_seconds": round(v, 3) for k, v in self._seconds.items()},
            "batch_ms": latency,
        }
