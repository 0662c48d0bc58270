"""The mutable state of generated projects and sessions, which later records depend on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]
Model = tuple[str, str, float, float, float, float, bool]
"""providerID, modelID, USD per Mtok (input, output, cache read, cache write), emits reasoning."""
_DENY = ("todowrite", "todoread", "task")


@dataclass
class _Project:
    id: str
    worktree: str
    created: int
    paths: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> current content
    reads: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> read output, preview


@dataclass
class _Ses:
    id: str
    project: _Project
    head: Json  # the keys before time/summary/share, in creation order
    model: Model
    level: int
    compact: bool
    directory: str
    agent: str
    created: int
    share: str | None = None
    ctx: int = 9000  # context tokens so far
    messages: int = 0
    stepped: bool = False  # a step finished, so session_diff exists
    user: str = ""  # current user message (LiveWriter)
    # relative path -> [before, after, additions, deletions, status]: whole session, this turn
    diffs: dict[str, list[Any]] = field(default_factory=dict)
    turn: dict[str, list[Any]] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # absolute paths changed in this step
    todos: list[Json] | None = None


def _file_diffs(s: _Ses, diffs: dict[str, list[Any]]) -> list[Json]:
    if s.project.id == "global":  # no snapshots outside git
        return []
    keys = ("before", "after", "additions", "deletions", "status")
    return [{"file": k, **dict(zip(keys, v, strict=True))} for k, v in diffs.items()]
