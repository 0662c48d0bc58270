"""Write groups: batches that follow each other share one transaction (`store.group`), real
files and a real DuckDB file. Every batch is still written exactly once as far as anyone can
see: reported once its group committed, written again on its own if its group failed."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import orjson
import pytest
from conftest import LogEvents

from indexer_service import pool as pool_module
from indexer_service.model import Batch, BatchResult
from indexer_service.pool import WorkerPool
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.loader import (
    GROUP_MIN_FILES,
    HEAVY_FILE_BYTES,
    Loader,
    Prepared,
)
from indexer_service.store import group as group_module
from indexer_service.store.database import Database

MSG = "msg_22434f2b50016D30FVyj3AyQOa"


@pytest.fixture(autouse=True)
def no_age_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """No group is committed for its age: what commits it is what the tests look at (a test
    that relied on the age would hang, and fail at its deadline)."""
    monkeypatch.setattr(group_module, "GROUP_SECONDS", 3600.0)
    monkeypatch.setattr(pool_module, "GROUP_SECONDS", 3600.0)


@pytest.fixture
def loader(db: Database, storage: Path) -> Iterator[Loader]:
    """A loader that groups batches of any size: the tests' batches are small."""
    loader = Loader(db, FileTracker(db), storage, group_min_files=1)
    yield loader
    loader.close()


def put_part(root: Path, n: int, text: str = "") -> str:
    path = root / "part" / MSG / f"prt_{n:04d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"id": f"prt_{n:04d}", "messageID": MSG, "type": "text", "text": text or f"part {n}"}
    path.write_bytes(orjson.dumps(doc))
    return str(path)


def rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    return db.cursor().execute(sql).fetchall()


async def batches(paths: Sequence[str], size: int) -> AsyncIterator[Batch]:
    for i in range(0, len(paths), size):
        yield Batch(tuple(paths[i : i + size]), "size", 0.0)


async def nothing_to_requeue(more: list[str]) -> None:
    raise AssertionError(f"nothing to requeue, got {more}")


async def test_batches_that_follow_each_other_share_a_transaction(
    db: Database, storage: Path, loader: Loader
) -> None:
    """A bulk load commits far fewer transactions than it writes batches, and every batch is
    reported once, with its rows there when it is."""
    paths = [put_part(storage, n) for n in range(240)]
    seen: list[int] = []

    def on_batch_done(result: BatchResult, batch: Batch) -> None:
        seen.append(result.indexed)
        wanted = [f"prt_{Path(p).stem[4:]}" for p in batch.keys]
        found = rows(db, f"SELECT count(*) FROM parts WHERE id IN {tuple(wanted)}")
        assert found == [(len(wanted),)]

    pool = WorkerPool(loader, db, workers=4, on_batch_done=on_batch_done)
    await pool.run(batches(paths, 20), nothing_to_requeue)
    assert seen == [20] * 12
    assert pool.get_stats()["files_indexed"] == 240
    (transactions,) = rows(db, "SELECT count(DISTINCT change_seq) FROM parts")[0]
    assert 1 <= transactions < 12
    assert rows(db, "SELECT count(*) FROM file_index WHERE status = 'indexed'") == [(240,)]


async def test_batches_of_heavy_files_are_committed_each_on_its_own(
    db: Database, storage: Path, loader: Loader
) -> None:
    """Batches whose files average `HEAVY_FILE_BYTES` or more (session diffs hold whole files)
    never share a transaction: together they never make a row group, and one commit of all of
    them would fold hundreds of MB into the file at once."""
    text = "x" * HEAVY_FILE_BYTES
    paths = [put_part(storage, n, text) for n in range(24)]
    pool = WorkerPool(loader, db, workers=4)
    await pool.run(batches(paths, 4), nothing_to_requeue)
    assert rows(db, "SELECT count(*), count(DISTINCT change_seq) FROM parts") == [(24, 6)]


async def test_live_sized_batches_are_committed_each_on_its_own(
    db: Database, storage: Path
) -> None:
    """Batches smaller than `GROUP_MIN_FILES` (live ones) never wait in a group for others in
    flight: each is its own transaction, its rows there when it is reported, while a batch
    of `GROUP_MIN_FILES` files (a backlog merged into one) still shares a group."""
    paths = [put_part(storage, n) for n in range(240 + 2 * GROUP_MIN_FILES)]
    as_shipped = Loader(db, FileTracker(db), storage)
    try:
        pool = WorkerPool(as_shipped, db, workers=4)
        await pool.run(batches(paths[:240], 20), nothing_to_requeue)
        assert rows(db, "SELECT count(*), count(DISTINCT change_seq) FROM parts") == [(240, 12)]
        await pool.run(batches(paths[240:], GROUP_MIN_FILES), nothing_to_requeue)
        assert rows(db, "SELECT count(*), count(DISTINCT change_seq) FROM parts") == [
            (240 + 2 * GROUP_MIN_FILES, 13)
        ]
    finally:
        as_shipped.close()


async def test_a_batch_alone_in_the_pipeline_is_committed_at_once(
    db: Database, storage: Path, loader: Loader
) -> None:
    """A live write with nothing else in flight does not wait for company: it is committed as
    soon as it is written."""
    path = put_part(storage, 1, "typed just now")
    reported = anyio.Event()
    pool = WorkerPool(loader, db, workers=4, on_batch_done=lambda r, b: reported.set())
    send, receive = anyio.create_memory_object_stream[Batch](1)
    with receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, receive, nothing_to_requeue)
            async with send:  # the input stays open: more could come, nothing does
                await send.send(Batch((path,), "timer", 0.0))
                with anyio.fail_after(60):
                    await reported.wait()
                assert rows(db, "SELECT raw->>'text' FROM parts") == [("typed just now",)]


async def test_a_batch_that_fails_in_a_group_sends_the_whole_group_again(
    db: Database, storage: Path, loader: Loader, log_events: LogEvents
) -> None:
    """A file rewritten while the service was down meets its old row (the plain insert fails
    and DuckDB aborts the transaction): the group is rolled back, and every batch in it is
    written again on its own, so the new files and the rewritten ones all end up there, each
    counted once."""
    old = [put_part(storage, n, "before") for n in range(20)]
    await WorkerPool(loader, db, workers=1).run(batches(old, 20), nothing_to_requeue)
    new = [put_part(storage, n) for n in range(100, 160)]
    rewritten = [put_part(storage, n, "after") for n in range(20)]
    done: list[int] = []
    # it has not written the old rows itself
    restarted = Loader(db, FileTracker(db), storage, group_min_files=1)
    pool = WorkerPool(restarted, db, workers=4, on_batch_done=lambda r, b: done.append(r.indexed))
    await pool.run(batches(new + rewritten, 20), nothing_to_requeue)
    assert log_events.counts["write_group_failed"] >= 2  # the failed batch and another
    assert sorted(done) == [20] * 4
    assert pool.get_stats()["files_indexed"] == 80
    assert rows(db, "SELECT raw->>'text', count(*) FROM parts GROUP BY 1 ORDER BY 1") == [
        ("after", 20),
        *[(f"part {n}", 1) for n in range(100, 160)],
    ]
    assert rows(db, "SELECT count(*) FROM file_index WHERE status = 'indexed'") == [(80,)]


async def test_a_file_met_twice_in_one_group_does_not_fail_it(
    db: Database, storage: Path, loader: Loader, log_events: LogEvents
) -> None:
    """A file reported again (a second version, or a second event for the same one) while its
    first write waits in the open group is written over its own row there: no group fails
    (which would read every batch in it again), each batch is counted once, and the rows are
    those of the files on disk."""
    first = [put_part(storage, n, "first") for n in range(40)]
    again = [put_part(storage, n, "second") for n in range(0, 40, 2)]
    done: list[int] = []
    pool = WorkerPool(loader, db, workers=4, on_batch_done=lambda r, b: done.append(r.indexed))
    await pool.run(batches(first[:20] + first[20:] + again, 20), nothing_to_requeue)
    assert log_events.counts["write_group_failed"] == 0
    assert sorted(done) == [20] * 3
    assert rows(db, "SELECT count(DISTINCT change_seq) FROM parts") == [(1,)]  # one group
    assert rows(db, "SELECT raw->>'text', count(*) FROM parts GROUP BY 1 ORDER BY 1") == [
        ("first", 20),
        ("second", 20),
    ]
    assert rows(db, "SELECT count(*) FROM file_index WHERE status = 'indexed'") == [(40,)]


class SecondBatchStalls:
    """Twenty parts in two batches of ten, the second batch's read held until `release`: the
    first batch, written, waits in the open group (something else is in flight)."""

    def __init__(self, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths = [put_part(storage, n) for n in range(20)]
        self.reading_second, self.first_written = anyio.Event(), anyio.Event()
        self.release = threading.Event()
        self.prepare, write = loader.prepare, loader.write
        second, token = self.paths[10], anyio.lowlevel.current_token()

        def stalling_prepare(keys: Sequence[str]) -> Any:
            if keys[0] == second:
                anyio.from_thread.run_sync(self.reading_second.set, token=token)
                self.release.wait()
            return self.prepare(keys)

        def noted_write(prepared: Prepared) -> BatchResult:
            result = write(prepared)
            anyio.from_thread.run_sync(self.first_written.set, token=token)
            return result

        monkeypatch.setattr(loader, "prepare", stalling_prepare)
        monkeypatch.setattr(loader, "write", noted_write)

    async def first_batch_waits(self, pool: WorkerPool, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(pool.run, batches(self.paths, 10), nothing_to_requeue)
        try:
            await self.reading_second.wait()
            await self.first_written.wait()
            await anyio.wait_all_tasks_blocked()
            assert pool.get_stats()["busy"] == 2  # written, the first batch waits in the group
        except BaseException:
            self.release.set()  # the stalled read ends, so the task group can
            raise


async def test_a_pool_cancelled_with_a_group_open_keeps_none_of_it(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while a written batch waits in the open group for the next one: nothing of the
    group is kept (the next start's scan finds its files), and the next run writes it."""
    stalls = SecondBatchStalls(storage, loader, monkeypatch)
    async with anyio.create_task_group() as tg:
        await stalls.first_batch_waits(WorkerPool(loader, db, workers=2), tg)
        tg.cancel_scope.cancel()
        stalls.release.set()  # the read in its thread ends; the cancelled worker writes nothing
    assert rows(db, "SELECT count(*) FROM parts") == [(0,)]
    assert rows(db, "SELECT count(*) FROM file_index") == [(0,)]
    monkeypatch.setattr(loader, "prepare", stalls.prepare)
    await WorkerPool(loader, db, workers=2).run(batches(stalls.paths, 10), nothing_to_requeue)
    assert rows(db, "SELECT count(*) FROM parts") == [(20,)]


async def test_a_checkpoint_commits_the_open_group_first(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exclusive` (the service's checkpoint) never runs beside an open group: it commits the
    group, so the checkpoint writes its rows too."""
    stalls = SecondBatchStalls(storage, loader, monkeypatch)
    pool = WorkerPool(loader, db, workers=2)
    async with anyio.create_task_group() as tg:
        await stalls.first_batch_waits(pool, tg)
        await pool.exclusive(lambda: db.checkpoint(force=False))
        assert rows(db, "SELECT count(*) FROM parts") == [(10,)]
        stalls.release.set()
    assert rows(db, "SELECT count(*) FROM parts") == [(20,)]
