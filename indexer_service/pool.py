"""WorkerPool: N workers take batches and run them through a source's loader, reads
overlapping writes.

Each worker warms its batch on the event loop (`BatchLoader.warm`), prepares it (fetch and
parse) in a thread behind the readers' limiter, then writes it in a thread behind a
``CapacityLimiter(1)``: DuckDB allows one writer per row. Prepares run one at a time by default
(``readers``): the read loop is Python and holds the GIL between its system calls, so two
readers slow each other and the writer more than they add. Four workers keep both stages
busy: one batch is written, one is read, two wait between them (docs/benchmarks.md).

At most ``workers`` batches are in flight (the hand-off stream has no buffer), so memory stays
flat however far the database falls behind: the producer simply waits. Batches that follow each
other share one transaction (`store.group.WriteGroup`, for those the loader calls groupable):
a batch whose rows are in the open group frees its worker and is reported (counted, handed on)
once the group commits, which is when the group is full or old, or when nothing else is in
flight. A write that fails for
a database-level reason is retried by `WriteRetry` (for at most ``write_failure_timeout``
seconds, if set: then `WriteFailedError` fails the pool); any other error fails the pool.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from indexer_service.errors import DatabaseDamagedError, WriteFailedError
from indexer_service.events import Signal
from indexer_service.model import Batch, BatchResult
from indexer_service.settings import default_workers
from indexer_service.source import BatchLoader
from indexer_service.stats import CommitStats, WorkerStats, latency_stats
from indexer_service.store.database import Database
from indexer_service.store.group import GROUP_SECONDS, WriteGroup
from indexer_service.store.write_retry import WriteAbandoned, WriteRetry
from indexer_service.threads import run_in_thread

__all__ = ["WorkerPool"]

log = structlog.get_logger(__name__)

Requeue = Callable[[list[str]], Awaitable[None]]
_COUNTERS = (
    "batches files_indexed files_errors files_deleted files_skipped files_requeued "
    "files_prefetched follow_ups"
).split()


class _Open:
    """The write group open now, and how its batches learn that it ended."""

    def __init__(self, group: WriteGroup) -> None:
        self.group = group
        self.ended = False
        self.error: BaseException | None = None
        self.wake = anyio.Event()  # the group ended, or it may be time to commit it


class WorkerPool:
    """Runs batches through ``loader`` with ``workers`` batches in flight (default:
    `default_workers`), of which ``readers`` are read at once; writes go to ``db``."""

    def __init__(
        self,
        loader: BatchLoader[Any],
        db: Database,
        workers: int | None = None,
        *,
        readers: int = 1,
        on_batch_done: Callable[[BatchResult, Batch], None] | None = None,
        write_failure_timeout: float | None = None,
    ) -> None:
        self.loader = loader
        self.workers = max(1, workers or default_workers())
        self.readers = max(1, min(readers, self.workers))
        self.on_batch_done = on_batch_done
        self._prepare_limiter = anyio.CapacityLimiter(self.readers)
        self._write_limiter = anyio.CapacityLimiter(1)
        self.retry = WriteRetry(
            db, limiter=self._write_limiter, give_up_after=write_failure_timeout
        )
        self._db = db
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._seconds = {"read": 0.0, "parse": 0.0, "write": 0.0}
        self._latency_ms: deque[float] = deque(maxlen=1024)
        self._write_ms: deque[float] = deque(maxlen=1024)
        self._write_max_ms = 0.0
        self._slow_writes = 0
        self._busy = 0
        self._ended = Signal()  # a batch or a re-queue ended
        self._following: set[str] = set()  # follow-up keys not yet prepared
        self._ending = False
        self._open: _Open | None = None  # the write group batches join (`store.group`)

    async def run(
        self,
        batches: AsyncIterable[Batch],
        requeue: Requeue,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume ``batches`` until it ends; return once every batch taken is written.

        Paths to read again go to ``requeue`` from a separate task, so a full queue upstream
        cannot stall the workers. Follow-ups (`BatchLoader.follow_up`) start only while
        ``batches`` goes on: once it ends (shutdown), a backfill stops after its current chunk.
        A batch whose write fails for a database-level reason (a full disk) is retried by
        `WriteRetry`; any other error writing a batch is raised.
        """
        self._ending = False
        send, receive = anyio.create_memory_object_stream[tuple[Batch, float]](0)
        try:
            await self._run(batches, requeue, send, receive, task_status)
        finally:  # cancelled with batches in the open group: the next start's scan has them
            if self._open is not None:
                with anyio.CancelScope(shield=True):
                    await self._end_group(RuntimeError("cancelled with the group open"))

    async def _run(
        self,
        batches: AsyncIterable[Batch],
        requeue: Requeue,
        send: MemoryObjectSendStream[tuple[Batch, float]],
        receive: MemoryObjectReceiveStream[tuple[Batch, float]],
        task_status: TaskStatus[None],
    ) -> None:
        async with anyio.create_task_group() as tg:
            with receive:
                for _ in range(self.workers):
                    tg.start_soon(self._worker, receive.clone(), requeue, tg)
            task_status.started()
            async with send:
                async for batch in batches:
                    if batch.keys:
                        self._busy += 1  # counted from here, so idle means nothing in flight
                        await send.send((batch, time.perf_counter()))
            self._ending = True  # no more input (shutdown): what is in flight ends, no follow-up

    async def _worker(
        self,
        receive: MemoryObjectReceiveStream[tuple[Batch, float]],
        requeue: Requeue,
        tg: TaskGroup,
    ) -> None:
        async with receive:
            async for batch, taken in receive:
                await self._run_batch(batch, taken, requeue, tg)

    async def _run_batch(
        self, batch: Batch, taken: float, requeue: Requeue, tg: TaskGroup, *, alone: bool = False
    ) -> None:
        """Load one batch (counted in ``_busy`` by the caller) and hand on what it asks for;
        a batch left in the open write group is handed on by `_after_group`."""
        keys = batch.keys
        load = partial(self._load, batch, requeue, tg, alone=alone)
        try:  # a full disk or a failed database: wait, then load the batch again
            result, pending = await self.retry.run(load, files=len(keys))
        except WriteAbandoned:  # failed during the shutdown: the next start's scan has it
            self._end_one()
            return
        except (WriteFailedError, DatabaseDamagedError):  # logged by the retry, once for all
            self._busy -= 1
            raise
        except Exception:
            self._end_one()
            log.exception("batch_failed", files=len(keys))
            raise
        if pending is not None:  # this worker goes on: the batch is reported once committed
            tg.start_soon(self._after_group, pending, result, batch, taken, requeue, tg)
            return
        self._done(result, batch, taken, requeue, tg)

    async def _after_group(
        self,
        pending: _Open,
        result: BatchResult,
        batch: Batch,
        taken: float,
        requeue: Requeue,
        tg: TaskGroup,
    ) -> None:
        """Report a batch once its write group committed; if the group failed, load the batch
        again on its own. A group nobody commits (nothing else came) is committed here."""
        with anyio.move_on_after(GROUP_SECONDS):
            await pending.wake.wait()
        if not pending.ended:
            async with self._write_limiter:
                if self._open is pending:
                    try:
                        await self._end_group()
                    except Exception:  # kept in pending.error: handled below
                        pass
        if pending.error is not None:
            log.debug("write_group_failed", files=len(batch.keys), error=repr(pending.error))
            await self._run_batch(batch, taken, requeue, tg, alone=True)
            return
        self._done(result, batch, taken, requeue, tg)

    def _done(
        self, result: BatchResult, batch: Batch, taken: float, requeue: Requeue, tg: TaskGroup
    ) -> None:
        """Count a written batch and hand on what it asks for."""
        self._record(result, (time.perf_counter() - taken) * 1000)
        if result.requeue:
            self._busy += 1
            tg.start_soon(self._requeue, requeue, result.requeue)
        self._end_one()
        if self.on_batch_done is not None:
            self.on_batch_done(result, batch)

    async def _load(
        self, batch: Batch, requeue: Requeue, tg: TaskGroup, *, alone: bool
    ) -> tuple[BatchResult, _Open | None]:
        """Prepare and write one batch: (its result, the write group it waits in, if any)."""
        keys = batch.keys
        self._counts["files_prefetched"] += await self.loader.warm(keys)
        prepared = await anyio.to_thread.run_sync(
            self.loader.prepare, keys, limiter=self._prepare_limiter
        )
        self._following.difference_update(keys)
        follow = tuple(k for k in self.loader.follow_up(prepared) if k not in self._following)
        async with self._write_limiter:
            # Read the next chunk while this one is written: started only now, so at most one
            # chunk waits for the writer however much faster reading is (memory stays flat).
            if follow and not self._ending:
                self._following.update(follow)
                self._busy += 1
                self._counts["follow_ups"] += 1
                tg.start_soon(
                    self._run_batch, replace(batch, keys=follow), time.perf_counter(), requeue, tg
                )
            # cancelled (the shutdown's time is up): the write is interrupted and rolls back;
            # its keys are found again by the next start's scan
            write = partial(self.loader.write, prepared)
            if not alone and self.loader.groupable(prepared):
                return await self._write_grouped(write, len(keys))
            await self._end_group()  # a batch written on its own goes after the group
            return await run_in_thread(write, self._db.interrupt), None

    async def _write_grouped(
        self, write: Callable[[], BatchResult], files: int
    ) -> tuple[BatchResult, _Open | None]:
        """Write a batch in the open group (opening one), and commit the group if it is full
        or nothing else is in flight; called holding the write limiter."""
        if self._open is None:
            self._open = _Open(await anyio.to_thread.run_sync(WriteGroup, self._db))
        current = self._open
        try:
            result = await run_in_thread(
                partial(current.group.run, write, files), self._db.interrupt
            )
        except Exception as exc:  # DuckDB aborted the transaction: every batch in it goes again
            await self._end_group(exc)
            log.debug("write_group_failed", files=files, error=repr(exc))
            return await run_in_thread(write, self._db.interrupt), None  # on its own this time
        except BaseException as exc:  # cancelled
            with anyio.CancelScope(shield=True):
                await self._end_group(exc)
            raise
        if current.group.full() or self._busy <= current.group.batches:
            await self._end_group()
            return result, None
        return result, current

    async def _end_group(self, failed: BaseException | None = None) -> None:
        """Commit the open group (roll it back if ``failed``) and wake its batches; a failed
        commit is raised after they were told. Called holding the write limiter."""
        current, self._open = self._open, None
        if current is None:
            return
        try:
            if failed is None:
                started = time.perf_counter()
                await run_in_thread(current.group.commit, self._db.interrupt)
                self._note_write(time.perf_counter() - started)
            else:
                current.error = failed
                await anyio.to_thread.run_sync(current.group.rollback)
        except BaseException as exc:
            current.error = exc
            raise
        finally:
            current.ended = True
            current.wake.set()

    async def exclusive(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a thread while no batch is written and no write group is open (a
        checkpoint)."""
        async with self._write_limiter:
            await self._end_group()
            await anyio.to_thread.run_sync(fn)

    async def _requeue(self, requeue: Requeue, paths: list[str]) -> None:
        try:
            await requeue(paths)
        except Exception as exc:  # e.g. the queue closed at shutdown: the next scan finds them
            log.warning("requeue_failed", files=len(paths), error=repr(exc))
        finally:
            self._end_one()

    def _end_one(self) -> None:
        self._busy -= 1
        self._ended.set()
        if self._open is not None and self._busy <= self._open.group.batches:
            self._open.wake.set()  # nothing else in flight: its batches commit it

    async def work_ended(self) -> None:
        """Wait until a batch or a re-queue in flight ends (written, failed, or handed back
        to the accumulator): the moment to look again at whether the pipeline is idle."""
        await self._ended.event().wait()

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
        self._note_write(r.write_seconds)
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

    def _note_write(self, seconds: float) -> None:
        """Count one time the writer held the database: a batch's write, or a group's commit."""
        write_ms = seconds * 1000
        self._write_ms.append(write_ms)
        self._write_max_ms = max(self._write_max_ms, write_ms)
        self._slow_writes += write_ms > 1000

    def get_stats(self) -> WorkerStats:
        """Counters since start, busy workers, and the latency and commit time of the last
        1,024 batches (ms)."""
        writes = sorted(self._write_ms)
        commits = CommitStats()
        if writes:
            commits = CommitStats(
                p50=round(writes[len(writes) // 2], 1),
                p99=round(writes[min(len(writes) - 1, int(len(writes) * 0.99))], 1),
                max=round(self._write_max_ms, 1),
                over_1s=self._slow_writes,
            )
        c, s = self._counts, self._seconds
        return WorkerStats(
            workers=self.workers,
            readers=self.readers,
            busy=self._busy,
            batches=c["batches"],
            files_indexed=c["files_indexed"],
            files_errors=c["files_errors"],
            files_deleted=c["files_deleted"],
            files_skipped=c["files_skipped"],
            files_requeued=c["files_requeued"],
            files_prefetched=c["files_prefetched"],
            follow_ups=c["follow_ups"],
            read_seconds=round(s["read"], 3),
            parse_seconds=round(s["parse"], 3),
            write_seconds=round(s["write"], 3),
            batch_ms=latency_stats(self._latency_ms),
            write_ms=commits,
        )
