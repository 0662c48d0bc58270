"""A team database filled from a local index, as the sink would leave it: the rows of the
shipped tables copied once per machine id, with the same OpenCode ids on every machine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from indexer_service.ship.pg_schema import ensure_schema
from indexer_service.ship.tables import SHIPPED_TABLES
from indexer_service.store.database import Database

HOSTS = {"m1": "laptop-ada", "m2": "desktop-bob"}
"""The machines of the team database and their hostnames."""


def fill(db_path: Path, url: str, machines: Sequence[str] = tuple(HOSTS)) -> None:
    """Create the schema at ``url`` and copy every shipped row of ``db_path`` in for each of
    ``machines``; record the machines in indexer_machines."""
    with Database(db_path, read_only=True) as db, psycopg.connect(url) as pg:
        ensure_schema(pg)
        cur = db.cursor()
        for t in SHIPPED_TABLES:
            cols = ", ".join(t.columns)
            rows = cur.execute(f"SELECT {cols} FROM {t.name}").fetchall()
            with pg.cursor() as pg_cur:
                for machine in machines:
                    with pg_cur.copy(f"COPY {t.name} (machine_id, {cols}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row((machine, *row))
        for n, machine in enumerate(machines):
            pg.execute(
                "INSERT INTO indexer_machines (machine_id, hostname, epoch, shipped_seq, "
                "shipped_at) VALUES (%s, %s, 'e1', %s, '2025-11-06 12:00:00+00')",
                [machine, HOSTS.get(machine), 100 + n],
            )


def _key(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else repr(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            a is not None
            and b is not None
            and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_same_rows(got: Sequence[Sequence[Any]], want: Sequence[Sequence[Any]]) -> None:
    """The same rows in any order; floats equal but for the last bits (sums in other orders)."""
    assert len(got) == len(want)
    got_sorted = sorted(got, key=lambda r: tuple(map(_key, r)))
    want_sorted = sorted(want, key=lambda r: tuple(map(_key, r)))
    for g, w in zip(got_sorted, want_sorted, strict=True):
        assert _same(list(g), list(w)), f"{g} != {w}"
