"""Which batch last wrote each path, so a stale read never overwrites a newer version."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["WriteLog"]


class WriteLog:
    """Which write last touched each path, so a batch re-stats only the paths that another
    batch wrote after this one read them: only those can hold a newer version.

    ``begin()`` before reading returns a ticket; ``contended(ticket, paths)`` (under the write
    lock) says which paths to check; ``written(ticket, paths)`` records the write. Tickets older
    than ``horizon`` writes (e.g. of a batch that was never written) check every path.

    ``wrote_lately(paths)`` says whether any of them was among the last ``recent`` or more paths
    written: their rows may sit in the open write group, where a plain insert that meets them
    would abort the whole group (`store.group`).
    """

    def __init__(self, horizon: int = 256, recent: int = 32_768) -> None:
        self.horizon = horizon
        self.recent = recent
        self._lately: set[int] = set()  # hashes of the paths written lately, then the ones before
        self._before: set[int] = set()
        self._gen = 0  # writes done
        self._last: dict[str, int] = {}  # path -> the write that last included it
        self._reading: Counter[int] = Counter()  # tickets of batches not yet written
        self._lock = threading.Lock()

    def begin(self) -> int:
        with self._lock:
            self._reading[self._gen] += 1
            return self._gen

    def contended(self, ticket: int, paths: Iterable[str]) -> set[str] | None:
        """Paths written since ``ticket``; None when the ticket is too old to tell."""
        with self._lock:
            if ticket < self._gen - self.horizon:
                return None
            last = self._last
            return {p for p in paths if last.get(p, -1) > ticket}

    def wrote_lately(self, paths: Iterable[str]) -> bool:
        """Whether one of ``paths`` was written in about the last ``recent`` paths' writes."""
        with self._lock:
            lately, before = self._lately, self._before
            return any(h in lately or h in before for h in map(hash, paths))

    def written(self, ticket: int, paths: Iterable[str]) -> None:
        with self._lock:
            self._gen += 1
            gen = self._gen
            for p in paths:
                self._last[p] = gen
                self._lately.add(hash(p))
            if len(self._lately) >= self.recent:
                self._before, self._lately = self._lately, set()
            reading = self._reading
            reading[ticket] -= 1
            if reading[ticket] <= 0:
                del reading[ticket]
            floor = max(min(reading, default=gen), gen - self.horizon)
            for t in [t for t in reading if t < gen - self.horizon]:
                del reading[t]
            # Nobody can need entries at or below the oldest ticket still reading.
            if len(self._last) > 4096:
                self._last = {p: g for p, g in self._last.items() if g > floor}
