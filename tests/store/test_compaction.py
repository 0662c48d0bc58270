"""Row-group merges while writes pause (`store.compaction`), on a real DuckDB file."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import duckdb
import pytest

from indexer_service.events import Signal
from indexer_service.store.compaction import merge_row_groups, merge_when_idle
from indexer_service.store.database import Database

pytestmark = pytest.mark.anyio


def _row_groups(db: Database) -> int:
    """Row groups of ``t``, read to the end (a result left open is a running read, and DuckDB
    merges nothing in a checkpoint that runs beside one)."""
    rows = (
        db.cursor()
        .execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')")
        .fetchall()
    )
    return int(rows[0][0])


def _fragmented(path: Path) -> Database:
    """A database whose table ``t`` (4,000 keyed rows) lies in four partial row groups, as four
    checkpoints of the writer leave it."""
    db = Database(path).open()
    with db.transaction() as cur:
        cur.execute("CREATE TABLE t (i BIGINT PRIMARY KEY)")
    for start in range(0, 4_000, 1_000):
        with db.transaction() as cur:
            cur.execute("INSERT INTO t SELECT range FROM range(?, ?)", [start, start + 1_000])
        db.checkpoint()
    return db


def _idle() -> bool:
    return True


def _write_one(db: Database, i: int) -> None:
    with db.transaction() as cur:
        cur.execute("INSERT INTO t VALUES (?)", [i])


def test_the_writers_checkpoints_write_what_is_new_without_merging(tmp_path: Path) -> None:
    """Each checkpoint writes the rows committed since the one before as a row group of their
    own: it never rewrites earlier row groups to merge them (a merge can stall commits for
    seconds at a million records)."""
    db = _fragmented(tmp_path / "x.duckdb")
    try:
        assert _row_groups(db) == 4
        rows = db.cursor().execute("SELECT count(*), max(i) FROM t").fetchall()
        assert rows == [(4_000, 3_999)]
    finally:
        db.close()


def test_a_merging_checkpoint_folds_partial_row_groups_and_restores_the_setting(
    tmp_path: Path,
) -> None:
    db = _fragmented(tmp_path / "x.duckdb")
    try:
        _write_one(db, 10_000)  # DuckDB checkpoints only a WAL that holds changes
        merge_row_groups(db, tasks=100)
        assert _row_groups(db) < 4
        cur = db.cursor()
        assert cur.execute("SELECT count(*), max(i) FROM t").fetchall() == [(4_001, 10_000)]
        setting = cur.execute("SELECT current_setting('max_vacuum_tasks')").fetchall()
        assert setting == [(0,)]  # the writer's checkpoints merge nothing again
    finally:
        db.close()


class _Exclusive:
    """The pool's `exclusive` as the loop sees it: runs the step on a thread and says so."""

    def __init__(self, fail: bool = False) -> None:
        self.ran = anyio.Event()
        self.calls = 0
        self.fail = fail

    async def __call__(self, fn: Callable[[], None]) -> None:
        self.calls += 1
        try:
            if self.fail:
                raise duckdb.IOException("No space left on device")
            await anyio.to_thread.run_sync(fn)
        finally:
            self.ran.set()


async def test_row_groups_are_merged_once_writes_pause(tmp_path: Path) -> None:
    db = _fragmented(tmp_path / "x.duckdb")
    written, exclusive = Signal(), _Exclusive()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(merge_when_idle, db, written, _idle, exclusive, after=0))
            await anyio.to_thread.run_sync(_write_one, db, 10_000)
            written.set()
            await exclusive.ran.wait()
            tg.cancel_scope.cancel()
        assert _row_groups(db) < 4
    finally:
        db.close()


async def test_nothing_is_merged_while_batches_are_queued(tmp_path: Path) -> None:
    db = _fragmented(tmp_path / "x.duckdb")
    written, exclusive = Signal(), _Exclusive()
    asked = anyio.Event()

    def busy() -> bool:
        asked.set()
        return False

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(merge_when_idle, db, written, busy, exclusive, after=0))
            await anyio.to_thread.run_sync(_write_one, db, 10_000)
            before = _row_groups(db)
            written.set()
            await asked.wait()
            tg.cancel_scope.cancel()
        assert exclusive.calls == 0
        assert _row_groups(db) == before
    finally:
        db.close()


async def test_a_failed_step_is_tried_again_after_the_next_writes(tmp_path: Path) -> None:
    """A merging checkpoint that fails leaves the loop waiting for the next writes."""
    db = _fragmented(tmp_path / "x.duckdb")
    written, exclusive = Signal(), _Exclusive(fail=True)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(merge_when_idle, db, written, _idle, exclusive, after=0))
            written.set()
            await exclusive.ran.wait()
            exclusive.ran, exclusive.fail = anyio.Event(), False
            await anyio.to_thread.run_sync(_write_one, db, 10_000)
            written.set()
            await exclusive.ran.wait()
            tg.cancel_scope.cancel()
        assert exclusive.calls == 2
        assert _row_groups(db) < 4
    finally:
        db.close()
