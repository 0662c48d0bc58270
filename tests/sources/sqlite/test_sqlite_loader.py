"""The database loader's backfill: chunks bounded by rows and bytes, read while the previous
chunk is written, and a failed write that voids what was read past it (real SQLite and DuckDB
files)."""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from indexer_service import DatabaseError
from indexer_service.demo.synthetic import OPENCODE_SCHEMA, TreeSpec, generate_db
from indexer_service.model import Batch, BatchResult
from indexer_service.pool import WorkerPool
from indexer_service.sources.sqlite.batch import DbKeys, DbPrepared
from indexer_service.sources.sqlite.loader import DbLoader
from indexer_service.sources.sqlite.progress import RowTracker
from indexer_service.sources.sqlite.queries import KINDS, fetch
from indexer_service.sources.sqlite.reader import Reader
from indexer_service.store.database import Database


def _loader(opencode: Path, db: Database, **kw: int) -> DbLoader:
    name = f"sqlite:{opencode}"
    return DbLoader(db, Reader(opencode), DbKeys(name + "|"), RowTracker(name), **kw)


def _part_ids(opencode: Path) -> set[str]:
    with sqlite3.connect(opencode) as con:
        return {r[0] for r in con.execute("SELECT id FROM part")}


def _indexed_parts(db: Database) -> set[str]:
    return {r[0] for r in db.cursor().execute("SELECT id FROM parts").fetchall()}


def _backfill(loader: DbLoader) -> int:
    """Poll until no chunk is left; the number of polls."""
    polls = 0
    while True:
        polls += 1
        prepared = loader.prepare([loader.keys.poll])
        result = loader.write(prepared)
        if not prepared.follow and not result.requeue:
            return polls


@pytest.fixture
def opencode(tmp_path: Path) -> Path:
    path = tmp_path / "opencode.db"
    generate_db(path, TreeSpec(sessions=3, seed=5))
    return path


def test_a_poll_read_while_an_earlier_write_failed_is_read_again_after_a_restart(
    opencode: Path, tmp_path: Path
) -> None:
    """Chunk 2 is read while chunk 1 is written; chunk 1's write fails. Chunk 2 must not
    commit cursors past chunk 1's rows: a restart then still finds every row."""
    with Database(tmp_path / "index.duckdb") as db:
        loader = _loader(opencode, db, chunk_rows=20)
        first = loader.prepare([loader.keys.poll])
        second = loader.prepare([loader.keys.poll])
        assert first.follow and second.follow and first.rows["part"].num_rows
        db.close()  # the write of the first chunk fails
        with pytest.raises(DatabaseError, match="not open"):
            loader.write(first)
        db.open()
        voided = loader.write(second)
        assert voided.indexed == 0 and voided.requeue == [loader.keys.poll]
        loader.close()
        restarted = _loader(opencode, db, chunk_rows=20)  # the cursors saved, nothing else
        _backfill(restarted)
        assert _indexed_parts(db) == _part_ids(opencode)


def test_a_chunk_stops_at_its_byte_budget_and_the_backfill_reads_every_row(
    opencode: Path, tmp_path: Path
) -> None:
    with sqlite3.connect(opencode) as con:
        (largest,) = con.execute("SELECT max(length(data)) FROM part").fetchone()
        parts = con.execute("SELECT count(*) FROM part").fetchone()[0]
    with Database(tmp_path / "index.duckdb") as db:
        loader = _loader(opencode, db, chunk_rows=100_000, chunk_bytes=largest)
        first = loader.prepare([loader.keys.poll])
        assert first.follow and 0 < first.rows["part"].num_rows <= 256 < parts
        loader.write(first)
        polls = _backfill(loader)
        assert polls > 1 and _indexed_parts(db) == _part_ids(opencode)


@pytest.mark.parametrize(
    ("data", "content"),
    [
        (b'{"type":"text"}', b'{"id":"p1","sessionID":"s1","messageID":"m1","type":"text"}'),
        (b" \n{ }", b'{"id":"p1","sessionID":"s1","messageID":"m1"}'),
        (b'  {\n "type": 1}', b'{"id":"p1","sessionID":"s1","messageID":"m1",\n "type": 1}'),
        (b"[1, 2]", b"[1, 2]"),  # not an object: left for the extraction to report
        (b"not json", b"not json"),
    ],
)
def test_a_part_is_read_with_its_ids_put_back(tmp_path: Path, data: bytes, content: bytes) -> None:
    """opencode keeps a part's ids in columns; the document read has them first, as the
    legacy file had."""
    path = tmp_path / "opencode.db"
    with sqlite3.connect(path) as con:
        con.executescript(OPENCODE_SCHEMA)
        con.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES ('p1', 'm1', 's1', 1, 2, ?)",
            [data.decode()],
        )
    con = sqlite3.connect(path)
    con.text_factory = bytes
    try:
        kind = KINDS["part"]
        ((key, parent, _, version, text, _, session),) = fetch(con, kind, kind.select)
    finally:
        con.close()
    assert (key, parent, version, session, text) == ("p1", "m1", 2, "s1", content)


async def test_the_next_chunk_is_read_while_the_previous_one_is_written(
    opencode: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One poll key starts the backfill; each chunk's write waits until the next chunk has
    been read (the pool prepares the follow-up at once, not after the write), and the
    backfill ends with every part indexed and nothing requeued."""
    with Database(tmp_path / "index.duckdb") as db:
        loader = _loader(opencode, db, chunk_rows=100)
        prepare, write = loader.prepare, loader.write
        read: defaultdict[int, threading.Event] = defaultdict(threading.Event)
        order: dict[int, int] = {}  # id(prepared) -> its poll's number
        kept: list[DbPrepared] = []  # alive to the end: a freed one's id could be reused

        last_read = anyio.Event()

        def counting_prepare(keys: Sequence[str]) -> DbPrepared:
            out = prepare(keys)
            kept.append(out)
            order[id(out)] = n = len(order)
            read[n].set()
            if not out.follow:
                anyio.from_thread.run_sync(last_read.set)
            return out

        def waiting_write(prepared: DbPrepared) -> BatchResult:
            if prepared.follow:  # the next chunk is read meanwhile, or this wait fails
                assert read[order[id(prepared)] + 1].wait(10), "the next chunk was not read"
            return write(prepared)

        monkeypatch.setattr(loader, "prepare", counting_prepare)
        monkeypatch.setattr(loader, "write", waiting_write)
        requeued: list[str] = []

        async def requeue(keys: list[str]) -> None:
            requeued.extend(keys)

        async def one_poll() -> AsyncIterator[Batch]:  # the input stays open until the end
            yield Batch((loader.keys.poll,), "force", 0.0)
            await last_read.wait()

        pool = WorkerPool(loader, db, workers=2, readers=1)
        with anyio.fail_after(60):
            await pool.run(one_poll(), requeue)
        assert _indexed_parts(db) == _part_ids(opencode)
        assert requeued == [] and pool.get_stats()["follow_ups"] == len(order) - 1 > 2


async def test_a_backfill_stops_after_its_chunk_once_the_input_ends(
    opencode: Path, tmp_path: Path
) -> None:
    """At shutdown the accumulator ends the pool's input: the chunk in flight is written and
    no next chunk is started (the next start's poll goes on from the saved cursors)."""
    with Database(tmp_path / "index.duckdb") as db:
        loader = _loader(opencode, db, chunk_rows=20)

        async def one_poll() -> AsyncIterator[Batch]:
            yield Batch((loader.keys.poll,), "force", 0.0)

        async def requeue(keys: list[str]) -> None:
            raise AssertionError(f"nothing to requeue: {keys}")

        pool = WorkerPool(loader, db, workers=2, readers=1)
        with anyio.fail_after(30):
            await pool.run(one_poll(), requeue)
        assert len(_indexed_parts(db)) == 20 < len(_part_ids(opencode))
        assert pool.get_stats()["follow_ups"] == 0
        loader.close()
        _backfill(_loader(opencode, db, chunk_rows=20))
        assert _indexed_parts(db) == _part_ids(opencode)
