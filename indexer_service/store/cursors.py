"""One DuckDB cursor per thread over one connection, all closed together.

DuckDB requires every thread to use its own cursor of a connection; `ThreadCursors` hands each
thread its cursor on first use and closes them all, and the connection, in `close`. DuckDB
refuses to close a cursor while a call runs on it (``ResourceInUseException``) rather than
wait, so each cursor counts the calls running on it (and on the relations and cursors made
from it), and `close` waits on that count.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import duckdb

__all__ = ["CursorsClosed", "ThreadCursors"]

_CLOSE_TIMEOUT_S = 5.0
_DUCKDB_OBJECTS = (duckdb.DuckDBPyConnection, duckdb.DuckDBPyRelation)


class CursorsClosed(Exception):
    """Raised by `ThreadCursors.get` after `ThreadCursors.close`."""


class _Calls:
    """The calls running on one thread's cursor and on the cursors and relations made from it;
    once a close waits (``closing``), `idle` is notified when the last one ends."""

    __slots__ = ("closing", "idle", "lock", "running")

    def __init__(self) -> None:
        self.running = 0
        self.closing = False
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)


class _Counted:
    """A DuckDB connection or relation whose method calls are counted in ``calls`` (each
    method's wrapper is made on first use, then found on the instance)."""

    def __init__(self, target: object, calls: _Calls) -> None:
        self._target = target
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        calls, lock, target = self._calls, self._calls.lock, self._target

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                calls.running += 1
            try:
                result = attr(*args, **kwargs)
            finally:
                with lock:
                    calls.running -= 1
                    if calls.closing and not calls.running:
                        calls.idle.notify_all()
            if result is target:  # `execute` returns its connection: keep counting its calls
                return self
            if isinstance(result, _DUCKDB_OBJECTS):
                return _Counted(result, calls)
            return result

        self.__dict__[name] = call
        return call

    def close_when_idle(self, timeout_s: float) -> None:
        """Close once no call runs (new ones wait); after ``timeout_s`` DuckDB's refusal is
        raised."""
        calls = self._calls
        with calls.idle:
            calls.closing = True
            calls.idle.wait_for(lambda: not calls.running, timeout_s)
            cast(duckdb.DuckDBPyConnection, self._target).close()


class ThreadCursors:
    """The cursors of ``con``, one per thread; each runs ``init`` (e.g. ``USE``) when created."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, init: str | None = None) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self._init = init
        self._local = threading.local()
        self._all: list[_Counted] = []
        self._lock = threading.Lock()
        self._shared: duckdb.DuckDBPyConnection | None = None

    def get(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's cursor, created on first use; `CursorsClosed` once closed."""
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._new()
        return cur

    def shared(self) -> duckdb.DuckDBPyConnection:
        """The cursor of no thread's, created on first use: threads take turns with it (one
        transaction continued by several); `CursorsClosed` once closed."""
        if self._shared is None:
            self._shared = self._new()
        return self._shared

    def _new(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                raise CursorsClosed
            raw = self._con.cursor()
            if self._init is not None:
                raw.execute(self._init)
            counted = _Counted(raw, _Calls())
            self._all.append(counted)
        return cast(duckdb.DuckDBPyConnection, counted)  # it behaves as the cursor it wraps

    def interrupt(self) -> None:
        """Interrupt the statement each cursor runs now (it fails with DuckDB's interrupt
        error and its transaction rolls back); an idle cursor is not affected."""
        with self._lock:
            cursors = list(self._all)
        for cur in cursors:
            cur.interrupt()

    def close(self, timeout_s: float = _CLOSE_TIMEOUT_S) -> None:
        """Close every cursor, each once the call running on it (another thread's) has ended,
        then the connection; safe to call twice. A cursor still busy after ``timeout_s``
        raises DuckDB's ``ResourceInUseException``."""
        with self._lock:
            cursors, self._all, self._shared = self._all, [], None
            con, self._con = self._con, None
        for cur in cursors:
            cur.close_when_idle(timeout_s)
        if con is not None:
            con.close()
