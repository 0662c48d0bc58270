"""Reading the index's change feed (`store.changes`) in windows, for the sink.

A window is a range of change numbers ``(after, upto]``. What it changed in a table is the rows
stamped with a number in the range, plus the groups `removed_rows` names in the range (their
rows, if any came back, are read whatever their number). Shipping a window replaces, on the
team database, every group it touched by the rows the index holds now, so a group's newest
state always wins and windows shipped again change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from indexer_service.ship.tables import SHIPPED_TABLES, ShippedTable
from indexer_service.store.rows import one_of
from indexer_service.store.schema import RECORD_TABLES, SEQ_COLUMN

__all__ = ["BATCH_ROWS", "Changes", "Window", "plan", "read_changes"]

BATCH_ROWS = 20_000
"""Rows per Arrow batch read from the index and written to COPY: a bounded buffer."""

_IN_WINDOW = f"{SEQ_COLUMN} > $after AND {SEQ_COLUMN} <= $upto"
"""A row (or removal) of the window ``(after, upto]``, with named parameters."""

_JSON_COLUMNS = {c.name for t in RECORD_TABLES for c in t.columns if c.type.startswith("JSON")}


@dataclass(frozen=True)
class Window:
    """Change numbers ``(after, upto]`` and how many rows and removals they hold."""

    after: int
    upto: int
    rows: int
    last: int | None
    """The highest number in the window that stamped something (None: nothing did). Only such
    a number is written as a machine's position: a number that stamped nothing leaves no trace
    in the index, and the index may number a transaction with it again after a restart."""


def plan(cur: duckdb.DuckDBPyConnection, after: int, upto: int, max_rows: int) -> Window:
    """The next window after ``after``: as many numbers up to ``upto`` as hold at most
    ``max_rows`` changes in all, and one number at least (a transaction is never split).
    Numbers with no record rows (a batch of error rows, say) are passed over in it."""
    counts = " UNION ALL ".join(
        [
            *(
                f"SELECT {SEQ_COLUMN} AS s, count(*) AS n FROM {t.name} "
                f"WHERE {_IN_WINDOW} GROUP BY ALL"
                for t in SHIPPED_TABLES
            ),
            f"SELECT {SEQ_COLUMN} AS s, count(*) AS n FROM removed_rows "
            f"WHERE {_IN_WINDOW} GROUP BY ALL",
        ]
    )
    sql = f"SELECT s, sum(n)::BIGINT FROM ({counts}) GROUP BY s ORDER BY s"
    per_seq = cur.execute(sql, {"after": after, "upto": upto}).fetchall()
    total, end, last = 0, upto, None
    for seq, n in per_seq:
        if total and total + n > max_rows:
            end = seq - 1
            break
        total, last = total + n, seq
    return Window(after, end, total, last)


@dataclass
class Changes:
    """What one window changed in one table: the groups to replace on the team database and
    the rows that replace them."""

    table: ShippedTable
    groups: list[str]
    """Every group the window touched (its rows are deleted on the team database first)."""
    batches: Iterator[pa.RecordBatch]
    """The rows the index holds now for those groups, streamed."""


def read_changes(
    cur: duckdb.DuckDBPyConnection, window: Window, *, replace: bool = True
) -> Iterator[Changes]:
    """Each shipped table's `Changes` in ``window``, read through ``cur`` (which holds one
    transaction over the whole window, so every table is read at the same moment). A table's
    batches must be consumed before the next table is asked for.

    ``replace=False`` is for a server that holds none of the window's groups (a machine
    shipped from the start, up to the number it had reached then): only the window's rows
    are read, with no group list and no removals, whose rows (if any came back) carry a later
    number and come in a later window."""
    bounds = {"after": window.after, "upto": window.upto}
    for table in SHIPPED_TABLES:
        if not replace:
            sql = f"SELECT 1 FROM {table.name} WHERE {_IN_WINDOW} LIMIT 1"
            if cur.execute(sql, bounds).fetchall():
                yield Changes(table, [], _rows(cur, table, window, []))
            continue
        sql = f"SELECT DISTINCT {table.group}::VARCHAR FROM {table.name} WHERE {_IN_WINDOW}"
        found = cur.execute(sql, bounds).fetchall()
        removed = cur.execute(
            f"SELECT group_key FROM removed_rows WHERE table_name = $table AND {_IN_WINDOW}",
            {**bounds, "table": table.name},
        ).fetchall()
        if not found and not removed:
            continue
        touched = sorted({g for (g,) in found} | {g for (g,) in removed})
        yield Changes(table, touched, _rows(cur, table, window, [g for (g,) in removed]))


def _rows(
    cur: duckdb.DuckDBPyConnection, table: ShippedTable, window: Window, removed: list[str]
) -> Iterator[pa.RecordBatch]:
    """The window's rows of ``table``, then those of ``removed`` groups stamped outside it."""
    columns = ", ".join(f"{c}::VARCHAR AS {c}" if c in _JSON_COLUMNS else c for c in table.columns)
    select = f"SELECT {columns} FROM {table.name}"
    in_window = f"{SEQ_COLUMN} > ? AND {SEQ_COLUMN} <= ?"
    yield from _stream(cur, f"{select} WHERE {in_window}", [window.after, window.upto])
    if removed:
        where, params = one_of(table.group, removed)
        sql = f"{select} WHERE {where} AND NOT ({in_window})"
        yield from _stream(cur, sql, [*params, window.after, window.upto])


def _stream(
    cur: duckdb.DuckDBPyConnection, sql: str, params: list[object]
) -> Iterator[pa.RecordBatch]:
    reader = cur.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)
    for batch in reader or ():
        if batch.num_rows:
            yield _without_nul(batch)


def _without_nul(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with NUL characters taken out of its strings: PostgreSQL's text cannot hold
    them (OpenCode may store one in a tool's output), and one would fail the whole COPY."""
    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.replace_substring(column, "\x00", "")
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)
