"""Declarative database schema: tables, their columns and indexes, applied by `db.Database`.

New columns are added by appending them to a table's column list: start-up migration adds
missing columns with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`, so old databases upgrade in place.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 2
"""Version 1: the original `file_index` without status. Version 2: status, retries, record tables."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """SQL type plus constraints/default, e.g. ``"VARCHAR DEFAULT 'indexed'"``."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(index name, columns) pairs: non-unique indexes created if missing."""

    def create_sql(self) -> str:
        cols = ",\n  ".join(f"{c.name} {c.type}" for c in self.columns)
        pk = ", ".join(self.primary_key)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols},\n  PRIMARY KEY ({pk})\n)"


def _cols(*pairs: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(n, t) for n, t in pairs)


FILE_INDEX = Table(
    name="file_index",
    columns=_cols(
        # the v1 shape
        ("file_path", "VARCHAR"),
        ("file_type", "VARCHAR NOT NULL"),
        ("mtime", "DOUBLE NOT NULL"),
        ("size", "INTEGER NOT NULL"),
        ("record_id", "VARCHAR"),
        ("indexed_at", "TIMESTAMP"),
        ("error_message", "VARCHAR"),
        # v2
        ("status", "VARCHAR DEFAULT 'indexed'"),
        ("mtime_ns", "BIGINT"),  # exact st_mtime_ns; NULL on rows written by v1
        ("attempts", "INTEGER DEFAULT 0"),  # consecutive failed attempts on this version
        ("retry_after", "DOUBLE"),  # epoch seconds before which an error file is not retried
        ("updated_at", "TIMESTAMP"),  # last status change (indexed or error)
    ),
    primary_key=("file_path",),
    indexes=(("idx_file_index_status", ("status",)),),
)

RECORD_TABLES: tuple[Table, ...] = ()
"""Tables holding the OpenCode records; filled in by the record loading stage."""

ALL_TABLES: tuple[Table, ...] = (FILE_INDEX, *RECORD_TABLES)
