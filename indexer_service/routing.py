"""SourceRouter: one `BatchLoader` over several sources, so that they share one pipeline.

A batch holds keys of any source; the router gives each source its own keys (`Source.owns`),
prepares them in turn and writes them in turn, each source in its own transaction, and adds up
what the batch did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from indexer_service.model import BatchResult
from indexer_service.source import Source

__all__ = ["SourceRouter"]

Prepared = list[tuple[Source[Any], Any]]


class SourceRouter:
    """Routes keys to ``sources`` (a key no source owns is skipped)."""

    def __init__(self, sources: Sequence[Source[Any]]) -> None:
        self.sources = list(sources)

    def _split(self, keys: Sequence[str]) -> list[tuple[Source[Any], list[str]]]:
        if len(self.sources) == 1:
            return [(self.sources[0], list(keys))]
        groups: dict[int, list[str]] = {}
        for key in keys:
            for i, source in enumerate(self.sources):
                if source.owns(key):
                    groups.setdefault(i, []).append(key)
                    break
        return [(self.sources[i], group) for i, group in sorted(groups.items())]

    async def warm(self, keys: Sequence[str]) -> int:
        return sum([await source.warm(group) for source, group in self._split(keys)])

    def prepare(self, keys: Sequence[str]) -> Prepared:
        return [(source, source.prepare(group)) for source, group in self._split(keys)]

    def follow_up(self, prepared: Prepared) -> list[str]:
        return [key for source, p in prepared for key in source.follow_up(p)]

    def groupable(self, prepared: Prepared) -> bool:
        return all(source.groupable(p) for source, p in prepared)

    def write(self, prepared: Prepared) -> BatchResult:
        first, *rest = [source.write(p) for source, p in prepared]
        return sum(rest, first)
