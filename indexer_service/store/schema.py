"""Declarative database schema: tables, their columns and indexes, applied by `migrate.migrate`.

New columns are added by appending them to a table's column list: start-up migration adds
missing columns with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`, so old databases upgrade in place.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 6
"""Version 1: the original `file_index` without status. Version 2: status, retries, record tables.
3: analytics views (`views.py`). 4: no index on `file_index.status`. 5: `row_index` and
`source_state` (the SQLite source's progress). 6: `change_seq` on the record tables and
`removed_rows` (the change feed, `changes.py`)."""

SEQ_COLUMN = "change_seq"
"""The column of every record table holding the number of the transaction that wrote the row
(`changes.ChangeSequence`; 0 on rows written before version 6)."""

DROPPED_INDEXES = ("idx_file_index_status",)
"""Indexes of earlier versions that start-up migration drops. An ART index on a column of two
values made every re-index of a file (an upsert deletes and re-inserts its key) cost ~5 ms more
per 100-file batch, and DuckDB's zone maps already answer ``WHERE status = 'error'``."""


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
    numbered: bool = False
    """Whether the table has the change number column (`SEQ_COLUMN`) after its columns; it is
    not among `columns`, which are what a record's extraction fills."""

    @property
    def stored_columns(self) -> tuple[Column, ...]:
        """The columns in the database file: `columns`, then the change number if numbered."""
        if self.numbered:
            return (*self.columns, Column(SEQ_COLUMN, "BIGINT DEFAULT 0"))
        return self.columns

    def create_sql(self) -> str:
        cols = ",\n  ".join(f"{c.name} {c.type}" for c in self.stored_columns)
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
)

# Record tables: one row per record file (per array item for todos and session_diffs). Column
# meanings are in docs/schema.md; `extract/specs.py` holds the SQL that fills each column. Ids of parents
# come from the path (`Location.parent`); `raw` is the whole document (the item for arrays), so
# fields without a column stay queryable. Times are UTC TIMESTAMPs, durations milliseconds.
RECORD_TABLES: tuple[Table, ...] = (
    Table(
        name="projects",
        columns=_cols(
            ("id", "VARCHAR NOT NULL"),
            ("worktree", "VARCHAR"),
            ("vcs", "VARCHAR"),
            ("name", "VARCHAR"),
            ("created_at", "TIMESTAMP"),
            ("updated_at", "TIMESTAMP"),
            ("initialized_at", "TIMESTAMP"),
            ("file_path", "VARCHAR"),
            ("raw", "JSON"),
        ),
        primary_key=("id",),
        numbered=True,
    ),
    Table(
        name="sessions",
        columns=_cols(
            ("id", "VARCHAR NOT NULL"),
            ("project_id", "VARCHAR"),  # from the directory, not the JSON
            ("parent_id", "VARCHAR"),
            ("slug", "VARCHAR"),
            ("version", "VARCHAR"),
            ("title", "VARCHAR"),
            ("directory", "VARCHAR"),
            ("created_at", "TIMESTAMP"),
            ("updated_at", "TIMESTAMP"),
            ("compacting_at", "TIMESTAMP"),
            ("archived_at", "TIMESTAMP"),
            ("additions", "BIGINT"),
            ("deletions", "BIGINT"),
            ("files_changed", "BIGINT"),
            ("share_url", "VARCHAR"),
            ("file_path", "VARCHAR"),
            ("raw", "JSON"),
        ),
        primary_key=("id",),
        numbered=True,
    ),
    Table(
        name="messages",
        columns=_cols(
            ("id", "VARCHAR NOT NULL"),
            ("session_id", "VARCHAR"),  # from the directory
            ("role", "VARCHAR"),
            ("parent_id", "VARCHAR"),
            ("agent", "VARCHAR"),
            ("mode", "VARCHAR"),
            ("provider_id", "VARCHAR"),
            ("model_id", "VARCHAR"),
            ("variant", "VARCHAR"),
            ("created_at", "TIMESTAMP"),
            ("completed_at", "TIMESTAMP"),
            ("duration_ms", "BIGINT"),
            ("cost", "DOUBLE"),
            *(
                (f"tokens_{k}", "BIGINT")
                for k in ("total", "input", "output", "reasoning", "cache_read", "cache_write")
            ),
            ("finish", "VARCHAR"),
            ("error_name", "VARCHAR"),
            ("error_message", "VARCHAR"),
            ("is_summary", "BOOLEAN"),
            ("title", "VARCHAR"),
            ("cwd", "VARCHAR"),
            ("root", "VARCHAR"),
            ("file_path", "VARCHAR"),
            ("raw", "JSON"),
        ),
        primary_key=("id",),
        numbered=True,
    ),
    Table(
        name="parts",
        columns=_cols(
            ("id", "VARCHAR NOT NULL"),
            ("message_id", "VARCHAR"),  # from the directory
            ("session_id", "VARCHAR"),
            ("type", "VARCHAR"),
            ("synthetic", "BOOLEAN"),
            ("call_id", "VARCHAR"),
            ("tool", "VARCHAR"),
            ("tool_status", "VARCHAR"),
            ("tool_input", "JSON"),
            ("title", "VARCHAR"),
            ("error", "VARCHAR"),
            ("start_at", "TIMESTAMP"),
            ("end_at", "TIMESTAMP"),
            ("compacted_at", "TIMESTAMP"),
            ("duration_ms", "BIGINT"),
            ("reason", "VARCHAR"),
            ("cost", "DOUBLE"),
            *(
                (f"tokens_{k}", "BIGINT")
                for k in ("total", "input", "output", "reasoning", "cache_read", "cache_write")
            ),
            ("snapshot", "VARCHAR"),
            ("task_session_id", "VARCHAR"),
            ("subagent_type", "VARCHAR"),
            ("prompt", "VARCHAR"),
            ("description", "VARCHAR"),
            ("command", "VARCHAR"),
            ("agent", "VARCHAR"),
            ("mime", "VARCHAR"),
            ("filename", "VARCHAR"),
            ("file_path", "VARCHAR"),
            ("raw", "JSON"),
        ),
        primary_key=("id",),
        numbered=True,
    ),
    Table(
        name="todos",
        columns=_cols(
            ("session_id", "VARCHAR NOT NULL"),  # from the file name
            ("position", "INTEGER NOT NULL"),
            ("id", "VARCHAR"),
            ("content", "VARCHAR"),
            ("status", "VARCHAR"),
            ("priority", "VARCHAR"),
            ("file_path", "VARCHAR"),
            ("raw", "JSON"),
        ),
        primary_key=("session_id", "position"),
        numbered=True,
    ),
    Table(
        name="session_diffs",
        columns=_cols(
            ("session_id", "VARCHAR NOT NULL"),  # from the file name
            ("file", "VARCHAR NOT NULL"),
            ("position", "INTEGER"),
            ("status", "VARCHAR"),
            ("additions", "BIGINT"),
            ("deletions", "BIGINT"),
            ("file_path", "VARCHAR"),
            ("raw", "JSON"),
        ),
        primary_key=("session_id", "file"),
        numbered=True,
    ),
)
"""Tables holding the OpenCode records, filled by the sources with rows from `extract`."""

ROW_INDEX = Table(
    name="row_index",
    columns=_cols(
        ("source", "VARCHAR NOT NULL"),  # the database file the row came from
        ("kind", "VARCHAR NOT NULL"),  # project, session, message, part, todo
        ("id", "VARCHAR NOT NULL"),  # the OpenCode id (the session id for todo)
        ("version", "BIGINT"),  # time_updated (ms), or a checksum of the row where that lies
        ("status", "VARCHAR"),  # indexed or error
        ("error_message", "VARCHAR"),
        ("attempts", "INTEGER DEFAULT 0"),  # consecutive failed attempts on this version
        ("retry_after", "DOUBLE"),  # epoch seconds before which an error row is not retried
        ("updated_at", "TIMESTAMP"),
    ),
    primary_key=("source", "kind", "id"),
)
"""What the SQLite source knows of each row it read: the `file_index` of a database."""

SOURCE_STATE = Table(
    name="source_state",
    columns=_cols(
        ("source", "VARCHAR NOT NULL"),
        ("key", "VARCHAR NOT NULL"),  # e.g. part.rowid, part.watermark
        ("value", "BIGINT"),
        ("updated_at", "TIMESTAMP"),
    ),
    primary_key=("source", "key"),
)
"""A source's cursors, written in the same transaction as the rows they cover."""

REMOVED_ROWS = Table(
    name="removed_rows",
    columns=_cols(
        ("table_name", "VARCHAR NOT NULL"),  # a record table
        ("change_seq", "BIGINT NOT NULL"),  # the transaction that removed them
        ("group_key", "VARCHAR NOT NULL"),  # the id, or the session_id of a list's rows
    ),
    primary_key=("table_name", "group_key"),
)
"""Groups of record rows removed for good, with the number of the transaction that removed
them: what the change feed (`changes.py`) cannot read off the rows, since they are gone."""

ALL_TABLES: tuple[Table, ...] = (
    FILE_INDEX,
    *RECORD_TABLES,
    ROW_INDEX,
    SOURCE_STATE,
    REMOVED_ROWS,
)
