"""The read-only guard: which SQL may run against the live index, decided by DuckDB's parser.

`check_read_only` accepts exactly one ``SELECT`` (``duckdb.extract_statements``) whose syntax
tree (``json_serialize_sql``) calls only allow-listed table functions (no ``read_*``, ``glob``,
``query``, ``checkpoint``...), no scalar function with side effects, and names no file as a
table (``FROM 'x.csv'``). It is the first of three fences; `query.run_query` adds the other two
(a read-only transaction, and no external access on the database).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from indexer_service.errors import QueryFailed, QueryRefused

__all__ = ["ALLOWED_TABLE_FUNCTIONS", "DENIED_FUNCTIONS", "check_read_only", "first_line"]

# Table functions a read of the index may use: generators, JSON helpers, catalog metadata.
# Everything else is refused: file readers (read_*, glob, sniff_csv, parquet_*), dynamic SQL
# (query, query_table, json_execute_serialized_sql), and functions with effects (checkpoint,
# enable_logging, *_external_resource, truncate_duckdb_logs, duckdb_secrets, duckdb_extensions).
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "summary", "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies",
    "duckdb_functions", "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_sequences",
    "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info", "pragma_show",
    "pragma_database_size", "pragma_storage_info", "pragma_version", "pragma_platform",
})  # fmt: skip
# Scalar functions with side effects on the database or the session (duckdb_functions()
# has_side_effects, minus harmless ones: random, uuid, error, sleep_ms, current_query...).
DENIED_FUNCTIONS = frozenset({"nextval", "setval", "currval", "setseed", "write_log"})


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _serialize(sql: str) -> dict[str, Any]:
    """``json_serialize_sql`` on a private in-memory DuckDB with no external access."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config={"enable_external_access": False})
        cur = _parser.cursor()
    try:
        row = cur.execute("SELECT json_serialize_sql($sql::VARCHAR)", {"sql": sql}).fetchall()
    finally:
        cur.close()
    tree: dict[str, Any] = json.loads(row[0][0])
    return tree


def check_read_only(sql: str) -> None:
    """Raise `QueryRefused` unless ``sql`` is one SELECT that only reads the index's tables
    (`QueryFailed` if it does not parse)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.ParserException as exc:
        raise QueryFailed(first_line(exc)) from None
    except ValueError as exc:  # a statement type the Python binding does not know
        raise QueryRefused(
            f"unsupported statement ({exc}); only a single SELECT is allowed"
        ) from None
    if len(statements) != 1:
        raise QueryRefused(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"{kind.name} statements are not allowed: only a single SELECT")
    tree = _serialize(sql)
    if tree.get("error"):
        raise QueryRefused(
            f"this form of SELECT cannot be checked ({tree.get('error_message')}); "
            "write it as a plain SELECT"
        )
    for node in _walk(tree["statements"]):
        _check_node(node)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_node(node: dict[str, Any]) -> None:
    kind = node.get("type")
    if kind == "TABLE_FUNCTION":
        name = str(node["function"]["function_name"]).lower()
        if name not in ALLOWED_TABLE_FUNCTIONS:
            raise QueryRefused(
                f"table function {name}() is not allowed: queries may read only the index "
                "(no files, no dynamic SQL, no side effects)"
            )
        node["function"]["_table"] = True  # the walk reaches this function node next
    elif kind == "BASE_TABLE":
        name = str(node.get("table_name", ""))
        if any(c in name for c in "/\\:."):  # FROM 'x.csv' is a replacement scan of a file
            raise QueryRefused(f"{name!r} is not a table of the index (files cannot be read)")
    elif "function_name" in node and not node.get("_table"):
        name = str(node["function_name"]).lower()
        if name in DENIED_FUNCTIONS or name.startswith("read_") or "glob" in name:
            raise QueryRefused(f"function {name}() is not allowed in a read-only query")


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
