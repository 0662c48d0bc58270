"""Read-only SQL over the live index: `run_query` and its async front `ReadOnlyQueries`.

Three fences, each enforced by DuckDB itself rather than by pattern-matching SQL text:

1. Parse (`guard.check_read_only`). Exactly one ``SELECT``, calling only allow-listed table
   functions, no scalar function with side effects, naming no file as a table.
2. Transaction. The statement runs in ``BEGIN TRANSACTION READ ONLY`` on a cursor of its own,
   which is rolled back and closed after: DuckDB refuses any write the parse missed.
3. No external access. ``enable_external_access=false`` on the database: DuckDB refuses every
   file, network and extension access (``read_text``, ``ATTACH``, ``COPY``, ``INSTALL``) while
   the index's own storage, WAL and temp spill keep working. `run_query` turns it off on the
   first query if the connection was opened without it.

A time limit interrupts the query's cursor from a timer; a row limit fetches ``max_rows + 1``
rows and reports ``truncated``. `ReadOnlyQueries` runs queries off the event loop with a
concurrency limit of their own, so queries cannot starve the indexer of worker threads.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import duckdb
import structlog

from indexer_service.errors import QueryFailed, QueryRefused, QueryTimeout, rebuild_hint
from indexer_service.read.guard import check_read_only, first_line
from indexer_service.store.database import Database
from indexer_service.store.integrity import damage_in
from indexer_service.threads import run_in_thread

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIMEOUT_S",
    "Params",
    "QueryFn",
    "QueryResult",
    "ReadOnlyQueries",
    "jsonable",
    "run_query",
]

log = structlog.get_logger(__name__)

DEFAULT_MAX_ROWS = 10_000
DEFAULT_TIMEOUT_S = 30.0

Params = Sequence[object] | Mapping[str, object] | None


@dataclass(frozen=True)
class QueryResult:
    """Rows of one query; ``truncated`` when more rows than the limit existed."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (values converted by `jsonable`; JSON columns parsed)."""
        types = self.types or ("",) * len(self.columns)
        return {
            "columns": list(self.columns),
            "types": list(self.types),
            "rows": [
                [
                    _json_value(v) if t == "JSON" else jsonable(v)
                    for v, t in zip(row, types, strict=True)
                ]
                for row in self.rows
            ],
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "elapsed_s": round(self.elapsed_s, 6),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueryResult:
        """The inverse of `to_json` (values stay in their JSON form)."""
        return cls(
            columns=tuple(data["columns"]),
            types=tuple(data.get("types") or ()),
            rows=[tuple(r) for r in data["rows"]],
            truncated=bool(data["truncated"]),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
        )


def jsonable(value: Any) -> Any:
    """A DuckDB result value as JSON: times as ISO 8601, intervals as seconds, blobs base64."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return jsonable(value)


# -- the runner --------------------------------------------------------------------------------


QueryFn = Callable[[str, Params], QueryResult]
"""Runs one read-only query: `ServiceClient.query`, or `run_query` on an open database."""


class _Watchdog:
    """Interrupts a cursor after ``timeout_s`` unless `finish` came first (and never after)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, timeout_s: float) -> None:
        self._cur = cur
        self._lock = threading.Lock()
        self._finished = False
        self.fired = False
        self.cancelled = False
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def _fire(self, *, cancel: bool = False) -> None:
        with self._lock:
            if not self._finished:
                self.fired, self.cancelled = True, cancel
                self._cur.interrupt()

    def cancel(self) -> None:
        """Interrupt now (the caller was cancelled)."""
        self._fire(cancel=True)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
        self._timer.cancel()


def _fence(db: Database, cur: duckdb.DuckDBPyConnection) -> None:
    """Make sure the database refuses external access (global; cannot be turned back on)."""
    on = cur.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]
    if on:
        cur.execute("SET GLOBAL enable_external_access = false").fetchall()
        log.info("query_fence_applied", db=str(db.path), setting="enable_external_access=false")


def run_query(
    db: Database,
    sql: str,
    params: Params = None,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_start: Callable[[Callable[[], None]], None] | None = None,
) -> QueryResult:
    """Check and run one read-only query on ``db`` (blocking; any thread, concurrently).

    ``on_start`` is called, before the query runs, with a function that cancels it from any
    thread. Raises `QueryRefused`, `QueryFailed` or `QueryTimeout`.
    """
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    check_read_only(sql)
    started = time.perf_counter()
    cur = db.own_cursor()
    watchdog = _Watchdog(cur, timeout_s)
    if on_start is not None:
        on_start(watchdog.cancel)
    try:
        _fence(db, cur)
        cur.execute("SET python_enable_replacements = false").fetchall()  # no Python scans
        cur.execute("BEGIN TRANSACTION READ ONLY").fetchall()
        watchdog.start()
        try:
            if watchdog.fired:
                raise duckdb.InterruptException("cancelled before it started")
            cur.execute(sql, params)
            description = cur.description or []
            rows = cur.fetchmany(max_rows + 1)
        finally:
            watchdog.finish()
    except duckdb.InterruptException:
        if watchdog.cancelled:
            raise QueryFailed("query cancelled") from None
        raise QueryTimeout(f"query interrupted after its time limit of {timeout_s:g} s") from None
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.TransactionException) and "read-only" in str(exc):
            raise QueryRefused(f"the query tried to write: {first_line(exc)}") from None
        if isinstance(exc, duckdb.PermissionException):
            raise QueryRefused(f"external access is disabled: {first_line(exc)}") from None
        if damage_in(exc) is not None:  # a block found damaged as the query read it
            raise QueryFailed(
                f"{first_line(exc)}: the index {db.path} is damaged; {rebuild_hint(db.path)}"
            ) from None
        raise QueryFailed(first_line(exc)) from None
    finally:
        cur.close()  # discards the unfinished result and rolls the transaction back
    return QueryResult(
        columns=tuple(str(d[0]) for d in description),
        types=tuple(str(d[1]) for d in description),
        rows=rows[:max_rows],
        truncated=len(rows) > max_rows,
        elapsed_s=time.perf_counter() - started,
    )


class _Cancel:
    """Cancels a query from the event loop, whether or not its thread has started it yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interrupt: Callable[[], None] | None = None
        self._called = False

    def bind(self, interrupt: Callable[[], None]) -> None:
        with self._lock:
            self._interrupt = interrupt
            if self._called:
                interrupt()

    def __call__(self) -> None:
        with self._lock:
            self._called = True
            if self._interrupt is not None:
                self._interrupt()


class ReadOnlyQueries:
    """`run_query` for async callers: in worker threads, at most ``concurrency`` at a time.

    A query waits for a slot at most its time limit; cancelling the caller interrupts the
    query and waits for its thread, so a service can close the database right after.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        concurrency: int = 4,
    ) -> None:
        self.db = db
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self._limiter = anyio.CapacityLimiter(concurrency)

    async def query(
        self, sql: str, params: Params = None, *, max_rows: int | None = None
    ) -> QueryResult:
        """Run one read-only query; ``max_rows`` may lower (never raise) the row limit."""
        limit = self.max_rows if max_rows is None else min(max_rows, self.max_rows)
        with anyio.move_on_after(self.timeout_s) as waiting:
            await self._limiter.acquire()
        if waiting.cancelled_caught:
            raise QueryTimeout(f"no query slot free within {self.timeout_s:g} s")
        try:
            return await self._run(sql, params, limit)
        finally:
            self._limiter.release()

    async def _run(self, sql: str, params: Params, limit: int) -> QueryResult:
        cancel = _Cancel()
        work = partial(
            run_query, self.db, sql, params, max_rows=limit, timeout_s=self.timeout_s,
            on_start=cancel.bind,
        )  # fmt: skip
        return await run_in_thread(work, cancel)
