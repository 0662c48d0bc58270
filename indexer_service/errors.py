"""Every exception indexer_service raises on purpose; the CLI maps them to exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class IndexerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(IndexerError, ValueError):
    """Raised when a setting has an invalid value; the message names the setting."""


class DatabaseError(IndexerError):
    """Raised when the database file cannot be opened or used."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"database {path}: {reason}")


class DatabaseLockedError(DatabaseError):
    """Raised when another process holds the database file (DuckDB allows one writer process)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(path, f"locked by {holder}; stop it or use another --db")


class WriteFailedError(DatabaseError):
    """Raised when writes to the database kept failing for longer than
    ``Settings.write_failure_timeout``; the service stopped, keeping what it had committed."""

    def __init__(self, path: Path, seconds: float, error: str) -> None:
        self.seconds = seconds
        self.error = error
        super().__init__(
            path,
            f"writes failed for {round(seconds, 1):g} s (write_failure_timeout), giving up: "
            f"{error}; fix that and run again (what was written is kept, the next run writes "
            "the rest)",
        )


class DatabaseDamagedError(DatabaseError):
    """Raised when the index file is damaged (cut short, a checksum that does not match, a
    catalog DuckDB cannot read): nothing is read from it or written to it. The way out is
    ``indexer-service rebuild``, which sets the file aside and indexes OpenCode's stores again."""

    def __init__(self, path: Path, damage: str) -> None:
        self.damage = damage
        super().__init__(path, f"damaged ({damage}); {rebuild_hint(path)}")


def rebuild_hint(path: Path) -> str:
    """The way out of a damaged index, said the same way wherever the damage is found."""
    return (
        "`indexer-service rebuild` (with the same --db and store options) keeps it as "
        f"{path.name}.damaged-<time> and indexes OpenCode's stores again"
    )


class SchemaVersionError(DatabaseError):
    """Raised when the database was written by a newer indexer_service than this one."""


class AccumulatorClosed(IndexerError, RuntimeError):
    """Raised when a path is added after the batch accumulator was stopped."""


class QueryError(IndexerError):
    """Raised when a read-only query cannot be answered; the subclass says why."""

    what = "query failed"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{self.what}: {reason}")


class QueryRefused(QueryError):
    """Raised when a statement is not a plain read of the index (writes, files, settings...)."""

    what = "query refused"


class QueryFailed(QueryError):
    """Raised when DuckDB rejects or fails an allowed query (syntax, unknown column...)."""


class QueryTimeout(QueryError):
    """Raised when a query runs past its time limit and is interrupted."""

    what = "query timed out"


class ShipError(IndexerError):
    """Raised when the PostgreSQL sink cannot do its work: the server refused the connection or
    the login, its schema is newer than this indexer-service, or a statement failed. The message
    names the server without its password."""


class ApiError(IndexerError):
    """Raised when the service's HTTP API cannot be reached or answers with an error."""


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``, depth first: ``exc`` itself unless it is a group."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def first_of(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``exc`` or, for a task group's, in its leaves."""
    return next((e for e in leaves(exc) if isinstance(e, kind)), None)


def single_error(
    group: BaseExceptionGroup[BaseException], cancelled: type[BaseException]
) -> BaseException:
    """The one exception a caller should see for a task-group ``group``: its only leaf other
    than ``cancelled`` (the first `IndexerError` if there are several, else the first leaf);
    a cancellation only when nothing else failed."""
    found = list(leaves(group))
    failures = [e for e in found if not isinstance(e, cancelled)]
    if not failures:
        return found[0] if found else group
    return next((e for e in failures if isinstance(e, IndexerError)), failures[0])
