"""Exponential backoff, the one formula behind every retry: writes that fail for the
database's sake, and files or rows that fail to index."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``base_seconds * 2**(attempt - 1)`` seconds after the ``attempt``-th failure, at most
    ``cap_seconds``."""

    base_seconds: float
    cap_seconds: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1 for the first)."""
        return float(min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1)))
