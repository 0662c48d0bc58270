"""`Sink`: follows the index's change feed and ships it to the team's PostgreSQL.

    Database.changes ─► plan a window ─► read its changes (one DuckDB transaction)
                                     └─► DELETE the groups + COPY their rows + move the
                                         position, in one PostgreSQL transaction

A backlog (the first shipment, or catching up after an outage) goes window after window of
at most `WINDOW_ROWS` changes; once caught up the sink waits for the next batch written and
ships at most one transaction per ``interval``. While the server cannot be reached, or refuses,
the sink retries with a backoff; the local service goes on indexing and `stats` says how far
behind the sink is. Nothing here blocks the event loop: DuckDB and PostgreSQL run in a thread.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import anyio
import duckdb
import psycopg
import structlog

from indexer_service.backoff import Backoff
from indexer_service.errors import DatabaseError, ShipError
from indexer_service.events import Signal
from indexer_service.ship.connect import connect, failure_reason
from indexer_service.ship.dsn import redact
from indexer_service.ship.feed import Window, plan, read_changes
from indexer_service.ship.pg_schema import ensure_schema
from indexer_service.ship.pg_write import (
    Position,
    PositionLost,
    Shipped,
    read_position,
    restart,
    ship_window,
)
from indexer_service.stats import SinkStats, latency_stats
from indexer_service.store.cursors import CursorsClosed
from indexer_service.store.database import Database

__all__ = ["WINDOW_ROWS", "Sink"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

WINDOW_ROWS = 50_000
"""Changes per window of a backlog (one PostgreSQL transaction): bounded memory and a bounded
redo after a crash, large enough that COPY runs at its pace."""

BEHIND_SECONDS = 10.0
"""How long the oldest unshipped change may wait before ``/healthz`` mentions the sink."""

_CONNECT_TIMEOUT = 10.0
_REFUSALS = ("password authentication failed", "pg_hba.conf", "does not exist", "permission")
"""Words of a server that answered and said no (a login, a database, a right): `failing`,
not `unreachable`."""
_SinkState = Literal["starting", "shipping", "caught_up", "unreachable", "failing"]


class Sink:
    """Ships the record tables of ``db`` to the PostgreSQL server of ``url`` as machine
    ``machine_id`` (None: the id generated once and kept in the index).

    ``wake`` is set whenever a batch was written; ``interval`` is the least time between two
    live transactions on the server.
    """

    backoff = Backoff(base_seconds=1.0, cap_seconds=10.0)
    """1 s after the first failure, doubling, at most 10 s: a server back is used within 10 s
    (an attempt costs one connection)."""

    def __init__(
        self,
        db: Database,
        url: str,
        *,
        machine_id: str | None = None,
        wake: Signal | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._url = url
        self._wake = wake or Signal()
        self.interval = interval
        self._clock = clock
        self._limiter = anyio.CapacityLimiter(1)
        self._pg: psycopg.Connection[Any] | None = None
        self.machine_id = machine_id
        self._epoch: str | None = None
        self._shipped: int | None = None
        self._fresh_upto: int | None = None
        """After a restart, the last number then: windows up to it replace nothing (the
        server holds none of their groups), so they are COPY alone."""
        self._state: _SinkState = "starting"
        self._error: str | None = None
        self._failures = 0
        self._counts = {"rows": 0, "groups": 0, "windows": 0, "restarts": 0}
        self._last_shipped_at: float | None = None
        self._lag_ms: deque[float] = deque(maxlen=4096)
        self.progress = Signal()
        """Set after each window shipped and each failure: for waiting on the sink."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Ship until cancelled; failures are retried, never raised."""
        await self._call(self._identity)
        log.info("sink_starting", target=redact(self._url), machine_id=self.machine_id)
        while True:
            try:
                await self._follow()
            except (ShipError, psycopg.Error, PositionLost) as exc:
                self._failed(exc)
            except (duckdb.Error, DatabaseError, CursorsClosed) as exc:  # the index reopening
                self._failed(exc, local=True)
            finally:
                await self._close_pg()
            await anyio.sleep(self.backoff.delay(self._failures))

    async def _follow(self) -> None:
        """Connect, read the machine's position, then ship windows as changes come."""
        self._pg = pg = await self._call(connect, self._url, timeout=_CONNECT_TIMEOUT)
        await self._call(ensure_schema, pg)
        position = await self._call(self._position, pg)
        if self._state in ("unreachable", "failing"):
            log.info("sink_reconnected", target=redact(self._url), shipped_seq=position.shipped)
        self._failures, self._error = 0, None
        scanned = position.shipped  # every change up to here is on the server
        while True:
            woken = self._wake.event()  # before reading `committed`: no batch slips between
            committed = self._db.changes.committed()
            if committed <= scanned:
                self._state = "caught_up"
                with anyio.move_on_after(30.0):
                    await woken.wait()
                continue
            self._state = "shipping"
            began = anyio.current_time()
            window = await self._call(self._plan, scanned, committed)
            shipped = Shipped(0, 0)
            if window.last is not None:  # else numbers that stamped nothing: no transaction
                shipped = await self._call(self._ship, pg, position, window)
                position = Position(position.epoch, window.last)
            self._shipped = scanned = window.upto
            self._last_shipped_at = now = self._clock()
            ended = self._db.changes.ended_between(window.after, window.upto)
            self._lag_ms.extend((now - at) * 1000 for at in ended)
            self.progress.set()
            self._counts["windows"] += window.last is not None
            self._counts["rows"] += shipped.rows
            self._counts["groups"] += shipped.groups
            if shipped.rows > 10_000:
                log.info(
                    "sink_window_shipped",
                    rows=shipped.rows,
                    upto=window.upto,
                    behind=committed - window.upto,
                )
            if window.upto >= committed:  # caught up: the next transaction waits its turn
                await anyio.sleep_until(began + self.interval)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the sink's thread; a cancellation interrupts a statement running on the
        server (the thread then ends at once) instead of waiting for it."""
        finished = False

        async def interrupt_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                if not finished and (pg := self._pg) is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(pg.cancel_safe)

        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(interrupt_when_cancelled)
            try:
                result = await anyio.to_thread.run_sync(
                    lambda: fn(*args, **kwargs), limiter=self._limiter
                )
            except Exception as exc:  # raised below as itself, not in the task group's group
                error = exc
            finally:
                finished = True
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return result

    async def _close_pg(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pg.close)

    def _failed(self, exc: BaseException, *, local: bool = False) -> None:
        self._failures += 1
        if isinstance(exc, ShipError):
            reason = str(exc)
        elif isinstance(exc, PositionLost):
            reason = (
                f"the position of machine {self.machine_id} on the server changed under this "
                "sink (another service ships as the same machine id?): reading it again"
            )
        elif local:
            reason = f"reading the index failed: {' '.join(str(exc).split())}"
        else:
            reason = f"{redact(self._url)}: {failure_reason(exc, self._url)}"
        unreachable = (
            isinstance(exc, psycopg.OperationalError)
            or (isinstance(exc, ShipError) and "cannot connect" in reason)
        ) and not any(refusal in reason for refusal in _REFUSALS)
        state: _SinkState = "unreachable" if unreachable else "failing"
        if reason != self._error or state != self._state:
            log.warning(
                "sink_failed",
                state=state,
                error=reason,
                retry_in_s=self.backoff.delay(self._failures),
                action="local indexing goes on; the sink resumes from the server's position",
            )
        self._state, self._error = state, reason
        self.progress.set()

    # -- in the sink's thread ----------------------------------------------------------------

    def _identity(self) -> None:
        """The machine id (generated once if not set) and the index's epoch, kept in the index:
        a new index (rebuilt, or another file) is a new epoch, which the server replaces."""
        with self._db.transaction() as cur:
            if self.machine_id is None:
                self.machine_id = _meta(
                    cur, "machine_id", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
                )
            self._epoch = _meta(cur, "index_epoch", uuid.uuid4().hex)

    def _position(self, pg: psycopg.Connection[Any]) -> Position:
        """The server's position for this machine, started over if it is of another index."""
        assert self.machine_id is not None and self._epoch is not None
        found = read_position(pg, self.machine_id)
        if found is None:
            reason = "first shipment"
        elif found.epoch != self._epoch:
            reason = "the server holds another index's rows for this machine id"
        elif found.shipped > self._db.changes.committed():
            reason = "the server holds changes this index does not (an older copy of the file?)"
        else:
            self._shipped, self._fresh_upto = found.shipped, None
            return found
        log.info("sink_restarting", machine_id=self.machine_id, reason=reason)
        self._counts["restarts"] += 1
        position = restart(pg, self.machine_id, self._epoch)
        self._fresh_upto = self._db.changes.committed()
        self._shipped = position.shipped
        return position

    def _plan(self, after: int, upto: int) -> Window:
        fresh = self._fresh_upto
        if fresh is not None and after < fresh < upto:  # no window across it: see `_ship`
            upto = fresh
        with self._db.transaction() as cur:
            return plan(cur, after, upto, WINDOW_ROWS)

    def _ship(self, pg: psycopg.Connection[Any], position: Position, window: Window) -> Shipped:
        assert self.machine_id is not None
        with self._db.transaction() as cur:  # one snapshot of the index for the window
            fresh = self._fresh_upto is not None and window.upto <= self._fresh_upto
            changes = read_changes(cur, window, replace=not fresh)
            return ship_window(pg, self.machine_id, position, window, changes)

    # -- state ---------------------------------------------------------------------------------

    async def wait_shipped(self, seq: int) -> None:
        """Return once every change numbered up to ``seq`` is on the server."""
        while True:
            shipped = self.progress.event()
            if self._shipped is not None and self._shipped >= seq:
                return
            await shipped.wait()

    def behind(self) -> str | None:
        """Why ``/healthz`` should mention the sink (unreachable, failing, or its oldest
        unshipped change older than `BEHIND_SECONDS`), with how far behind it is; else None."""
        stats = self.get_stats()
        far = f"{stats['behind_changes']} changes, {stats['behind_seconds']:g} s behind"
        if stats["state"] in ("unreachable", "failing"):
            return f"sink {stats['state']} ({far}): {stats['error']}"
        if stats["behind_seconds"] > BEHIND_SECONDS:
            return f"sink behind: {far}"
        return None

    def get_stats(self) -> SinkStats:
        """A snapshot for `IndexerService.stats`."""
        committed = self._db.changes.committed()
        shipped = self._shipped
        since = None if shipped is None else self._db.changes.committed_at(shipped)
        behind_s = 0.0 if since is None else max(0.0, self._clock() - since)
        return SinkStats(
            target=redact(self._url),
            machine_id=self.machine_id,
            state=self._state,
            shipped_seq=shipped,
            committed_seq=committed,
            behind_changes=max(0, committed - (shipped if shipped is not None else 0)),
            behind_seconds=round(behind_s, 3),
            rows_shipped=self._counts["rows"],
            groups_replaced=self._counts["groups"],
            windows=self._counts["windows"],
            restarts=self._counts["restarts"],
            last_shipped_at=self._last_shipped_at,
            lag_ms=latency_stats(self._lag_ms),
            error=self._error,
        )


def _meta(cur: duckdb.DuckDBPyConnection, key: str, default: str) -> str:
    """The index's value for ``key`` in ``schema_meta``, set to ``default`` if it has none."""
    cur.execute("INSERT OR IGNORE INTO schema_meta VALUES (?, ?)", [key, default]).fetchall()
    rows = cur.execute("SELECT value FROM schema_meta WHERE key = ?", [key]).fetchall()
    return str(rows[0][0])
