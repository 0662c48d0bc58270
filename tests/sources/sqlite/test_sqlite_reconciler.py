"""The database reconciler's judgement of rows written while it lists (real SQLite and DuckDB)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from indexer_service.demo.synthetic import TreeSpec, generate_db
from indexer_service.sources.sqlite.batch import DbKeys
from indexer_service.sources.sqlite.loader import DbLoader
from indexer_service.sources.sqlite.progress import RowTracker
from indexer_service.sources.sqlite.reader import Reader
from indexer_service.sources.sqlite.reconciler import DbReconciler
from indexer_service.store.database import Database


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_row_written_after_the_listing_began_is_judged_by_the_next_pass(
    tmp_path: Path,
) -> None:
    """A poll that indexes a row while a listing runs may have read it past the listing's end:
    that pass must not call it deleted (re-reading it for nothing); the next pass, which began
    after the write, does find a real deletion."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=2, seed=8))
    clock = Clock(1_800_000_000.0)
    name = f"sqlite:{opencode}"
    with Database(tmp_path / "index.duckdb") as db:
        loader = DbLoader(db, Reader(opencode), DbKeys(name + "|"), RowTracker(name, clock=clock))
        loader.write(loader.prepare([loader.keys.poll]))
        reconciler = DbReconciler(loader, db, Reader(opencode))
        assert not any(reconciler.scan(clock()).values())
        with sqlite3.connect(opencode) as con:
            (part,) = con.execute("SELECT id FROM part ORDER BY rowid DESC LIMIT 1").fetchone()
            con.execute("UPDATE part SET time_updated = time_updated + 1 WHERE id = ?", [part])
        clock.now += 10
        listing_began = clock.now - 5  # the poll below wrote after this pass began listing
        loader.write(loader.prepare([loader.keys.poll]))
        with sqlite3.connect(opencode) as con:
            con.execute("DELETE FROM part WHERE id = ?", [part])
        assert reconciler.scan(listing_began)["deleted"] == []
        assert reconciler.scan(clock.now + 1)["deleted"] == [("part", part)]
        loader.close()
