"""The PostgreSQL sink: ships the index's record tables to a shared PostgreSQL, per machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer_service.ship.sink import Sink

__all__ = ["load_sink"]


def load_sink() -> type[Sink]:
    """The `Sink` class, imported on first use: psycopg and libpq load only with a sink."""
    from indexer_service.ship.sink import Sink

    return Sink
