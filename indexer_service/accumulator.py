"""Batch keys between the detectors (watcher, reconciler) and the worker pool.

`BatchCore` is the pure part: dedup, size and window rules, with time passed in as ``now``.
`FileBatchAccumulator` wraps it for anyio: a window timer task, a pull API
(``async for batch in acc``) that merges waiting batches, and back-pressure. Everything runs on
the event loop; time comes from an injected ``clock`` and ``sleep``, so tests drive a fake one.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Self

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from indexer_service.errors import AccumulatorClosed
from indexer_service.events import Signal
from indexer_service.model import Batch, Trigger
from indexer_service.settings import at_least, positive
from indexer_service.stats import AccumulatorStats

__all__ = ["AccumulatorConfig", "BatchCore", "FileBatchAccumulator"]

KeyLike = str | os.PathLike[str]

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AccumulatorConfig:
    """Batching settings: a batch is sealed at ``max_files`` keys or ``window_ms`` after its first.

    ``max_pending`` bounds pending plus ready (not yet taken) keys; producers wait beyond it.
    ``max_coalesced_files`` caps a batch merged from several ready ones when workers lag.
    """

    window_ms: float = 200
    max_files: int = 100
    flush_on_stop: bool = True
    max_pending: int = 100_000
    max_coalesced_files: int = 5_000

    def __post_init__(self) -> None:
        positive("window_ms", self.window_ms)
        at_least("max_files", self.max_files, 1)
        for name in ("max_pending", "max_coalesced_files"):
            at_least(name, getattr(self, name), self.max_files, f"max_files ({self.max_files})")


_COUNTERS = (
    "files_added duplicates_dropped files_flushed files_discarded batches_size batches_timer"
    " batches_force batches_stop batches_taken batches_coalesced largest_batch"
).split()


class BatchCore:
    """Dedup, size and window rules with no I/O and no clock: time-dependent calls take ``now``.

    Pending keys are sealed into ready batches (FIFO) that :meth:`take` hands out, merged.
    A key already pending or in a ready batch is dropped as a duplicate.
    """

    def __init__(self, config: AccumulatorConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._window = config.window_ms / 1000
        self._pending: list[str] = []
        self._first_added = 0.0
        self._known: set[str] = set()  # pending + ready keys
        self._ready: deque[Batch] = deque()
        self._ready_files = 0

    @property
    def pending(self) -> int:
        """Number of keys not yet sealed into a batch."""
        return len(self._pending)

    @property
    def ready(self) -> int:
        """Number of keys in sealed batches waiting for a worker."""
        return self._ready_files

    def room(self) -> int:
        """How many more distinct keys fit under ``max_pending``."""
        return self.config.max_pending - len(self._pending) - self._ready_files

    def add(self, keys: Iterable[str], now: float) -> int:
        """Add keys that arrived at ``now``; return how many batches filled up (sealed)."""
        known, pending, max_files = self._known, self._pending, self.config.max_files
        seen = added = sealed = 0
        for key in keys:
            seen += 1
            if key in known:
                continue
            known.add(key)
            if not pending:
                self._first_added = now
            pending.append(key)
            added += 1
            if len(pending) >= max_files:
                sealed += 1
                self.seal("size")
        self.stats["files_added"] += added
        self.stats["duplicates_dropped"] += seen - added
        return sealed

    def deadline(self) -> float | None:
        """Clock time at which the pending keys are due, or None if nothing is pending."""
        return self._first_added + self._window if self._pending else None

    def due(self, now: float) -> bool:
        """Whether the window of the oldest pending file has elapsed at ``now``."""
        return bool(self._pending) and now >= self._first_added + self._window

    def seal(self, trigger: Trigger) -> int:
        """Seal the pending keys into a ready batch; return how many keys it holds."""
        if not self._pending:
            return 0
        batch = Batch(tuple(self._pending), trigger, self._first_added)
        self._pending.clear()  # in place: add() holds a reference
        self._ready.append(batch)
        self._ready_files += len(batch.keys)
        self.stats["files_flushed"] += len(batch.keys)
        self.stats[f"batches_{trigger}"] += 1
        return len(batch.keys)

    def discard(self) -> int:
        """Drop the pending keys; return how many."""
        count = len(self._pending)
        self._known.difference_update(self._pending)
        self._pending.clear()
        self.stats["files_discarded"] += count
        return count

    def take(self) -> Batch | None:
        """Pop the oldest ready batch merged with the next ones up to ``max_coalesced_files``."""
        if not self._ready:
            return None
        cap, ready = self.config.max_coalesced_files, self._ready
        parts = [ready.popleft()]
        size = len(parts[0].keys)
        while ready and size + len(ready[0].keys) <= cap:
            parts.append(ready.popleft())
            size += len(parts[-1].keys)
        batch = parts[0]
        if len(parts) > 1:
            keys = tuple(chain.from_iterable(p.keys for p in parts))
            first = min(p.first_added for p in parts)
            batch = Batch(keys, batch.trigger, first, len(parts))
            self.stats["batches_coalesced"] += 1
        self._ready_files -= size
        self._known.difference_update(batch.keys)
        self.stats["batches_taken"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)
        return batch


class FileBatchAccumulator(anyio.AsyncContextManagerMixin):
    """Collect keys into batches for a worker pool that pulls them (event loop only).

    ``async with acc:`` runs the window timer (or ``await tg.start(acc.run)``); workers do
    ``async for batch in acc``; producers ``await add_many(keys)``. Leaving the block or
    :meth:`stop` flushes and closes. ``clock`` and ``sleep`` are the timer's sense of time.
    """

    def __init__(
        self,
        config: AccumulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.config = config or AccumulatorConfig()
        self._core = BatchCore(self.config)
        self._clock = clock
        self._sleep = sleep
        self._closed = False
        self._producers_waiting = 0
        self._backpressure_wait_s = 0.0
        self._changed = Signal()  # a seal, a new deadline, or close
        self._room = Signal()  # a batch was taken, or close

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Self]:
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                self._close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the window timer until stopped; closes the accumulator however it ends."""
        task_status.started()
        try:
            while not self._closed:
                if self._core.due(self._clock()) and self._core.seal("timer") > 0:
                    self._changed.set()
                deadline = self._core.deadline()
                changed = self._changed.event()
                if deadline is None:
                    await changed.wait()
                else:
                    await self._wait(changed, deadline - self._clock())
        finally:
            self._close()

    async def _wait(self, changed: anyio.Event, delay: float) -> None:
        """Until ``changed`` is set or ``delay`` seconds have passed on the injected clock."""
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                await self._sleep(max(delay, 0.0))
                tg.cancel_scope.cancel()

            tg.start_soon(timer)
            await changed.wait()
            tg.cancel_scope.cancel()

    async def add(self, key: KeyLike) -> None:
        """Add one key; see :meth:`add_many`."""
        await self.add_many((key,))

    async def add_many(self, keys: Iterable[KeyLike]) -> None:
        """Add keys; suspends only while ``max_pending`` is reached.

        Raises :class:`AccumulatorClosed` once stopped, also to a producer that was waiting.
        """
        todo = [os.fspath(k) for k in keys]
        start = 0
        while True:
            if self._closed:
                raise AccumulatorClosed("the batch accumulator is stopped; no more keys accepted")
            room = self._core.room()
            if room:
                was_empty = self._core.pending == 0
                sealed = self._core.add(todo[start : start + room], self._clock())
                start += room
                if sealed or (was_empty and self._core.pending > 0):
                    self._changed.set()  # a batch to take, or a new deadline
            if start >= len(todo):
                return
            await self._wait_room()

    async def force_flush(self) -> int:
        """Seal what is pending into a batch now; return the number of keys in it."""
        await anyio.lowlevel.checkpoint()
        count = self._core.seal("force")
        if count:
            self._changed.set()
        return count

    async def stop(self) -> None:
        """Flush (or discard, per ``flush_on_stop``) the pending keys and close; idempotent."""
        self._close()
        await anyio.lowlevel.checkpoint()

    async def next_batch(self) -> Batch | None:
        """Wait for the next batch (ready ones merged); None once stopped and drained."""
        await anyio.lowlevel.checkpoint()
        while True:
            batch = self._core.take()
            if batch is not None:
                self._room.set()
                return batch
            if self._closed:
                return None
            await self._changed.event().wait()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        batch = await self.next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch

    def get_stats(self) -> AccumulatorStats:
        """Counters since creation plus current ``pending``/``ready`` keys and waiting producers."""
        c = self._core.stats
        return AccumulatorStats(
            files_added=c["files_added"],
            duplicates_dropped=c["duplicates_dropped"],
            files_flushed=c["files_flushed"],
            files_discarded=c["files_discarded"],
            batches_size=c["batches_size"],
            batches_timer=c["batches_timer"],
            batches_force=c["batches_force"],
            batches_stop=c["batches_stop"],
            batches_taken=c["batches_taken"],
            batches_coalesced=c["batches_coalesced"],
            largest_batch=c["largest_batch"],
            pending=self._core.pending,
            ready=self._core.ready,
            producers_waiting=self._producers_waiting,
            backpressure_wait_s=self._backpressure_wait_s,
        )

    async def _wait_room(self) -> None:
        room = self._room.event()
        self._producers_waiting += 1
        began = self._clock()
        try:
            await room.wait()
        finally:
            self._producers_waiting -= 1
            self._backpressure_wait_s += self._clock() - began

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.config.flush_on_stop:
            self._core.seal("stop")
        elif discarded := self._core.discard():
            _log.warning("accumulator_discarded_pending", files=discarded)
        self._changed.set()
        self._room.set()
