"""IndexerService: a source wired into the shared pipeline, as one async context manager.

    source.watch ──┐
                   ├─► FileBatchAccumulator ─► WorkerPool ─► source.prepare/write ─► DuckDB
    source.scan ───┘   (initial backfill, then every interval; deletions take the same path)

Every task lives in one anyio task group. Shutdown stops the producers (watcher, reconciler),
lets the workers write what was detected, checkpoints and closes, within ``shutdown_timeout``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import anyio
import duckdb
import structlog
from anyio.abc import TaskGroup

from indexer_service.accumulator import AccumulatorConfig, FileBatchAccumulator
from indexer_service.errors import ConfigError, DatabaseError, IndexerError, single_error
from indexer_service.events import Signal
from indexer_service.http import load_server
from indexer_service.http.metrics import Metrics
from indexer_service.model import Batch, BatchResult
from indexer_service.pool import WorkerPool
from indexer_service.read.query import Params, QueryResult, ReadOnlyQueries
from indexer_service.routing import SourceRouter
from indexer_service.settings import Settings
from indexer_service.ship import load_sink
from indexer_service.source import Source
from indexer_service.sources.discover import discover
from indexer_service.sources.json_tree import JsonTreeSource
from indexer_service.sources.sqlite import SqliteSource
from indexer_service.stats import BackfillStats, ServiceState, ServiceStats
from indexer_service.store.compaction import merge_when_idle
from indexer_service.store.database import Database
from indexer_service.store.integrity import damaged

if TYPE_CHECKING:
    from indexer_service.ship.sink import Sink

log = structlog.get_logger(__name__)


class IndexerService(anyio.AsyncContextManagerMixin):
    """Keep the database at ``settings.db_path`` in sync with OpenCode's stores: the ones the
    settings name, or the ones found (`sources.discover`).

    ``async with IndexerService(settings) as svc:`` opens and migrates the database, starts the
    watchers, runs the initial reconciliation (the backfill of existing records), then follows
    changes until the block exits. It never blocks the event loop: DuckDB and file I/O run in
    worker threads.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        periodic_reconcile: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._periodic = periodic_reconcile
        self._clock = clock
        self._db = Database(settings.db_path, memory_limit_mb=settings.memory_limit_mb)
        self._acc = FileBatchAccumulator(
            AccumulatorConfig(
                window_ms=settings.window_ms,
                max_files=settings.max_files,
                max_pending=settings.max_pending,
                max_coalesced_files=settings.max_batch_files,
            ),
            clock=clock,
        )
        self.stores = discover(settings)
        self.metrics = Metrics()
        # The databases first: where both stores hold a record, the database's row wins, and
        # the legacy tree's backfill then skips what the databases' backfill wrote.
        self._databases = [
            SqliteSource(
                path,
                self._db,
                self._acc.add_many,
                interval_seconds=settings.reconcile_interval,
                poll_rows=settings.db_poll_rows,
                max_record_bytes=settings.max_file_bytes,
                on_scan_done=self.metrics.reconcile_done,
            )
            for path in self.stores.databases
        ]
        self._sources: list[Source[Any]] = list(self._databases)
        self._json: JsonTreeSource | None = None
        if self.stores.storage is not None:
            tree = dataclasses.replace(settings, storage_path=self.stores.storage)
            self._json = JsonTreeSource(
                tree,
                self._db,
                self._acc.add_many,
                on_scan_done=self.metrics.reconcile_done,
                defer_to_databases=bool(self.stores.databases),
            )
            self._sources.append(self._json)
        self._pool = WorkerPool(
            SourceRouter(self._sources),
            self._db,
            workers=settings.workers,
            on_batch_done=self._batch_done,
            write_failure_timeout=settings.write_failure_timeout,
        )
        self._progress = Signal()  # a batch was written
        self._sink: Sink | None = None  # created at start: psycopg loads off the event loop
        self._initial_done = anyio.Event()
        self._started_at: float | None = None
        self._state: ServiceState = "stopped"
        self._counts: dict[str, dict[str, int]] = {}
        self._backfill = BackfillStats(total=0, done=0, finished=False)
        self._backfilled = anyio.Event()  # the backfill is written
        self._queries = ReadOnlyQueries(
            self._db, max_rows=settings.query_max_rows, timeout_s=settings.query_timeout_s
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Self]:
        """The pipeline's lifetime; a failure reaches the host as the one exception it is (a
        `ConfigError` for a port in use or for the HTTP API under trio, the host's own error
        from its block), never as the exception group of the task groups inside."""
        try:
            async with self._running() as svc:
                yield svc
        except BaseExceptionGroup as group:
            error = single_error(group, anyio.get_cancelled_exc_class())
            if not isinstance(error, IndexerError) and (
                damage := damaged(self.settings.db_path, error)  # found by a scan's read
            ):
                raise damage from error
            raise error from error.__cause__  # its own cause kept; the group not shown

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Self]:
        if self.settings.http_enabled:
            require_asyncio, serve_api = await anyio.to_thread.run_sync(load_server)
            require_asyncio()  # a `ConfigError` under trio, before anything is opened
        self._state = "starting"
        await anyio.to_thread.run_sync(self.stores.check)
        await anyio.to_thread.run_sync(self._db.open)
        log.info(
            "service_starting",
            storage=None if self.stores.storage is None else str(self.stores.storage),
            opencode_db=[str(d) for d in self.stores.databases],
            db=str(self.settings.db_path),
            workers=self.settings.workers,
        )
        try:
            async with anyio.create_task_group() as consumers:
                await consumers.start(self._acc.run)
                pool_done = anyio.Event()
                # Shielded, so a cancelled host (SIGINT in the CLI) still gets the queued
                # batches written; the shutdown below cancels it itself after its timeout.
                drain = anyio.CancelScope(shield=True)
                consumers.start_soon(self._consume, drain, pool_done)
                consumers.start_soon(self._refresh_counts_loop)
                consumers.start_soon(self._after_backfill)
                if (url := self.settings.ship_to) is not None:
                    sink = await anyio.to_thread.run_sync(load_sink)
                    self._sink = sink(
                        self._db, url, machine_id=self.settings.machine_id, wake=self._progress
                    )
                    consumers.start_soon(self._sink.run)
                if self.settings.http_enabled:
                    await consumers.start(
                        partial(
                            serve_api,
                            self,
                            db_path=self.settings.db_path,
                            host=self.settings.http_host,
                            port=self.settings.http_port,
                            allow_remote=self.settings.http_allow_remote,
                        )
                    )
                try:
                    async with anyio.create_task_group() as producers:
                        await self._start_producers(producers)
                        self._started_at = self._clock()
                        self._state = "running"
                        try:
                            yield self
                        finally:
                            self._state = "stopping"
                            producers.cancel_scope.cancel()
                finally:  # whatever ended the block: normal exit, the host's cancel, an error
                    await self._drain_for_shutdown(pool_done)
                    drain.cancel()
                    consumers.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_db)
            self._state = "stopped"
            log.info("service_stopped")

    async def _drain_for_shutdown(self, pool_done: anyio.Event) -> None:
        """Write what is queued for at most ``shutdown_timeout`` (failing writes given up),
        shielded from the host's cancellation; the next start's scan finds the rest."""
        self._pool.retry.stop()
        with anyio.move_on_after(self.settings.shutdown_timeout, shield=True) as scope:
            await self._acc.stop()
            await pool_done.wait()
        if scope.cancelled_caught:
            log.warning(
                "shutdown_timeout",
                seconds=self.settings.shutdown_timeout,
                action="unwritten batches are picked up by the next start's reconcile",
            )

    async def _start_producers(self, tg: TaskGroup) -> None:
        # Watch first, then scan: a change made while the initial scan runs is seen by one of them.
        if self.settings.watch:
            for source in self._sources:
                await tg.start(source.watch)
        tg.start_soon(self._initial_scan)
        if self._periodic:
            tg.start_soon(self._reconcile_after_backfill)

    async def _reconcile_after_backfill(self) -> None:
        """The periodic passes, once the backfill is written (a pass before would queue its files
        again), or 5 min after its last key was queued if live writes never let it idle."""
        await self._initial_done.wait()
        with anyio.move_on_after(300):
            await self._backfilled.wait()
        async with anyio.create_task_group() as tg:
            for source in self._sources:
                await tg.start(source.reconcile)

    async def _initial_scan(self) -> None:
        """The backfill: everything the index does not match, through the same accumulator and
        workers as live changes (in large coalesced batches)."""
        try:
            for source in self._sources:
                report = await source.scan()
                self._backfill["total"] += report.missing
            log.info("backfill_queued", records=self._backfill["total"])
        finally:
            self._initial_done.set()

    async def _after_backfill(self) -> None:
        """Once the backfill is written: mark it finished, fold its WAL into the file now (not
        in a live commit soon after), then merge row groups whenever writes pause."""
        await self._initial_done.wait()
        while not self._idle():  # not `drain`: batches come when the accumulator says so
            await self._pool.work_ended()
        self._backfill["finished"] = True
        self._backfilled.set()
        started = time.perf_counter()
        try:
            await self._pool.exclusive(partial(self._db.checkpoint, force=False))
        except (duckdb.Error, DatabaseError) as exc:  # a query running: DuckDB's own schedule
            log.debug("checkpoint_skipped", error=str(exc))
        else:
            log.info("backfill_checkpointed", seconds=round(time.perf_counter() - started, 3))
        await merge_when_idle(self._db, self._progress, self._idle, self._pool.exclusive)

    def _close_db(self) -> None:
        for source in self._sources:
            source.close()
        if self._db.is_open:
            try:
                self._db.checkpoint()
            except duckdb.Error as exc:  # e.g. a full disk: the WAL keeps every committed batch
                log.error("checkpoint_failed", db=str(self._db.path), error=str(exc))
            finally:
                self._db.close()

    async def _consume(self, scope: anyio.CancelScope, done: anyio.Event) -> None:
        try:
            with scope:
                await self._pool.run(self._acc, self._acc.add_many)
        finally:
            done.set()

    def _batch_done(self, result: BatchResult, batch: Batch) -> None:
        self.metrics.batch_done(
            indexed_by_type=result.by_type,
            errors=result.errors,
            deleted=result.deleted,
            seconds=result.read_seconds + result.parse_seconds + result.write_seconds,
            # the oldest key of the batch: from the accumulator receiving it to its commit
            latencies_s=(self._clock() - batch.first_added,),
        )
        if not self._backfill["finished"]:
            self._backfill["done"] += result.indexed + result.errors + result.deleted
        self._progress.set()

    async def _refresh_counts_loop(self) -> None:
        """Keep `stats()["files"]` fresh off the event loop: at most once a second of writes."""
        while True:
            try:
                await self.file_counts()
            except (duckdb.Error, DatabaseError) as exc:  # the database is failing: `health`
                log.debug("file_counts_failed", error=str(exc))
            await self._progress.event().wait()
            await anyio.sleep(1.0)

    # -- API ---------------------------------------------------------------------------------

    def _idle(self) -> bool:
        acc = self._acc.get_stats()
        return acc["pending"] == 0 and acc["ready"] == 0 and self._pool.get_stats()["busy"] == 0

    async def drain(self) -> None:
        """Return once everything detected so far is written to the database."""
        while True:
            await self._acc.force_flush()
            if self._idle():
                return
            # not idle: keys are ready or in flight, so a batch or a re-queue ends later
            await self._pool.work_ended()

    async def wait_until_synced(self) -> None:
        """Return once what is on disk now is queryable: the backfill is written, then a fresh
        scan finds what the watcher may have missed meanwhile, and that is written too."""
        await self._initial_done.wait()
        await self.drain()
        for source in self._sources:  # full: also stats files in unchanged directories
            await source.scan(full=True)
        await self.drain()
        self._backfill["finished"] = True
        await self.file_counts()  # `stats()["files"]` says so at once

    async def wait_until_shipped(self) -> None:
        """Return once every change in the index now is on the team database (`ship_to`)."""
        if self._sink is None:
            raise ConfigError("wait_until_shipped: no ship_to is set, nothing is shipped")
        await self._sink.wait_shipped(self._db.changes.committed())

    async def file_counts(self) -> dict[str, dict[str, int]]:
        """``{file_type: {status: count}}`` read from `file_index` now."""
        self._counts = await anyio.to_thread.run_sync(self._all_counts)
        return self._counts

    def _all_counts(self) -> dict[str, dict[str, int]]:
        """``{record type: {status: count}}`` over every source."""
        total: dict[str, dict[str, int]] = {}
        for source in self._sources:
            for kind, by_status in source.counts().items():
                into = total.setdefault(kind, {})
                for status, n in by_status.items():
                    into[status] = into.get(status, 0) + n
        return total

    def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/healthz``: healthy while the pipeline runs and writes work."""
        if self._state != "running":
            return False, f"pipeline is {self._state}"
        if (failing := self._pool.retry.health()) is not None:
            return False, failing
        for source in self._sources:
            if (reason := source.health()) is not None:
                return False, reason
        behind = None if self._sink is None else self._sink.behind()
        return True, "running" if behind is None else f"running; {behind}"

    async def query(
        self, sql: str, params: Params = None, *, max_rows: int | None = None
    ) -> QueryResult:
        """Run one read-only SELECT on the live index (see `query.run_query`); off the loop."""
        return await self._queries.query(sql, params, max_rows=max_rows)

    @property
    def db(self) -> Database:
        return self._db

    def stats(self) -> ServiceStats:
        """A snapshot of every stage now (`ServiceStats`): state, backfill progress,
        accumulator, workers, writes, each source's counters and the records by status."""
        uptime = 0.0 if self._started_at is None else self._clock() - self._started_at
        stats = ServiceStats(
            state=self._state,
            uptime_s=round(uptime, 3),
            storage_path=None if self.stores.storage is None else str(self.stores.storage),
            db_path=str(self.settings.db_path),
            backfill=BackfillStats(**self._backfill),  # a copy
            accumulator=self._acc.get_stats(),
            workers=self._pool.get_stats(),
            database=self._pool.retry.get_stats(),
            databases={str(s.path): s.get_stats() for s in self._databases},
            files={kind: dict(by) for kind, by in self._counts.items()},
        )
        if self._json is not None:
            tree = self._json.get_stats()
            stats["reconciler"], stats["watcher"] = tree["reconciler"], tree["watcher"]
        if self._sink is not None:
            stats["sink"] = self._sink.get_stats()
        return stats
