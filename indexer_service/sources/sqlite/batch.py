"""The values of a database batch: its keys (`DbKeys`) and what a poll read (`DbPrepared`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

__all__ = ["DbKeys", "DbPrepared"]


@dataclass(frozen=True)
class DbKeys:
    """The keys of one database: ``<prefix>poll`` and ``<prefix><kind>:<id>``."""

    prefix: str

    @property
    def poll(self) -> str:
        return self.prefix + "poll"

    def row(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(kind, id) of a row key; None for the poll key."""
        kind, _, ident = key[len(self.prefix) :].partition(":")
        return (kind, ident) if ident else None


@dataclass
class DbPrepared:
    """One batch read and extracted, not yet written."""

    rows: dict[str, pa.Table] = field(default_factory=dict)
    indexed: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[str, list[tuple[str, int, str]]] = field(default_factory=lambda: defaultdict(list))
    deleted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    state: dict[str, int] = field(default_factory=dict)
    """Cursors to save with this batch."""
    claimed_from: dict[str, int] | None = None
    """The cursors before this batch's poll claimed its rows (restored if the write fails)."""
    requeue: list[str] = field(default_factory=list)
    follow: list[str] = field(default_factory=list)
    """The poll key when more rows wait: read them while this batch is written."""
    generation: int = 0
    """The loader's write generation when this batch's poll claimed its rows."""
    read_seconds: float = 0.0
    parse_seconds: float = 0.0
