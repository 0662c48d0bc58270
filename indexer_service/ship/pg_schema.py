"""The team database's schema, created and migrated by `ensure_schema` under an advisory lock.

On the server (in the connection's current schema): ``indexer_schema`` (one row per version the
server moved to), one table per `tables.SHIPPED_TABLES` entry keyed by ``machine_id`` and the
local key, ``indexer_machines`` (which machines ship, written by the sink), and `PG_VIEWS`.

Migrations only add, as the local index's (`store.migrate`): a column appended to a record table
in `store.schema` is shipped and added here with ``ADD COLUMN IF NOT EXISTS``; a version that
needs more appends its statements to `_STEPS`. Any change of the tables or the views bumps
`PG_SCHEMA_VERSION`, so an older indexer-service refuses a server it can no longer fill
(tests/ship pins the schema of each version).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from indexer_service.errors import ShipError
from indexer_service.ship.pg_views import PG_VIEWS, PG_VIEWS_DIGEST
from indexer_service.ship.tables import SHIPPED_TABLES, ShippedTable

__all__ = ["PG_SCHEMA_VERSION", "PG_TABLES", "PgTable", "describe", "ensure_schema"]

log = structlog.get_logger(__name__)

PG_SCHEMA_VERSION = 1
"""Version 1: the record tables, ``indexer_machines`` and the views of `PG_VIEWS`."""

_STEPS: dict[int, tuple[str, ...]] = {}
"""Statements run once as a server moves up to a version, after the tables and views are
brought up to date (none yet: version 1 is the first)."""

_LOCK_KEY = int.from_bytes(hashlib.sha256(b"indexer-service schema").digest()[:8], signed=True)
"""The transaction-level advisory lock every `ensure_schema` takes first."""

_VIEW_COMMENT = "indexer-service views "


@dataclass(frozen=True)
class PgTable:
    """One table of the team database: (column, type) pairs, primary key, extra indexes."""

    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    def create_sql(self) -> str:
        cols = ",\n  ".join(f"{name} {decl}" for name, decl in self.columns)
        return f"CREATE TABLE {self.name} (\n  {cols},\n  PRIMARY KEY ({', '.join(self.primary_key)})\n)"

    def index_name(self, columns: tuple[str, ...]) -> str:
        return f"{self.name}_{'_'.join(columns)}_idx"


def _record_table(t: ShippedTable) -> PgTable:
    # the sink deletes ``WHERE machine_id = $1 AND <group> = ANY($2)``: the key serves it when
    # it starts with the group, else an index of its own does
    group_index = () if t.key[0] == t.group else (("machine_id", t.group),)
    return PgTable(
        name=t.name,
        columns=(("machine_id", "text NOT NULL"), *zip(t.columns, t.types, strict=True)),
        primary_key=("machine_id", *t.key),
        indexes=group_index,
    )


PG_TABLES: tuple[PgTable, ...] = (
    PgTable(
        "indexer_schema",
        (("version", "integer NOT NULL"), ("applied_at", "timestamptz NOT NULL DEFAULT now()")),
        ("version",),
    ),
    *(_record_table(t) for t in SHIPPED_TABLES),
    PgTable(
        "indexer_machines",
        (
            ("machine_id", "text"),
            ("hostname", "text"),
            ("epoch", "text NOT NULL"),
            ("shipped_seq", "bigint NOT NULL"),
            ("shipped_at", "timestamptz NOT NULL DEFAULT now()"),
            ("first_shipped_at", "timestamptz NOT NULL DEFAULT now()"),
            ("indexer_version", "text"),
        ),
        ("machine_id",),
    ),
)
"""Every table `ensure_schema` keeps, the version table first."""


def describe(con: psycopg.Connection[Any]) -> str:
    """The server of ``con`` for messages: database, host and port (never a password)."""
    info = con.info
    return f"database {info.dbname} on {info.host}:{info.port}"


def ensure_schema(con: psycopg.Connection[Any]) -> int:
    """Create or migrate the team database's schema in one transaction (a savepoint inside
    one already open) and return `PG_SCHEMA_VERSION`; an up-to-date server is only read.
    Two machines starting at once queue on an advisory lock. Raises `ShipError` when the
    server's schema is newer than this code, or the server refuses a statement."""
    try:
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            found = _version(con)
            if found > PG_SCHEMA_VERSION:
                raise ShipError(
                    f"the team {describe(con)} has schema version {found}, newer than this "
                    f"indexer-service supports ({PG_SCHEMA_VERSION}): upgrade indexer-service"
                )
            added = _ensure_tables(con)
            views = _ensure_views(con)
            if found < PG_SCHEMA_VERSION:
                for version in range(found + 1, PG_SCHEMA_VERSION + 1):
                    for statement in _STEPS.get(version, ()):
                        con.execute(statement)
                con.execute("INSERT INTO indexer_schema (version) VALUES (%s)", [PG_SCHEMA_VERSION])
            if found < PG_SCHEMA_VERSION or added or views:
                log.info(
                    "pg_schema_migrated", server=describe(con), from_version=found,
                    to=PG_SCHEMA_VERSION, added=added, views_created=views,
                )  # fmt: skip
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise ShipError(f"the team {describe(con)} refused the schema: {reason}") from None
    return PG_SCHEMA_VERSION


def _version(con: psycopg.Connection[Any]) -> int:
    """The newest version recorded on the server; 0 if it has no schema yet."""
    exists = con.execute("SELECT to_regclass('indexer_schema') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return 0
    row = con.execute("SELECT coalesce(max(version), 0) FROM indexer_schema").fetchone()
    return int(row[0]) if row else 0


def _ensure_tables(con: psycopg.Connection[Any]) -> list[str]:
    """Create missing tables, columns and indexes; return what was added (``table.column``)."""
    names = [t.name for t in PG_TABLES]
    have: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT c.relname, a.attname FROM pg_class c "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
        "AND c.relname = ANY(%s)",
        [names],
    ):
        have.setdefault(table, set()).add(column)
    indexes = {
        r[0]
        for r in con.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    }
    added: list[str] = []
    for table in PG_TABLES:
        if table.name not in have:
            con.execute(table.create_sql())
            added.append(table.name)
        else:
            for name, decl in table.columns:
                if name not in have[table.name]:  # a column of a newer version
                    nullable = decl.replace(" NOT NULL", "") if "DEFAULT" not in decl else decl
                    con.execute(
                        f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {name} {nullable}"
                    )
                    added.append(f"{table.name}.{name}")
        for cols in table.indexes:
            if table.index_name(cols) not in indexes:
                con.execute(
                    f"CREATE INDEX IF NOT EXISTS {table.index_name(cols)} "
                    f"ON {table.name} ({', '.join(cols)})"
                )
                added.append(table.index_name(cols))
    return added


def _ensure_views(con: psycopg.Connection[Any]) -> bool:
    """(Re)create the views unless all exist with this code's SQL; return whether any was."""
    names = [name for name, _ in PG_VIEWS]
    comments = dict(
        con.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'v' "
            "AND c.relname = ANY(%s)",
            [names],
        ).fetchall()
    )
    stamp = _VIEW_COMMENT + PG_VIEWS_DIGEST
    if all(comments.get(name) == stamp for name in names):
        return False
    # dropped first: CREATE OR REPLACE VIEW cannot remove or reorder columns
    con.execute(f"DROP VIEW IF EXISTS {', '.join(reversed(names))}")
    for name, sql in PG_VIEWS:
        con.execute(f"CREATE VIEW {name} AS {sql}")
        con.execute(f"COMMENT ON VIEW {name} IS '{stamp}'")
    return True
