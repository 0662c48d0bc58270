"""Read-only queries on the team database: `pg_query_fn`, a `read.query.QueryFn` for PostgreSQL.

The reports' SQL is written for the local index (DuckDB, ``$name`` parameters); the function
rewrites it (`pg_dialect.to_postgres`, `pg_dialect.bind_named`) and runs it in a read-only
transaction under a statement timeout, so the reports run unchanged on either database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import psycopg

from indexer_service.errors import QueryFailed, QueryRefused, QueryTimeout
from indexer_service.read.query import DEFAULT_MAX_ROWS, Params, QueryFn, QueryResult
from indexer_service.ship.pg_dialect import bind_named, to_postgres

__all__ = ["pg_query_fn"]


def pg_query_fn(
    con: psycopg.Connection[Any], *, max_rows: int = DEFAULT_MAX_ROWS, timeout_s: float = 30.0
) -> QueryFn:
    """A query function on ``con``: each query in a read-only transaction of its own, stopped
    by the server after ``timeout_s``; at most ``max_rows`` rows (``truncated`` says more
    existed). Parameters are named (``$name``, given as a mapping) and passed as text."""
    con.execute(
        "SELECT set_config('default_transaction_read_only', 'on', false), "
        "set_config('statement_timeout', %s, false)",
        [f"{max(1, round(timeout_s * 1000))}ms"],
    )
    if not con.autocommit:
        con.commit()

    def query(sql: str, params: Params) -> QueryResult:
        if params is not None and not isinstance(params, Mapping):
            raise QueryRefused("the team database takes named parameters ($name) only")
        statement = to_postgres(sql)
        args = dict(params) if params is not None else None
        if args is not None:
            statement = bind_named(statement)
        started = time.perf_counter()
        try:
            with con.transaction():
                cur = con.execute(statement, args)
                description = cur.description or []
                rows = cur.fetchmany(max_rows + 1)
        except psycopg.errors.QueryCanceled:
            raise QueryTimeout(f"query stopped after its time limit of {timeout_s:g} s") from None
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise QueryRefused(f"the query tried to write: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise QueryFailed(_first_line(exc)) from None
        return QueryResult(
            columns=tuple(d.name for d in description),
            types=tuple(_type_name(con, d.type_code) for d in description),
            rows=[tuple(r) for r in rows[:max_rows]],
            truncated=len(rows) > max_rows,
            elapsed_s=time.perf_counter() - started,
        )

    return query


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), repr(exc))


def _type_name(con: psycopg.Connection[Any], oid: int) -> str:
    info = con.adapters.types.get(oid)
    if info is None:
        return str(oid)
    return f"{info.name}[]" if oid == info.array_oid else info.name
