"""FileTracker: what is known about each storage file, in the `file_index` table.

Every file has one row: its type, the mtime and size of the version whose rows are in the
database, and a status: ``indexed`` or ``error`` (with a message, retried with backoff).
Batch methods write the whole batch in one statement; called inside
`Database.transaction()` they join the caller's transaction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import duckdb
import pyarrow as pa

from indexer_service.backoff import Backoff
from indexer_service.store.database import Database
from indexer_service.store.rows import one_of

INDEXED = "indexed"
ERROR = "error"


FILE_RETRY = Backoff(base_seconds=30.0, cap_seconds=3600.0)
"""When a file that failed is read again (unless it changes first): 30 s after the first
failure, doubling, at most an hour."""


class IndexedFile(NamedTuple):
    """A file version whose rows were written."""

    path: str
    file_type: str
    mtime: float
    size: int
    record_id: str | None
    mtime_ns: int | None = None


class FailedFile(NamedTuple):
    """A file version that could not be indexed, and why."""

    path: str
    file_type: str
    mtime: float
    size: int
    message: str
    mtime_ns: int | None = None


@dataclass(frozen=True)
class FileEntry:
    """One `file_index` row."""

    path: str
    file_type: str
    mtime: float
    size: int
    record_id: str | None
    status: str
    error_message: str | None
    attempts: int
    retry_after: float | None
    mtime_ns: int | None
    indexed_at: datetime | None
    updated_at: datetime | None


_ENTRY_COLS = (
    "file_path, file_type, mtime, size, record_id, status, error_message, attempts, "
    "retry_after, mtime_ns, indexed_at, updated_at"
)


_SIZE_MAX = 2**31 - 1  # file_index.size is INTEGER


def _sizes(rows: Sequence[IndexedFile] | Sequence[FailedFile]) -> pa.Array:
    """File sizes for ``file_index.size``; a file of 2 GiB or more (only ever an error, see
    `Settings.max_file_bytes`) is recorded as 2**31 - 1, so its size never fails a batch."""
    return pa.array([min(r.size, _SIZE_MAX) for r in rows], pa.int32())


def _version_columns(rows: Sequence[IndexedFile] | Sequence[FailedFile]) -> dict[str, pa.Array]:
    """The ``file_index`` columns both kinds of row have: path, type and the version seen."""
    return {
        "file_path": pa.array([r.path for r in rows], pa.string()),
        "file_type": pa.array([r.file_type for r in rows], pa.string()),
        "mtime": pa.array([r.mtime for r in rows], pa.float64()),
        "size": _sizes(rows),
        "mtime_ns": pa.array([r.mtime_ns for r in rows], pa.int64()),
    }


def _utc(epoch: float) -> datetime:
    """TIMESTAMP columns hold naive UTC."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow view without masking the error that aborted the transaction."""
    with contextlib.suppress(duckdb.Error):
        cur.unregister(name)


def same_version_sql(stored: str, seen: str) -> str:
    """SQL: the stored row describes the same file version as the one seen on disk."""
    return (
        f"{stored}.size = {seen}.size AND CASE WHEN {stored}.mtime_ns IS NULL "
        f"OR {seen}.mtime_ns IS NULL THEN {stored}.mtime = {seen}.mtime "
        f"ELSE {stored}.mtime_ns = {seen}.mtime_ns END"
    )


class FileTracker:
    """Reads and writes `file_index` rows through the calling thread's cursor."""

    def __init__(
        self,
        db: Database,
        *,
        retry: Backoff = FILE_RETRY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.retry = retry
        self.clock = clock

    # -- writes ------------------------------------------------------------------------------

    def mark_indexed(
        self,
        path: str,
        file_type: str,
        mtime: float,
        size: int,
        record_id: str | None,
        *,
        mtime_ns: int | None = None,
    ) -> None:
        self.mark_indexed_batch([IndexedFile(path, file_type, mtime, size, record_id, mtime_ns)])

    def mark_indexed_batch(self, rows: Sequence[IndexedFile], *, replace: bool = True) -> None:
        """Record that these versions are indexed: one statement for the whole batch.

        ``replace=False`` inserts only (about half the cost) and raises
        ``duckdb.ConstraintException`` if a path already has a row.
        """
        if not rows:
            return
        now = _utc(self.clock())
        paths = [r.path for r in rows]
        record_ids = pa.array([r.record_id for r in rows], pa.string())
        table = pa.table({**_version_columns(rows), "record_id": record_ids})
        with self.db.transaction() as cur:  # joins the loader's transaction
            cur.register("_indexed_batch", table)
            try:
                if replace:  # half the cost of INSERT OR REPLACE (see loader)
                    where, params = one_of("file_path", paths)
                    cur.execute(f"DELETE FROM file_index WHERE {where}", params).fetchall()
                cur.execute(
                    """
                    INSERT INTO file_index
                        (file_path, file_type, mtime, size, record_id, indexed_at, error_message,
                         status, mtime_ns, attempts, retry_after, updated_at)
                    SELECT file_path, file_type, mtime, size, record_id, $now, NULL,
                           'indexed', mtime_ns, 0, NULL, $now
                    FROM _indexed_batch
                    """,
                    {"now": now},
                ).fetchall()
            finally:
                _unregister(cur, "_indexed_batch")

    def mark_error(
        self,
        path: str,
        message: str,
        *,
        file_type: str,
        mtime: float = 0.0,
        size: int = 0,
        mtime_ns: int | None = None,
    ) -> None:
        self.mark_error_batch([FailedFile(path, file_type, mtime, size, message, mtime_ns)])

    def mark_error_batch(self, rows: Sequence[FailedFile]) -> None:
        """Record failures. The record's rows of its last good version are kept; the attempt
        counter grows while the same version keeps failing and resets when the file changes."""
        if not rows:
            return
        now = self.clock()
        paths = [r.path for r in rows]
        table = pa.table({**_version_columns(rows), "message": [r.message for r in rows]})
        known, params = one_of("file_path", paths)
        cur = self.db.cursor()
        cur.register("_failed_batch", table)
        try:
            cur.execute(
                f"""
                WITH attempts AS (
                    SELECT b.*,
                        CASE WHEN f.status = 'error' AND {same_version_sql("f", "b")}
                             THEN f.attempts + 1 ELSE 1 END AS n,
                        f.record_id AS old_record_id, f.indexed_at AS old_indexed_at
                    FROM _failed_batch b
                    LEFT JOIN (SELECT * FROM file_index WHERE {known}) f USING (file_path)
                )
                INSERT OR REPLACE INTO file_index
                    (file_path, file_type, mtime, size, record_id, indexed_at, error_message,
                     status, mtime_ns, attempts, retry_after, updated_at)
                SELECT file_path, file_type, mtime, size, old_record_id, old_indexed_at, message,
                       'error', mtime_ns, n, ? + least(?, ? * pow(2, n - 1)), ?
                FROM attempts
                """,
                [*params, now, self.retry.cap_seconds, self.retry.base_seconds, _utc(now)],
            )
        finally:
            _unregister(cur, "_failed_batch")

    def remove(self, paths: Iterable[str]) -> int:
        """Forget deleted files; returns how many rows were removed."""
        paths = list(paths)
        if not paths:
            return 0
        where, params = one_of("file_path", paths)
        row = self.db.cursor().execute(f"DELETE FROM file_index WHERE {where}", params).fetchall()
        return int(row[0][0]) if row else 0

    # -- reads -------------------------------------------------------------------------------

    def get(self, path: str) -> FileEntry | None:
        row = (
            self.db.cursor()
            .execute(f"SELECT {_ENTRY_COLS} FROM file_index WHERE file_path = ?", [path])
            .fetchall()
        )
        return FileEntry(*row[0]) if row else None

    def needs_indexing(
        self, path: str, mtime: float, size: int, *, mtime_ns: int | None = None
    ) -> bool:
        """Whether the version seen on disk must be (re)read: unknown, changed, pending, or an
        error whose backoff has expired."""
        entry = self.get(path)
        if entry is None or entry.size != size:
            return True
        if entry.mtime_ns is not None and mtime_ns is not None:
            if entry.mtime_ns != mtime_ns:
                return True
        elif entry.mtime != mtime:
            return True
        if entry.status == ERROR:
            return entry.retry_after is None or entry.retry_after <= self.clock()
        return entry.status != INDEXED

    def counts_by_status(self) -> dict[str, int]:
        rows = (
            self.db.cursor()
            .execute("SELECT status, count(*) FROM file_index GROUP BY status")
            .fetchall()
        )
        return {str(s): int(n) for s, n in rows}

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """``{file_type: {status: count}}``."""
        rows = (
            self.db.cursor()
            .execute("SELECT file_type, status, count(*) FROM file_index GROUP BY ALL ORDER BY ALL")
            .fetchall()
        )
        out: dict[str, dict[str, int]] = {}
        for ftype, status, n in rows:
            out.setdefault(str(ftype), {})[str(status)] = int(n)
        return out
