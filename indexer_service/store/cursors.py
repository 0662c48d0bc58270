"""One DuckDB cursor per thread over one connection, all closed together.

DuckDB requires every thread to use its own cursor of a connection; `ThreadCursors` hands each
thread its cursor on first use and closes them all, and the connection, in `close`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import duckdb

__all__ = ["CursorsClosed", "ThreadCursors"]


class CursorsClosed(Exception):
    """Raised by `ThreadCursors.get` after `ThreadCursors.close`."""


def _close(con: duckdb.DuckDBPyConnection) -> None:
    con.close()


class ThreadCursors:
    """The cursors of ``con``, one per thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self._local = threading.local()
        self._all: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    def get(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's cursor, created on first use; `CursorsClosed` once closed."""
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                if self._con is None:
                    raise CursorsClosed
                cur = self._con.cursor()
                self._all.append(cur)
            self._local.cursor = cur
        return cur

    def interrupt(self) -> None:
        """Interrupt the statement each cursor runs now (it fails with DuckDB's interrupt
        error and its transaction rolls back); an idle cursor is not affected."""
        with self._lock:
            cursors = list(self._all)
        for cur in cursors:
            cur.interrupt()

    def close(self, close: Callable[[duckdb.DuckDBPyConnection], None] = _close) -> None:
        """Close every cursor, then the connection, each with ``close``; safe to call twice."""
        with self._lock:
            cursors, self._all = self._all, []
            con, self._con = self._con, None
        for cur in cursors:
            close(cur)
        if con is not None:
            close(con)
