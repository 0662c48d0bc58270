"""Bring a database file's schema up to date: tables, added columns, indexes, views, version.

Migrations only add: a new column is appended to its table's declaration in `schema` and added
here with ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, so old databases upgrade in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import structlog

from indexer_service.errors import SchemaVersionError
from indexer_service.store.schema import DROPPED_INDEXES, SCHEMA_VERSION, Table
from indexer_service.store.views import apply_views

__all__ = ["migrate", "read_version"]

log = structlog.get_logger(__name__)


def read_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open database (0: empty; 1: a `file_index` of version 1)."""
    has_meta = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_meta'"
    ).fetchall()
    if not has_meta[0][0]:
        has_fi = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'file_index'"
        ).fetchall()
        return 1 if has_fi[0][0] else 0
    row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchall()
    return int(row[0][0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection, path: Path, tables: Sequence[Table]) -> int:
    """Create what is missing and record the version; return it. An up-to-date database is
    not written to. Raises `SchemaVersionError` for a database of a newer indexer-service."""
    found = read_version(con)
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            path,
            f"schema version {found} is newer than this indexer-service supports "
            f"({SCHEMA_VERSION}); upgrade indexer-service",
        )
    changed = _migrate_columns(con, tables)
    changed = apply_views(con) or changed  # after the tables they read
    if found != SCHEMA_VERSION or changed:
        con.execute(
            "INSERT OR REPLACE INTO schema_meta VALUES ('schema_version', ?)",
            [str(SCHEMA_VERSION)],
        )
        # WAL replay of DDL has known DuckDB bugs; make every schema change durable at once.
        con.execute("CHECKPOINT")
        log.info("schema_migrated", db=str(path), from_version=found, to=SCHEMA_VERSION)
    return SCHEMA_VERSION


def _migrate_columns(con: duckdb.DuckDBPyConnection, tables: Sequence[Table]) -> bool:
    """Create missing tables, columns and indexes; return whether anything was added."""
    before = _schema_fingerprint(con)
    con.execute("CREATE TABLE IF NOT EXISTS schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for table in tables:
        con.execute(table.create_sql())
        for col in table.stored_columns:
            if col.name in table.primary_key:
                continue
            # DuckDB cannot add a NOT NULL column to an existing table; the constraint holds
            # for tables created with it, and columns added later are declared nullable.
            ctype = col.type.replace(" NOT NULL", "")
            con.execute(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {col.name} {ctype}")
        for name, cols in table.indexes:
            con.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table.name} ({', '.join(cols)})")
    for name in DROPPED_INDEXES:
        con.execute(f"DROP INDEX IF EXISTS {name}")
    return _schema_fingerprint(con) != before


def _schema_fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[object, ...]:
    cols = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() ORDER BY ALL"
    ).fetchall()
    idx = con.execute("SELECT index_name FROM duckdb_indexes() ORDER BY ALL").fetchall()
    return (tuple(cols), tuple(idx))
