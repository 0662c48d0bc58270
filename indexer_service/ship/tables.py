"""Which tables and columns the sink ships, and their PostgreSQL types.

Every record table is shipped with its typed columns; ``raw`` (the whole OpenCode document,
with the full text of prompts and tool output) and ``file_path`` (a local path) stay on the
machine. Each shipped row gains ``machine_id``, so the key on PostgreSQL is the machine plus
the local key. The sink replaces rows by *group*: one record's row (``id``), or all the rows of
a list file (``session_id`` for todos and session diffs), so items that left a list go too.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexer_service.store.schema import RECORD_TABLES, SEQ_COLUMN, Table

__all__ = ["NOT_SHIPPED", "SHIPPED_TABLES", "ShippedTable", "pg_type"]

NOT_SHIPPED = frozenset({"raw", "file_path", SEQ_COLUMN})
"""Columns that never leave the machine."""

_PG_TYPES = {
    "VARCHAR": "text",
    "JSON": "text",  # JSON text; PostgreSQL's jsonb refuses \\u0000, which OpenCode may write
    "TIMESTAMP": "timestamp",  # naive UTC, as in the local index
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE": "double precision",
    "BOOLEAN": "boolean",
}


def pg_type(duckdb_type: str) -> str:
    """The PostgreSQL type for a column declared ``duckdb_type`` in `store.schema`."""
    return _PG_TYPES[duckdb_type.split()[0]]


@dataclass(frozen=True)
class ShippedTable:
    """One record table as the sink ships it."""

    name: str
    columns: tuple[str, ...]
    """The local columns shipped, in order (``machine_id`` comes before them on PostgreSQL)."""
    types: tuple[str, ...]
    """Their PostgreSQL types."""
    key: tuple[str, ...]
    """The local primary key; on PostgreSQL the key is ``machine_id`` and these."""
    group: str
    """The column whose value names what is replaced as one: ``id``, or ``session_id``."""


def _shipped(table: Table) -> ShippedTable:
    cols = [c for c in table.columns if c.name not in NOT_SHIPPED]
    group = table.primary_key[0] if len(table.primary_key) == 1 else "session_id"
    return ShippedTable(
        name=table.name,
        columns=tuple(c.name for c in cols),
        types=tuple(pg_type(c.type) for c in cols),
        key=table.primary_key,
        group=group,
    )


SHIPPED_TABLES: tuple[ShippedTable, ...] = tuple(_shipped(t) for t in RECORD_TABLES)
"""Every record table, in `store.schema.RECORD_TABLES` order."""
