"""WriteGroup: one write transaction that consecutive batches join, committed once.

A bulk load writes batches of a few thousand files. Committed one by one, each batch goes
through the WAL and is written a second time by the checkpoint that the WAL's growth sets off.
DuckDB writes the rows of one transaction straight into the database file instead, with no WAL
and nothing left for the checkpoint, once a table gets at least a row group of them
(`database.ROW_GROUP_ROWS`). The worker pool keeps a group open while batches follow each
other and commits it when it is that large, when nothing else is in flight, or when it is
`GROUP_SECONDS` old (figures in docs/benchmarks.md).

The group's cursor belongs to no thread: the pool's writes run one at a time, each on some
worker thread, and each joins the group with `run` (`Database.joined`). A write that fails
leaves DuckDB's transaction aborted, so the whole group is rolled back, and every batch in it
is written again on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

import duckdb

from indexer_service.store.database import Database

__all__ = ["GROUP_FILES", "GROUP_SECONDS", "WriteGroup"]

T = TypeVar("T")

GROUP_FILES = 25_000
"""A group is committed once its batches hold this many files: enough that the parts table
(four files in five) gets a row group of rows, few enough that a failed commit is cheap to redo."""
GROUP_SECONDS = 2.0
"""A group is committed at the latest this long after it was opened (bounds the time from a
batch's write to its rows being visible, while other batches keep coming)."""


class WriteGroup:
    """An open transaction on ``db`` with its change number (`ChangeSequence`), joined by
    the writes `run` makes, ended by `commit` or `rollback`."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._stack = ExitStack()
        self.seq = self._stack.enter_context(db.changes.claim())
        try:
            self._cur = db.shared_cursor()
            self._cur.begin()
        except BaseException:
            self._stack.close()
            raise
        self._clock = clock
        self.opened_at = clock()
        self.batches = 0
        self.files = 0

    def run(self, write: Callable[[], T], files: int) -> T:
        """``write()`` inside the group's transaction (the caller's thread joins it); counts
        ``files`` into the group once it returned."""
        with self._db.joined(self._cur, self.seq):
            result = write()
        self.batches += 1
        self.files += files
        return result

    def full(self) -> bool:
        """Whether the group is large or old enough to be committed now."""
        return self.files >= GROUP_FILES or self._clock() - self.opened_at >= GROUP_SECONDS

    def commit(self) -> None:
        """Commit every batch written in the group; on failure nothing of them is kept."""
        with self._stack:
            self._cur.commit()

    def rollback(self) -> None:
        """Drop every batch written in the group (a write or the commit failed)."""
        with self._stack:
            try:
                self._cur.rollback()
            except duckdb.Error:  # already aborted, or the database closed under it
                pass
