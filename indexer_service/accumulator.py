"""Batch file paths between the detectors (watcher, reconciler) and the loader's worker pool.

:class:`BatchCore` is the pure part: dedup, size and window rules, with time passed in as
``now``. :class:`FileBatchAccumulator` wraps it for anyio: a window timer task, a pull API
(``async for batch in acc``) that merges waiting batches, back-pressure, and adds from threads.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Literal, Self

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from indexer_service.errors import ConfigError

__all__ = ["AccumulatorClosed", "AccumulatorConfig", "Batch", "BatchCore", "FileBatchAccumulator"]

Trigger = Literal["size", "timer", "force", "stop"]
PathLike = str | os.PathLike[str]

_log = structlog.get_logger(__name__)


class AccumulatorClosed(RuntimeError):
    """Raised when a path is added after the accumulator was stopped."""


@dataclass(frozen=True, slots=True)
class AccumulatorConfig:
    """Batching settings: a batch is sealed at ``max_files`` paths or ``window_ms`` after its first.

    ``max_pending`` bounds pending plus ready (not yet taken) files; producers wait beyond it.
    ``max_coalesced_files`` caps a batch merged from several ready ones when workers lag.
    """

    window_ms: float = 200
    max_files: int = 100
    flush_on_stop: bool = True
    max_pending: int = 100_000
    max_coalesced_files: int = 5_000

    def __post_init__(self) -> None:
        if not self.window_ms > 0:  # also rejects NaN
            raise ConfigError(f"window_ms must be > 0, got {self.window_ms!r}")
        if self.max_files < 1:
            raise ConfigError(f"max_files must be >= 1, got {self.max_files!r}")
        for name in ("max_pending", "max_coalesced_files"):
            value = getattr(self, name)
            if value < self.max_files:
                raise ConfigError(f"{name} must be >= max_files ({self.max_files}), got {value!r}")


@dataclass(frozen=True, slots=True)
class Batch:
    """Paths for one worker. ``first_added`` is the clock time the oldest of them arrived;
    ``merged`` counts the sealed batches coalesced into this one."""

    paths: tuple[str, ...]
    trigger: Trigger
    first_added: float
    merged: int = 1


_COUNTERS = (
    "files_added duplicates_dropped files_flushed files_discarded batches_size batches_timer"
    " batches_force batches_stop batches_taken batches_coalesced largest_batch"
).split()


class BatchCore:
    """Dedup, size and window rules with no I/O and no clock: time-dependent calls take ``now``.

    Pending paths are sealed into ready batches (FIFO) that :meth:`take` hands out, merged.
    A path already pending or in a ready batch is dropped as a duplicate.
    """

    def __init__(self, config: AccumulatorConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._window = config.window_ms / 1000
        self._pending: list[str] = []
        self._first_added = 0.0
        self._known: set[str] = set()  # pending + ready paths
        self._ready: deque[Batch] = deque()
        self._ready_files = 0

    @property
    def pending(self) -> int:
        """Number of files not yet sealed into a batch."""
        return len(self._pending)

    @property
    def ready(self) -> int:
        """Number of files in sealed batches waiting for a worker."""
        return self._ready_files

    def room(self) -> int:
        """How many more distinct files fit under ``max_pending``."""
        return self.config.max_pending - len(self._pending) - self._ready_files

    def add(self, paths: Iterable[str], now: float) -> int:
        """Add paths that arrived at ``now``; return how many batches filled up (sealed)."""
        known, pending, max_files = self._known, self._pending, self.config.max_files
        seen = added = sealed = 0
        for path in paths:
            seen += 1
            if path in known:
                continue
            known.add(path)
            if not pending:
                self._first_added = now
            pending.append(path)
            added += 1
            if len(pending) >= max_files:
                sealed += 1
                self.seal("size")
        self.stats["files_added"] += added
        self.stats["duplicates_dropped"] += seen - added
        return sealed

    def deadline(self) -> float | None:
        """Clock time at which the pending files are due, or None if nothing is pending."""
        return self._first_added + self._window if self._pending else None

    def due(self, now: float) -> bool:
        """Whether the window of the oldest pending file has elapsed at ``now``."""
        return bool(self._pending) and now >= self._first_added + self._window

    def seal(self, trigger: Trigger) -> int:
        """Seal the pending files into a ready batch; return how many files it holds."""
        if not self._pending:
            return 0
        batch = Batch(tuple(self._pending), trigger, self._first_added)
        self._pending.clear()  # in place: add() holds a reference
        self._ready.append(batch)
        self._ready_files += len(batch.paths)
        self.stats["files_flushed"] += len(batch.paths)
        self.stats[f"batches_{trigger}"] += 1
        return len(batch.paths)

    def discard(self) -> int:
        """Drop the pending files; return how many."""
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
        size = len(parts[0].paths)
        while ready and size + len(ready[0].paths) <= cap:
            parts.append(ready.popleft())
            size += len(parts[-1].paths)
        batch = parts[0]
        if len(parts) > 1:
            paths = tuple(chain.from_iterable(p.paths for p in parts))
            first = min(p.first_added for p in parts)
            batch = Batch(paths, batch.trigger, first, len(parts))
            self.stats["batches_coalesced"] += 1
        self._ready_files -= size
        self._known.difference_update(batch.paths)
        self.stats["batches_taken"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)
        return batch


class _Signal:
    """A re-arming anyio Event (event loop only): ``event()`` is set by the next ``set()``."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def event(self) -> anyio.Event:
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def set(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


class FileBatchAccumulator(anyio.AsyncContextManagerMixin):
    """Collect paths into batches for a worker pool that pulls them.

    ``async with acc:`` runs the window timer (or ``await tg.start(acc.run)``); workers do
    ``async for batch in acc``. On the event loop use ``await add``/``add_many``; from other
    threads use :meth:`add_many_threadsafe`. Leaving the block or :meth:`stop` flushes and closes.
    """

    def __init__(
        self,
        config: AccumulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or AccumulatorConfig()
        self._core = BatchCore(self.config)
        self._clock = clock
        self._lock = threading.Lock()  # guards _core, _closed and the counters below
        self._room_cond = threading.Condition(self._lock)  # threads wait here on back-pressure
        self._closed = False
        self._producers_waiting = 0
        self._backpressure_wait_s = 0.0
        self._call_soon: Callable[[Callable[[], None]], object] | None = None
        self._loop_thread: int | None = None
        self._changed = _Signal()  # a seal, a new deadline, or close
        self._room = _Signal()  # a batch was taken, or close

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
        self._bind_loop()
        task_status.started()
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    due = self._core.due(self._clock()) and self._core.seal("timer") > 0
                    deadline = self._core.deadline()
                if due:
                    self._changed.set()
                changed = self._changed.event()
                delay = math.inf if deadline is None else deadline - self._clock()
                with anyio.move_on_after(delay):
                    await changed.wait()
        finally:
            self._close()

    def clock_advanced(self) -> None:
        """Make the timer re-read the clock now (for an injected clock that jumps)."""
        self._changed.set()

    async def add(self, path: PathLike) -> None:
        """Add one path; see :meth:`add_many`."""
        await self.add_many((path,))

    async def add_many(self, paths: Iterable[PathLike]) -> None:
        """Add paths from the event loop; suspends only while ``max_pending`` is reached.

        Raises :class:`AccumulatorClosed` once stopped, also to a producer that was waiting.
        """
        todo = [os.fspath(p) for p in paths]
        start = 0
        while True:
            with self._lock:
                start, wake = self._offer_locked(todo, start)
            if wake:
                self._changed.set()
            if start >= len(todo):
                return
            await self._wait_room()

    def add_many_threadsafe(self, paths: Iterable[PathLike]) -> None:
        """Add paths from a thread other than the event loop's; blocks while the bound is reached.

        Raises :class:`AccumulatorClosed` like :meth:`add_many`, RuntimeError on the loop thread.
        """
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("add_many_threadsafe() would block the event loop; use add_many()")
        todo = [os.fspath(p) for p in paths]
        start = 0
        with self._lock:
            while True:
                start, wake = self._offer_locked(todo, start)
                if wake and self._call_soon is not None:  # loop not bound yet: nobody waits
                    self._call_soon(self._changed.set)
                if start >= len(todo):
                    return
                self._producers_waiting += 1
                began = self._clock()
                self._room_cond.wait()
                self._backpressure_wait_s += self._clock() - began
                self._producers_waiting -= 1

    async def force_flush(self) -> int:
        """Seal what is pending into a batch now; return the number of files in it."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            count = self._core.seal("force")
        if count:
            self._changed.set()
        return count

    async def stop(self) -> None:
        """Flush (or discard, per ``flush_on_stop``) the pending files and close; idempotent."""
        self._close()
        await anyio.lowlevel.checkpoint()

    async def next_batch(self) -> Batch | None:
        """Wait for the next batch (ready ones merged); None once stopped and drained."""
        self._bind_loop()
        await anyio.lowlevel.checkpoint()
        while True:
            with self._lock:
                batch = self._core.take()
                closed = self._closed
                if batch is not None:
                    self._room_cond.notify_all()
            if batch is not None:
                self._room.set()
                return batch
            if closed:
                return None
            await self._changed.event().wait()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        batch = await self.next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch

    def get_stats(self) -> dict[str, int | float]:
        """Counters since creation plus current ``pending``/``ready`` files and waiting producers."""
        with self._lock:
            stats: dict[str, int | float] = dict(self._core.stats)
            stats["pending"] = self._core.pending
            stats["ready"] = self._core.ready
            stats["producers_waiting"] = self._producers_waiting
            stats["backpressure_wait_s"] = self._backpressure_wait_s
        return stats

    def _offer_locked(self, todo: list[str], start: int) -> tuple[int, bool]:
        """Add what fits under the bound; return the next index and whether the loop must wake
        (a batch sealed, or a new deadline). The caller holds the lock."""
        if self._closed:
            raise AccumulatorClosed("the file batch accumulator is stopped; no more paths accepted")
        room = self._core.room()
        if room == 0:
            return start, False
        was_empty = self._core.pending == 0
        sealed = self._core.add(todo[start : start + room], self._clock())
        return start + room, sealed > 0 or (was_empty and self._core.pending > 0)

    def _bind_loop(self) -> None:
        if self._call_soon is None:
            # anyio has no non-blocking "call soon from a thread"; capture the asyncio loop.
            self._call_soon = asyncio.get_running_loop().call_soon_threadsafe
            self._loop_thread = threading.get_ident()

    async def _wait_room(self) -> None:
        room = self._room.event()
        with self._lock:
            self._producers_waiting += 1
        began = self._clock()
        try:
            await room.wait()
        finally:
            with self._lock:
                self._producers_waiting -= 1
                self._backpressure_wait_s += self._clock() - began

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.config.flush_on_stop:
                self._core.seal("stop")
                discarded = 0
            else:
                discarded = self._core.discard()
            self._room_cond.notify_all()
        if discarded:
            _log.warning("accumulator_discarded_pending", files=discarded)
        self._changed.set()
        self._room.set()
