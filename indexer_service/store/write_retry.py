"""Database-level write failures: retried with backoff, never blamed on the files.

A batch whose write fails because of the database (a full disk, an I/O error, DuckDB
invalidated by a fatal error, a connection closed under it) says nothing about its files:
marking them ``error`` would be wrong, and on a full disk impossible anyway. `WriteRetry`
makes the worker keep its batch, wait (0.5 s doubling, at most 30 s), reopen the database if
DuckDB invalidated it, and load the batch again, re-reading its files, until a write succeeds.
The other workers do the same with theirs, and the accumulator makes producers wait, so memory
stays bounded while the disk is full. Any other exception still fails the pool. With
``give_up_after`` set (`Settings.write_failure_timeout`), writes that keep failing that long
raise `WriteFailedError` instead, which stops the service. Once the shutdown has begun
(`WriteRetry.stop`), a failed write is not retried: `WriteAbandoned` drops the batch, whose
records the next start's scan finds. A write that meets a damaged block raises
`DatabaseDamagedError` at once: no retry mends the file.

What DuckDB 2.0.1 does when the disk fills (measured on a 5 MB tmpfs; `tests/test_faults.py`):

* The WAL append at commit fails: ``TransactionException: Failed to commit: Could not write file
  ".../index.duckdb.wal": No space left on device``. The transaction is rolled back and the
  connection stays usable: once space is freed the next commit succeeds.
* A checkpoint fails (at ``checkpoint_threshold``, or the one at shutdown): ``IOException:
  Checkpoint failed for database "indexer". The database has been invalidated. Original error:
  Could not write file ...: No space left on device`` (a ``FatalException`` when the file is
  the connection's main database rather than attached). The instance is invalidated: every
  later statement on every cursor fails with "database has been invalidated because of a previous fatal error. The database must be
  restarted prior to being used again". Closing every connection and opening the file again
  replays the WAL: every committed batch is there, and the failed one is written again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import duckdb
import structlog

from indexer_service.backoff import Backoff
from indexer_service.errors import DatabaseDamagedError, DatabaseError, WriteFailedError
from indexer_service.events import Signal
from indexer_service.stats import WriteStats
from indexer_service.store.database import Database
from indexer_service.store.integrity import damaged

__all__ = ["WriteAbandoned", "WriteRetry", "database_failure", "needs_reopen"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class WriteAbandoned(Exception):
    """A batch whose write failed during the shutdown: not retried, its keys are found again
    by the next start's scan (the pool drops it quietly)."""


def database_failure(exc: BaseException) -> str | None:
    """One line saying what failed if ``exc`` is the database's failure (retry the batch
    later), else None (a bug or a problem of the data: let it fail)."""
    if isinstance(exc, DatabaseError):  # not open, or it could not be opened again
        return str(exc)
    if isinstance(exc, duckdb.OperationalError | duckdb.FatalException | duckdb.InternalException):
        # OperationalError: IOException, TransactionException (a failed commit, conflicts),
        # ConnectionException, ResourceInUseException
        return " ".join(str(exc).split())
    return None


def needs_reopen(exc: BaseException) -> bool:
    """Whether DuckDB must be restarted before it takes another statement."""
    return isinstance(exc, duckdb.FatalException | duckdb.InternalException) or (
        "invalidated" in str(exc)
    )


class WriteRetry:
    """Retries loads that failed for database-level reasons; says whether writes are failing.

    ``limiter`` is the writers' limiter: a reopen waits for the write in progress to end.
    ``give_up_after``: seconds writes may keep failing before a failed load raises
    `WriteFailedError` instead of waiting again (None: retry for ever).
    """

    backoff = Backoff(base_seconds=0.5, cap_seconds=30.0)
    """0.5 s after the first failure of a batch, doubling, at most 30 s: a freed disk is used
    again within 30 s."""

    def __init__(
        self,
        db: Database,
        *,
        limiter: anyio.CapacityLimiter | None = None,
        clock: Callable[[], float] = time.time,
        give_up_after: float | None = None,
    ) -> None:
        self.db = db
        self.limiter = limiter
        self._clock = clock
        self.give_up_after = give_up_after
        self._gave_up = False
        self._lock = threading.Lock()
        self._generation = 0  # reopens done: workers that saw one failure reopen once
        self._failing_since: float | None = None
        self._error: str | None = None
        self._reopen_error: str | None = None
        self._counts = {"failed_writes": 0, "reopens": 0, "recoveries": 0}
        self.stopping = False
        """Set by `stop`: a failed write is no longer retried."""
        self._stopped = Signal()

    @property
    def failing(self) -> bool:
        """The last write failed for a database-level reason and no write succeeded since."""
        return self._failing_since is not None

    async def run(self, load: Callable[[], Awaitable[T]], *, files: int = 0) -> T:
        """``await load()`` until it returns, waiting and reopening the database after each
        database-level failure; any other exception is raised, and so is `WriteFailedError`
        once writes have failed for ``give_up_after`` seconds (the last wait is cut to end
        then, so the last try falls on that limit)."""
        attempt = 0
        while True:
            seen = self._generation
            try:
                result = await load()
            except Exception as exc:
                if (damage := damaged(self.db.path, exc)) is not None:  # no retry mends it
                    raise damage from exc
                reason = database_failure(exc)
                if reason is None:
                    raise
                if not self.db.is_open and self._reopen_error is not None:
                    reason = self._reopen_error  # more telling than "database is not open"
                attempt += 1
                if self.stopping:
                    raise self._abandon(reason, files) from exc
                delay = self._failed(reason, attempt, files)
                if delay is None:
                    raise self._give_up(reason) from exc
                with anyio.move_on_after(delay):
                    await self._stopped.event().wait()  # the shutdown ends the wait
                if self.stopping:
                    raise self._abandon(reason, files) from exc
                if needs_reopen(exc) or not self.db.is_open:
                    await self._reopen(seen)
            else:
                self._succeeded()
                return result

    def stop(self) -> None:
        """The shutdown began: writes that fail from now on, and those waiting to be tried
        again, are given up at once (`WriteAbandoned`) instead of holding the shutdown until
        its timeout; what they held is found again by the next start's scan."""
        self.stopping = True
        self._stopped.set()

    def _abandon(self, reason: str, files: int) -> WriteAbandoned:
        log.warning(
            "database_write_abandoned",
            db=str(self.db.path),
            error=reason,
            files=files,
            action="stopping: not retried; the next start's scan finds these records",
        )
        return WriteAbandoned(reason)

    def _failed(self, reason: str, attempt: int, files: int) -> float | None:
        """Record a failure; return the seconds to wait before the next try, or None once
        writes have been failing for ``give_up_after``."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        self._error = reason
        self._counts["failed_writes"] += 1
        delay = self.backoff.delay(attempt)
        if self.give_up_after is not None:
            failed_for = now - self._failing_since
            if failed_for >= self.give_up_after:
                return None
            delay = min(delay, self.give_up_after - failed_for)
        log.error(
            "database_write_failed",
            db=str(self.db.path),
            error=reason,
            attempt=attempt,
            files=files,
            retry_in_s=delay,
        )
        return delay

    def _give_up(self, reason: str) -> WriteFailedError:
        since = self._failing_since
        failed_for = 0.0 if since is None else self._clock() - since
        if not self._gave_up:  # every worker gives up in turn: said once
            self._gave_up = True
            log.error(
                "database_write_gave_up",
                db=str(self.db.path),
                error=reason,
                failed_for_s=round(failed_for, 3),
                write_failure_timeout=self.give_up_after,
            )
        return WriteFailedError(self.db.path, failed_for, reason)

    def _succeeded(self) -> None:
        since = self._failing_since
        if since is None:
            return
        self._failing_since = None
        self._counts["recoveries"] += 1
        log.info(
            "database_write_recovered",
            db=str(self.db.path),
            failed_for_s=round(self._clock() - since, 3),
            failed_writes=self._counts["failed_writes"],
        )

    async def _reopen(self, seen: int) -> None:
        try:
            reopened = await anyio.to_thread.run_sync(self._reopen_sync, seen, limiter=self.limiter)
        except DatabaseDamagedError as exc:  # found when opening it again: the service stops
            log.error("database_damaged", db=str(self.db.path), error=exc.damage)
            raise
        except Exception as exc:  # e.g. the WAL replay cannot checkpoint yet: the next try
            reason = database_failure(exc)
            if reason is None:
                raise
            self._reopen_error = f"cannot open it again: {reason}"
            log.error("database_reopen_failed", db=str(self.db.path), error=reason)
            return
        self._reopen_error = None
        if reopened:
            log.warning("database_reopened", db=str(self.db.path))

    def _reopen_sync(self, seen: int) -> bool:
        with self._lock:
            if self._generation != seen:
                return False  # another worker reopened it after this one's failure
            self._generation += 1
            self._counts["reopens"] += 1
            self.db.reopen()
            return True

    def health(self) -> str | None:
        """Why writes are failing (for ``/healthz``), or None while they work."""
        since = self._failing_since
        if since is None:
            return None
        return (
            f"database {self.db.path}: writes failing for {self._clock() - since:.0f} s, "
            f"retrying: {self._error}"
        )

    def get_stats(self) -> WriteStats:
        """Whether writes fail now (since when, with which error) and the counts of failed
        writes, reopens and recoveries."""
        c = self._counts
        return WriteStats(
            state="failing" if self.failing else "ok",
            error=self._error if self.failing else None,
            failing_since=self._failing_since,
            failed_writes=c["failed_writes"],
            reopens=c["reopens"],
            recoveries=c["recoveries"],
        )
