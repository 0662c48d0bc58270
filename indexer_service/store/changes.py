"""What changed in the record tables, and in which order: the feed the PostgreSQL sink reads.

Every transaction that writes record rows takes a number from `ChangeSequence`, in the order
the transactions start, and stamps it on the rows it inserts (``change_seq``). A row that goes
away leaves no row to stamp, so the groups of rows a transaction removed for good (a record
deleted, a list file that is now empty) are kept in ``removed_rows`` with the number. What
changed after number ``n`` is then: rows with ``change_seq > n`` and removals with
``change_seq > n``; `ChangeSequence.committed` says up to which number every transaction has
ended, so a reader never passes a number still being written.

A number is never handed out twice, not even after a restart: a transaction may end without
stamping any row (a batch of error rows, a rollback) while a reader has already passed its
number, so the numbers are reserved in the index in blocks (``change_seq_reserved`` in
``schema_meta``) before they are used, and an index opens after the last reserved one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import duckdb
import pyarrow as pa

from indexer_service.store.schema import RECORD_TABLES, SEQ_COLUMN

__all__ = ["RESERVE_BLOCK", "ChangeSequence", "last_seq", "note_removed", "stamped"]

_TIMES_KEPT = 65_536
"""Commit times kept for `ChangeSequence.committed_at` (about two hours of live writes)."""

RESERVE_BLOCK = 1_000
"""Numbers reserved in the index at once: one small commit per this many transactions, and a
gap of at most this many numbers after a restart."""

_RESERVED_KEY = "change_seq_reserved"


def last_seq(cur: duckdb.DuckDBPyConnection) -> int:
    """The highest change number the index holds or reserved (0 for an index written before
    numbering): the next one opened starts after it."""
    parts = [f"SELECT max({SEQ_COLUMN}) AS s FROM {t.name}" for t in RECORD_TABLES]
    parts.append(f"SELECT max({SEQ_COLUMN}) AS s FROM removed_rows")
    parts.append(f"SELECT max(value::BIGINT) FROM schema_meta WHERE key = '{_RESERVED_KEY}'")
    sql = f"SELECT coalesce(max(s), 0) FROM ({' UNION ALL '.join(parts)})"
    return int(cur.execute(sql).fetchall()[0][0])  # fetchall: an open result holds a transaction


def reserve(cur: duckdb.DuckDBPyConnection, upto: int) -> None:
    """Record in the index that numbers up to ``upto`` may be in use (`ChangeSequence`)."""
    cur.execute(
        "INSERT OR REPLACE INTO schema_meta VALUES (?, ?)", [_RESERVED_KEY, str(upto)]
    ).fetchall()


class ChangeSequence:
    """Numbers the transactions that write record rows; says which numbers have ended.

    ``reserve(upto)`` makes numbers up to ``upto`` durable as reserved (committed in the
    index) before the first of them is handed out; None: nothing is kept (an index of its
    own that is never reopened). Thread-safe: the writer threads claim numbers, the sink reads
    `committed`.
    """

    def __init__(
        self,
        last: int,
        *,
        clock: Callable[[], float] = time.time,
        reserve: Callable[[int], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._next = last + 1
        self._reserve = reserve
        self._reserved = last
        self._open: set[int] = set()
        self._clock = clock
        self._times: deque[tuple[int, float]] = deque(maxlen=_TIMES_KEPT)
        self._held = threading.local()  # the number `joined` hands out on this thread

    @contextmanager
    def claim(self) -> Iterator[int]:
        """A new number for one transaction; the block must hold the whole transaction, so
        the number counts as ended only once it committed or rolled back. Inside `joined`,
        the number of the transaction joined."""
        held: int | None = getattr(self._held, "seq", None)
        if held is not None:
            yield held
            return
        with self._lock:
            seq = self._next
            if self._reserve is not None and seq > self._reserved:
                self._reserve(seq + RESERVE_BLOCK - 1)  # raises: no number is handed out
                self._reserved = seq + RESERVE_BLOCK - 1
            self._next += 1
            self._open.add(seq)
        try:
            yield seq
        finally:
            with self._lock:
                self._open.discard(seq)
                self._times.append((seq, self._clock()))

    @contextmanager
    def joined(self, seq: int) -> Iterator[None]:
        """Make `claim` on this thread hand out ``seq``, the number of a transaction that
        several writes share (`store.group.WriteGroup`)."""
        self._held.seq = seq
        try:
            yield
        finally:
            self._held.seq = None

    def committed(self) -> int:
        """The highest number below which every transaction has ended: rows stamped up to it
        are all visible, and no later transaction will stamp a lower one."""
        with self._lock:
            return min(self._open) - 1 if self._open else self._next - 1

    def ended_between(self, after: int, upto: int) -> list[float]:
        """When the kept transactions numbered in ``(after, upto]`` ended (epoch seconds)."""
        with self._lock:
            return [at for number, at in self._times if after < number <= upto]

    def committed_at(self, seq: int) -> float | None:
        """When the first transaction numbered above ``seq`` ended (epoch seconds), if it is
        among the last ones kept; None if every kept one is at or below ``seq``."""
        with self._lock:
            for number, at in self._times:
                if number > seq:
                    return at
        return None


def stamped(rows: pa.Table, seq: int) -> pa.Table:
    """``rows`` with the change number column set to ``seq``."""
    column = pa.repeat(pa.scalar(seq, pa.int64()), rows.num_rows)
    if SEQ_COLUMN in rows.column_names:
        return rows.set_column(rows.column_names.index(SEQ_COLUMN), SEQ_COLUMN, column)
    return rows.append_column(SEQ_COLUMN, column)


def note_removed(
    cur: duckdb.DuckDBPyConnection,
    table: str,
    seq: int,
    removed: Iterable[object],
    kept: Sequence[object] = (),
) -> None:
    """Record that transaction ``seq`` removed the rows of the groups in ``removed`` from
    ``table``, except those in ``kept`` (written again in the same transaction, so their new
    rows carry the number)."""
    gone = set(removed).difference(kept)
    if gone:
        cur.execute(
            "INSERT OR REPLACE INTO removed_rows SELECT ?, ?, unnest(?)",
            [table, seq, sorted(str(g) for g in gone)],
        ).fetchall()
