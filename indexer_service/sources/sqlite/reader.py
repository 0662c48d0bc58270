"""A read-only connection to OpenCode's SQLite database that stays out of opencode's way.

Opened with ``mode=ro`` and ``query_only``, busy errors retried, one short read transaction per
`snapshot`, and closed when idle so that opencode can checkpoint and tidy its WAL. Before the
first read it checks that the tables and columns this reader needs exist (a newer opencode
may change its schema): `SchemaChanged` says which one is missing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import structlog

__all__ = ["REQUIRED", "DatabaseUnreadable", "NotCreatedYet", "Reader", "SchemaChanged"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

REQUIRED: dict[str, tuple[str, ...]] = {
    "project": ("id", "worktree", "vcs", "name", "time_created", "time_updated", "time_initialized"),
    "session": (
        "id", "project_id", "parent_id", "slug", "directory", "title", "version", "share_url",
        "summary_additions", "summary_deletions", "summary_files", "time_created",
        "time_updated", "time_compacting", "time_archived",
    ),
    "message": ("id", "session_id", "time_created", "time_updated", "data"),
    "part": ("id", "message_id", "session_id", "time_created", "time_updated", "data"),
    "todo": ("session_id", "content", "status", "priority", "position", "time_updated"),
}  # fmt: skip
"""The only tables and columns ever read. Nothing else of the file (accounts, credentials,
share secrets) is selected, so no secret can reach the index."""

_BUSY_RETRIES = 2
"""A read that finds the database locked is tried this many more times. In WAL mode opencode's
writes never block a reader; a lock that lasts (another program holding it exclusively) fails
the poll in about 3 s, and the next change or reconciliation tries again."""


class DatabaseUnreadable(Exception):
    """Raised when the file cannot be opened or read as an SQLite database (the reason says why)."""


class SchemaChanged(DatabaseUnreadable):
    """Raised when a table or column this reader needs is missing (opencode changed its schema)."""


class NotCreatedYet(DatabaseUnreadable):
    """Raised while the file holds none of opencode's tables: opencode is creating it."""


class Reader:
    """One read-only connection to ``path``, opened on first use; thread-safe (one call at a time).

    ``busy_timeout_s`` is how long SQLite waits on a locked database before a call fails with
    "database is locked"; such failures are retried a few times with a growing pause.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 1.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._con: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._last_used = time.monotonic()
        self.busy_retries = 0
        """Busy errors retried since start."""
        self.longest_read_s = 0.0
        """The longest read transaction so far, in seconds."""

    @property
    def is_open(self) -> bool:
        return self._con is not None

    def idle_for(self) -> float:
        """Seconds since the connection was last used."""
        return time.monotonic() - self._last_used

    def close(self) -> None:
        """Close the connection (the next call opens it again)."""
        with self._lock:
            con, self._con = self._con, None
        if con is not None:
            con.close()

    def data_version(self) -> int:
        """``PRAGMA data_version``: changes whenever another connection commits."""
        return int(self._retry(lambda con: con.execute("PRAGMA data_version").fetchone()[0]))

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in the block sees the same committed state."""
        with self._lock:
            con = self._retry(self._begin)
            began = time.monotonic()
            try:
                yield con
            finally:
                con.execute("COMMIT")
                self.longest_read_s = max(self.longest_read_s, time.monotonic() - began)
                self._last_used = time.monotonic()

    def _begin(self, con: sqlite3.Connection) -> sqlite3.Connection:
        con.execute("BEGIN")
        con.execute("SELECT 1 FROM part LIMIT 1").fetchall()  # takes the read snapshot now
        return con

    def _retry(self, call: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            for attempt in range(_BUSY_RETRIES + 1):
                con = self._connect()
                try:
                    result = call(con)
                    self._last_used = time.monotonic()
                    return result
                except sqlite3.OperationalError as exc:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    if not _busy(exc) or attempt == _BUSY_RETRIES:
                        raise DatabaseUnreadable(f"{self.path}: {exc}") from exc
                    self.busy_retries += 1
                    time.sleep(0.05 * 2**attempt)
                except sqlite3.DatabaseError as exc:  # not a database, malformed, ...
                    self.close()
                    raise DatabaseUnreadable(f"{self.path}: {exc}") from exc
        raise AssertionError("unreachable")

    def _connect(self) -> sqlite3.Connection:
        if self._con is not None:
            return self._con
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        try:
            con = sqlite3.connect(
                uri,
                uri=True,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # transactions only where `snapshot` opens one
                check_same_thread=False,  # used from worker threads, one at a time (the lock)
            )
        except sqlite3.Error as exc:
            raise DatabaseUnreadable(f"{self.path}: cannot open: {exc}") from exc
        con.text_factory = bytes  # text that is not UTF-8 is an error of its row, not the read
        try:
            con.execute("PRAGMA query_only = 1")
            _check_schema(con, self.path)
        except sqlite3.DatabaseError as exc:
            con.close()
            raise DatabaseUnreadable(f"{self.path}: {exc}") from exc
        except BaseException:
            con.close()
            raise
        self._con = con
        log.debug("opencode_db_opened", db=str(self.path))
        return con


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _check_schema(con: sqlite3.Connection, path: Path) -> None:
    tables = {bytes(r[0]).decode() for r in con.execute("SELECT name FROM sqlite_master")}
    if not tables & set(REQUIRED):
        raise NotCreatedYet(f"{path}: no tables yet (opencode is creating it)")
    for table, columns in REQUIRED.items():
        found = {bytes(row[1]).decode() for row in con.execute(f"PRAGMA table_info({table})")}
        if not found:
            raise SchemaChanged(f"{path}: no table {table!r} (a schema this version does not know)")
        missing = [c for c in columns if c not in found]
        if missing:
            raise SchemaChanged(
                f"{path}: table {table!r} has no column {', '.join(map(repr, missing))} "
                "(a schema this version does not know)"
            )
