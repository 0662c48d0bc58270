"""Comparing what the team database holds for a machine with what the index holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import duckdb
import psycopg
from conftest import LogEvents

from indexer_service import IndexerService
from indexer_service.ship.tables import SHIPPED_TABLES

Rows = dict[str, list[tuple[Any, ...]]]


def _normal(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value  # NaN == NaN


def local_rows(db: duckdb.DuckDBPyConnection) -> Rows:
    """Every shipped table's rows in the index, sorted, in the shipped columns."""
    out: Rows = {}
    for t in SHIPPED_TABLES:
        cols = ", ".join(f"{c}::VARCHAR" if c == "tool_input" else c for c in t.columns)
        rows = db.execute(f"SELECT {cols} FROM {t.name}").fetchall()
        out[t.name] = sorted((tuple(_normal(v) for v in r) for r in rows), key=repr)
    return out


def team_rows(url: str, machine_id: str) -> Rows:
    """Every shipped table's rows of ``machine_id`` on the team database, sorted."""
    out: Rows = {}
    with psycopg.connect(url) as pg:
        for t in SHIPPED_TABLES:
            cols = ", ".join(t.columns)
            rows = pg.execute(
                f"SELECT {cols} FROM {t.name} WHERE machine_id = %s", [machine_id]
            ).fetchall()
            out[t.name] = sorted((tuple(_normal(v) for v in r) for r in rows), key=repr)
    return out


def index_rows(db_path: Path) -> Rows:
    """`local_rows` of a closed index file."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        return local_rows(con)


async def service_rows(svc: IndexerService) -> Rows:
    """`local_rows` of a running service's index, read off the event loop."""

    def read() -> Rows:
        cur = svc.db.own_cursor()
        try:
            return local_rows(cur)
        finally:
            cur.close()

    return await anyio.to_thread.run_sync(read)


async def until_logged(
    events: LogEvents, name: str, cond: Callable[[], bool], timeout: float = 60
) -> None:
    """Return once ``cond()`` holds, checked now and after each ``name`` event logged."""
    with anyio.fail_after(timeout):
        while not cond():
            await events.wait_for(name, events.counts[name] + 1)


async def shipped_everything(svc: IndexerService, timeout: float = 30) -> None:
    """Wait until the service's sink has shipped every change the index holds now."""
    with anyio.fail_after(timeout):
        await svc.drain()
        await svc.wait_until_shipped()
