"""The shape of a tree to generate (``TreeSpec``) and what was written (``TreeSummary``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASE_TIME_MS = 1_760_000_000_000
"""2025-10-09. IDs keep creation order until the 48-bit wrap on 2026-08-14 (~300 days later)."""


@dataclass(frozen=True)
class TreeSpec:
    """Shape of a generated tree; the defaults follow the real-world averages of spec §6."""

    sessions: int = 10
    """Top-level sessions; sub-agent children come on top (see ``subagent_ratio``)."""
    seed: int = 0
    messages_per_session: float = 49.0
    """Mean messages per session, children included (about 265 files per session)."""
    subagent_ratio: float = 0.2
    """Approximate share of all sessions that are sub-agent (task tool) children."""
    crashed_ratio: float = 0.05
    """Share of top-level sessions whose last step was cut off (running/pending tools)."""
    error_ratio: float = 0.03
    """Share of user turns whose last assistant message ends in an error."""
    compact_ratio: float = 0.05
    """Share of top-level sessions written as one-line JSON (migrated from 0.x)."""
    share_ratio: float = 0.05
    """Share of top-level sessions that were shared (``share.url`` + ``session_share/``)."""
    projects: int = 3
    """Git projects; a ``global`` project is always added."""
    base_time_ms: int = DEFAULT_BASE_TIME_MS
    max_files: int | None = None
    """Start no new top-level session once this many files are written."""

    @classmethod
    def for_file_count(cls, files: int, seed: int = 0, **overrides: Any) -> TreeSpec:
        """A spec for about ``files`` files (it overshoots by less than one session tree)."""
        return cls(sessions=max(files, 1), seed=seed, max_files=files, **overrides)


@dataclass(frozen=True)
class TreeSummary:
    """What ``generate_tree`` wrote."""

    root: Path
    counts: Mapping[str, int]
    """Files by kind: project, session, message, part, todo, session_diff, other."""
    bytes: int
    session_ids: tuple[str, ...]
    """All sessions, sub-agent children included, in creation order."""

    @property
    def files(self) -> int:
        """All files written."""
        return sum(self.counts.values())
