"""The values passed between the pipeline's stages, whatever source fed them.

A source reports *keys* (for the JSON tree: file paths) that may have changed; the accumulator
groups them into a `Batch`; a worker hands the batch to its source, which reads and writes it
and answers with a `BatchResult`; a reconciliation pass answers with a `ScanReport`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

Trigger = Literal["size", "timer", "force", "stop"]
"""Why a batch was sealed: full, its window elapsed, a flush was asked for, or shutdown."""

Emit = Callable[[list[str]], Awaitable[None]]
"""How a source hands keys to the pipeline (the accumulator's ``add_many``)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Keys for one worker. ``first_added`` is the clock time the oldest of them arrived;
    ``merged`` counts the sealed batches coalesced into this one."""

    keys: tuple[str, ...]
    trigger: Trigger
    first_added: float
    merged: int = 1


@dataclass(frozen=True)
class BatchResult:
    """What one batch did; the seconds are wall time of each phase."""

    indexed: int
    errors: int
    deleted: int
    skipped: int
    requeue: list[str]
    """Keys that changed while read (or before their write): add them again."""
    read_seconds: float
    parse_seconds: float
    write_seconds: float
    by_type: dict[str, int]
    """Records indexed per record type."""

    @property
    def files(self) -> int:
        return self.indexed + self.errors + self.deleted + self.skipped + len(self.requeue)

    def __add__(self, other: BatchResult) -> BatchResult:
        """Both results as one (a batch written in parts)."""
        by_type = dict(self.by_type)
        for kind, n in other.by_type.items():
            by_type[kind] = by_type.get(kind, 0) + n
        return BatchResult(
            indexed=self.indexed + other.indexed,
            errors=self.errors + other.errors,
            deleted=self.deleted + other.deleted,
            skipped=self.skipped + other.skipped,
            requeue=[*self.requeue, *other.requeue],
            read_seconds=self.read_seconds + other.read_seconds,
            parse_seconds=self.parse_seconds + other.parse_seconds,
            write_seconds=self.write_seconds + other.write_seconds,
            by_type=by_type,
        )


SCAN_KINDS = ("new", "modified", "retried", "pending", "deleted")
"""What a reconciliation pass can find out of sync."""


@dataclass(frozen=True)
class ScanReport:
    """One reconciliation pass: how many keys of each kind it handed on, and how long it took."""

    full: bool
    duration_s: float
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCAN_KINDS, 0))

    @property
    def missing(self) -> int:
        """Keys to (re)load: everything found but the deletions."""
        return sum(n for kind, n in self.counts.items() if kind != "deleted")
