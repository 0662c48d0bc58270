"""Row-group merges while writes pause.

The writer's checkpoints merge no row groups (`database.MERGE_TASKS`): each leaves one partial
row group a table written, and on a long-running service they pile up. Once nothing has been
written for `MERGE_AFTER_S`, `merge_when_idle` runs a checkpoint that may merge a few of them
(`MERGE_STEP_TASKS`), off the write path: a batch that arrives meanwhile waits for one step.
DuckDB checkpoints only when the WAL holds changes, and merges nothing while a query runs, so
each pause after writes runs at most one step.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import duckdb
import structlog
from anyio.abc import TaskStatus

from indexer_service.errors import DatabaseError
from indexer_service.events import Signal
from indexer_service.store.database import MERGE_TASKS, Database

__all__ = ["MERGE_AFTER_S", "MERGE_STEP_TASKS", "merge_row_groups", "merge_when_idle"]

log = structlog.get_logger(__name__)

MERGE_AFTER_S = 60.0
"""Seconds without a written batch before a merging checkpoint runs."""
MERGE_STEP_TASKS = 1
"""Merges a step may run in each table (one rewrites up to three row groups). A step took
1.6-2.1 s on the index of the 1M-file tree: the most a batch that arrives during it waits."""


def merge_row_groups(db: Database, tasks: int = MERGE_STEP_TASKS) -> None:
    """A checkpoint that may run up to ``tasks`` row-group merges in each table, then the
    writer's setting again. DuckDB merges nothing if the WAL is empty or a query is running."""
    cur = db.cursor()
    cur.execute(f"SET GLOBAL max_vacuum_tasks = {int(tasks)}")
    try:
        db.checkpoint(force=False)
    finally:
        cur.execute(f"SET GLOBAL max_vacuum_tasks = {MERGE_TASKS}")


async def merge_when_idle(
    db: Database,
    written: Signal,
    idle: Callable[[], bool],
    exclusive: Callable[[Callable[[], None]], Awaitable[None]],
    *,
    after: float = MERGE_AFTER_S,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Forever: wait for a write (``written``), then for ``after`` seconds without one, then,
    if nothing is queued or in flight (``idle``), run `merge_row_groups` through
    ``exclusive`` (no write or write group open meanwhile). Started once it waits."""
    wrote = written.event()
    task_status.started()
    while True:
        await wrote.wait()
        quiet = False
        while not quiet:
            with anyio.move_on_after(after) as scope:
                await written.event().wait()
            quiet = scope.cancelled_caught
        wrote = written.event()  # a write from here on starts the next round
        if not idle():
            continue
        started = time.perf_counter()
        try:
            await exclusive(partial(merge_row_groups, db))
        except (duckdb.Error, DatabaseError) as exc:  # the writes that fail next say more
            log.warning(
                "row_groups_merge_failed",
                db=str(db.path),
                error=str(exc),
                action="tried again after the next writes",
            )
            continue
        log.info(
            "row_groups_merged", db=str(db.path), seconds=round(time.perf_counter() - started, 3)
        )
