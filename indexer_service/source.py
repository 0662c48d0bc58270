"""The seam between a store of OpenCode records and the shared pipeline.

A `Source` is one store (the legacy JSON tree, OpenCode's SQLite database). It tells the
pipeline which keys may have changed (`watch`: live notifications; `scan`/`reconcile`: a
complete listing compared with the index, which also finds deletions), and turns a batch of
keys into rows (`warm`, `prepare`, `write`), recording its own progress in the same write
transaction as the rows. The accumulator and the worker pool see only keys and these methods;
`IndexerService` is what builds a source and hands it the pipeline's entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import anyio
from anyio.abc import TaskStatus

from indexer_service.model import BatchResult, ScanReport

P = TypeVar("P")


class BatchLoader(Protocol[P]):
    """What the worker pool calls for each batch: ``warm`` on the event loop, ``prepare``
    (fetch and parse; on a reader thread) and ``write`` (one transaction; on the writer thread)."""

    async def warm(self, keys: Sequence[str]) -> int:
        """Get ready to read ``keys`` (e.g. ask the kernel to read ahead); how many were warmed."""
        ...

    def prepare(self, keys: Sequence[str]) -> P:
        """Fetch the records behind ``keys`` and turn them into rows, not yet written."""
        ...

    def follow_up(self, prepared: P) -> Sequence[str]:
        """Keys to prepare now, while ``prepared`` is written (the next chunk of a backfill,
        read on one core while the other writes); usually none."""
        ...

    def write(self, prepared: P) -> BatchResult:
        """Write the rows, deletions and progress of one prepared batch in one transaction."""
        ...

    def groupable(self, prepared: P) -> bool:
        """Whether the batch may be written in a transaction it shares with the batches
        written before and after it (`store.group.WriteGroup`): only if its write keeps no
        state beyond the database that a rollback after it returned would leave wrong."""
        ...


class Source(BatchLoader[P], Protocol):
    """One store of OpenCode records: change notifications, reconciliation, loading."""

    name: str
    """Short stable name (``json_tree``, ``sqlite:<path>``), used in logs and stats."""

    def owns(self, key: str) -> bool:
        """Whether ``key`` is one of this source's keys (several sources share a pipeline)."""
        ...

    def health(self) -> str | None:
        """Why the source cannot be read now (for ``/healthz``), or None while it can."""
        ...

    async def watch(self, *, task_status: TaskStatus[None]) -> None:
        """Hand keys that may have changed to the pipeline until cancelled; ``started()`` once
        the watch is armed (or could not be: reconciliation alone then finds changes)."""
        ...

    async def scan(self, *, full: bool | None = None) -> ScanReport:
        """Compare a complete listing with the index now and hand on every key out of sync
        (new, changed, deleted, due for a retry); ``full=None`` follows the source's schedule."""
        ...

    async def reconcile(self, *, task_status: TaskStatus[None]) -> None:
        """Scan periodically until cancelled; ``started()`` at once (the first scan is the
        caller's)."""
        ...

    def counts(self) -> dict[str, dict[str, int]]:
        """``{record type: {status: count}}`` of what the index holds (blocking: a thread)."""
        ...

    def get_stats(self) -> Mapping[str, object]:
        """The source's own counters, merged into the service's ``stats()``."""
        ...

    def close(self) -> None:
        """Release what the source holds (helper processes, in-memory databases)."""
        ...


async def every(
    seconds: float,
    scan: Callable[[], Awaitable[object]],
    *,
    on_failure: Callable[[Exception], None],
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A source's periodic reconciliation: ``scan()`` every ``seconds`` until cancelled,
    ``started()`` at once (the first pass is the caller's); a pass that fails goes to
    ``on_failure`` and the loop goes on."""
    task_status.started()
    while True:
        await sleep(seconds)
        try:
            await scan()
        except Exception as exc:
            on_failure(exc)
