"""Writing to the team database: a machine's position, and one window per transaction.

The position (``indexer_machines``: the index's epoch and the last change number shipped) is
written in the same transaction as the window's rows, so PostgreSQL itself says how far a
machine got: after a crash of either side the sink reads it back and ships the next window,
never one twice in effect (shipping a window again replaces groups by the same rows). The
position moves only from the value the sink read (compare and set), so two services that
claim one machine id cannot interleave their windows unnoticed.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv

from indexer_service._version import __version__
from indexer_service.ship.feed import Changes, Window
from indexer_service.ship.tables import SHIPPED_TABLES

__all__ = ["Position", "PositionLost", "Shipped", "read_position", "restart", "ship_window"]

_CSV = pcsv.WriteOptions(include_header=False, quoting_style="needed")
"""Strings quoted (so an empty one is not NULL), NULL as an empty field: COPY's CSV format."""


class PositionLost(Exception):
    """The machine's position on the team database is not the one this sink read: another
    service ships under the same machine id, or the machine was reset there."""


@dataclass(frozen=True)
class Position:
    """How far a machine's shipment got: the index it ships (its epoch) and the number."""

    epoch: str
    shipped: int


@dataclass(frozen=True)
class Shipped:
    """What one window did on the team database."""

    rows: int
    groups: int


def read_position(pg: psycopg.Connection[Any], machine_id: str) -> Position | None:
    """The machine's position, or None if it never shipped to this database."""
    row = pg.execute(
        "SELECT epoch, shipped_seq FROM indexer_machines WHERE machine_id = %s", [machine_id]
    ).fetchone()
    pg.commit()
    return None if row is None else Position(str(row[0]), int(row[1]))


def restart(pg: psycopg.Connection[Any], machine_id: str, epoch: str) -> Position:
    """Start the machine over on the team database, in one transaction: its rows of an
    earlier index (another epoch) are deleted and its position set to before the first
    change, so every row of this index is shipped."""
    with pg.transaction():
        for table in SHIPPED_TABLES:
            pg.execute(f"DELETE FROM {table.name} WHERE machine_id = %s", [machine_id])
        pg.execute(
            """
            INSERT INTO indexer_machines
              (machine_id, hostname, epoch, shipped_seq, indexer_version)
            VALUES (%s, %s, %s, -1, %s)
            ON CONFLICT (machine_id) DO UPDATE SET
              hostname = excluded.hostname, epoch = excluded.epoch, shipped_seq = -1,
              shipped_at = now(), first_shipped_at = now(),
              indexer_version = excluded.indexer_version
            """,
            [machine_id, socket.gethostname(), epoch, __version__],
        )
    return Position(epoch, -1)


def ship_window(
    pg: psycopg.Connection[Any],
    machine_id: str,
    position: Position,
    window: Window,
    changes: Iterable[Changes],
) -> Shipped:
    """Replace every group ``changes`` touched by its rows (a change that names no groups is
    COPY alone), and move the position to the last number of ``window`` that stamped
    something, in one transaction. Raises `PositionLost` (and writes nothing) if the position
    is no longer ``position``."""
    assert window.last is not None, "a window that changed nothing is not shipped"
    rows = groups = 0
    with pg.transaction():
        for change in changes:
            table = change.table
            if change.groups:
                pg.execute(
                    f"DELETE FROM {table.name} WHERE machine_id = %s AND {table.group} = ANY(%s)",
                    [machine_id, change.groups],
                )
            groups += len(change.groups)
            columns = ", ".join(("machine_id", *table.columns))
            with pg.cursor().copy(f"COPY {table.name} ({columns}) FROM STDIN (FORMAT csv)") as cp:
                for batch in change.batches:
                    cp.write(_csv(batch, machine_id))
                    rows += batch.num_rows
        moved = pg.execute(
            """
            UPDATE indexer_machines SET shipped_seq = %s, shipped_at = now()
            WHERE machine_id = %s AND epoch = %s AND shipped_seq = %s
            """,
            [window.last, machine_id, position.epoch, position.shipped],
        )
        if moved.rowcount != 1:
            raise PositionLost(machine_id)
    return Shipped(rows, groups)


def _csv(batch: pa.RecordBatch, machine_id: str) -> bytes:
    """``batch`` as COPY's CSV, with ``machine_id`` as its first column."""
    machine = pa.repeat(pa.scalar(machine_id, pa.string()), batch.num_rows)
    tagged = pa.RecordBatch.from_arrays(
        [machine, *batch.columns], names=["machine_id", *batch.schema.names]
    )
    out = io.BytesIO()
    pcsv.write_csv(tagged, out, _CSV)
    return out.getvalue()
