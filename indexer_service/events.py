"""`Signal`: an anyio event that re-arms itself, for "wake me at the next change" waits.

A leaf: it imports nothing of the package.
"""

from __future__ import annotations

import anyio

__all__ = ["Signal"]


class Signal:
    """A re-arming anyio Event: ``event()`` is set by the next ``set()`` (event loop only)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def event(self) -> anyio.Event:
        """The event the next `set` sets (created on demand: none while nobody waits)."""
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def set(self) -> None:
        """Wake whoever waits on `event`; a later `event` is a new one."""
        if self._event is not None:
            self._event.set()
            self._event = None
