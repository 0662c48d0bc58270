"""What the SQLite source has read, in the index database: ``row_index`` and ``source_state``.

``row_index`` holds one row per record read from a database: its ``version`` (``time_updated``)
and status, ``indexed`` or ``error`` (a row whose ``data`` could not be read, with the reason
and a retry backoff; its last good rows stay). ``source_state`` holds the poll's cursors. Both
are written inside the batch's transaction, so after a crash they describe exactly the rows
that are in the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from indexer_service.backoff import Backoff

__all__ = ["ROW_RETRY", "RowTracker", "utc"]

ROW_RETRY = Backoff(base_seconds=30.0, cap_seconds=3600.0)
"""When a row that failed is read again (unless it changes first)."""


def utc(epoch: float) -> datetime:
    """Epoch seconds as the naive UTC timestamp ``row_index.updated_at`` holds."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


class RowTracker:
    """Reads and writes the ``row_index`` and ``source_state`` rows of one database ``source``."""

    def __init__(
        self, source: str, *, retry: Backoff = ROW_RETRY, clock: Callable[[], float] = time.time
    ) -> None:
        self.source = source
        self.retry = retry
        self.clock = clock

    def mark_indexed(
        self, cur: duckdb.DuckDBPyConnection, kind: str, rows: Sequence[tuple[str, int]]
    ) -> None:
        """Record these (id, version) as indexed (one statement)."""
        if not rows:
            return
        batch = pa.table(
            {
                "id": pa.array([r[0] for r in rows], pa.string()),
                "version": pa.array([r[1] for r in rows], pa.int64()),
            }
        )
        cur.register("_rows_indexed", batch)
        try:
            cur.execute(
                """INSERT OR REPLACE INTO row_index
                   (source, kind, id, version, status, error_message, attempts, retry_after,
                    updated_at)
                   SELECT $source, $kind, id, version, 'indexed', NULL, 0, NULL, $now
                   FROM _rows_indexed""",
                {"source": self.source, "kind": kind, "now": utc(self.clock())},
            ).fetchall()
        finally:
            cur.unregister("_rows_indexed")

    def mark_failed(
        self, cur: duckdb.DuckDBPyConnection, kind: str, rows: Sequence[tuple[str, int, str]]
    ) -> None:
        """Record failures (id, version, message): attempts grow while the same version keeps
        failing and start again at 1 when the row changes."""
        if not rows:
            return
        now = self.clock()
        batch = pa.table(
            {
                "id": pa.array([r[0] for r in rows], pa.string()),
                "version": pa.array([r[1] for r in rows], pa.int64()),
                "message": pa.array([r[2] for r in rows], pa.string()),
            }
        )
        cur.register("_rows_failed", batch)
        try:
            cur.execute(
                """WITH attempts AS (
                     SELECT b.*, CASE WHEN r.status = 'error' AND r.version = b.version
                                      THEN r.attempts + 1 ELSE 1 END AS n
                     FROM _rows_failed b LEFT JOIN (
                       SELECT * FROM row_index WHERE source = $source AND kind = $kind
                     ) r USING (id)
                   )
                   INSERT OR REPLACE INTO row_index
                   (source, kind, id, version, status, error_message, attempts, retry_after,
                    updated_at)
                   SELECT $source, $kind, id, version, 'error', message, n,
                          $now + least($cap, $base * pow(2, n - 1)), $stamp
                   FROM attempts""",
                {
                    "source": self.source,
                    "kind": kind,
                    "now": now,
                    "cap": self.retry.cap_seconds,
                    "base": self.retry.base_seconds,
                    "stamp": utc(now),
                },
            ).fetchall()
        finally:
            cur.unregister("_rows_failed")

    def remove(self, cur: duckdb.DuckDBPyConnection, kind: str, ids: Sequence[str]) -> None:
        """Forget rows that are gone from the database."""
        if ids:
            cur.execute(
                "DELETE FROM row_index WHERE source = ? AND kind = ? AND id IN (SELECT unnest(?))",
                [self.source, kind, list(ids)],
            ).fetchall()

    def load_state(self, cur: duckdb.DuckDBPyConnection) -> dict[str, int]:
        """The cursors saved by the last committed poll."""
        rows = cur.execute(
            "SELECT key, value FROM source_state WHERE source = ?", [self.source]
        ).fetchall()
        return {str(k): int(v) for k, v in rows}

    def save_state(self, cur: duckdb.DuckDBPyConnection, state: dict[str, int]) -> None:
        """Save cursors; a cursor never moves back (a later poll may have committed first)."""
        if not state:
            return
        cur.execute(
            """INSERT INTO source_state
               SELECT $source, unnest($keys), unnest($values), $now
               ON CONFLICT (source, key) DO UPDATE
               SET value = greatest(source_state.value, excluded.value),
                   updated_at = excluded.updated_at""",
            {
                "source": self.source,
                "keys": list(state),
                "values": list(state.values()),
                "now": utc(self.clock()),
            },
        ).fetchall()

    def counts(self, cur: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
        """``{kind: {status: rows}}`` of this source."""
        rows = cur.execute(
            "SELECT kind, status, count(*) FROM row_index WHERE source = ? GROUP BY ALL",
            [self.source],
        ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for kind, status, n in rows:
            out.setdefault(str(kind), {})[str(status)] = int(n)
        return out
