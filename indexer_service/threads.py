"""Blocking work in a worker thread that a cancelled caller can stop, and waits for.

A thread cannot be cancelled. `run_in_thread` tells it to stop (``cancel``) when the caller is
cancelled, then waits, shielded, until it has returned, so nothing the work uses (the database
connection) is closed under it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

__all__ = ["run_in_thread"]

T = TypeVar("T")


class _NotStarted(Exception):
    """The work was cancelled before its thread started it."""


async def run_in_thread(
    fn: Callable[[], T],
    cancel: Callable[[], None],
    *,
    limiter: anyio.CapacityLimiter | None = None,
) -> T:
    """``fn()`` in a worker thread. If the caller is cancelled: ``cancel()`` (called on the event
    loop; it must make ``fn`` return soon), then wait for ``fn`` to end if it had started."""
    lock, done = threading.Lock(), threading.Event()
    state = {"started": False, "cancelled": False}

    def call() -> T:
        with lock:
            if state["cancelled"]:
                raise _NotStarted
            state["started"] = True
        try:
            return fn()
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=limiter)
    except anyio.get_cancelled_exc_class():
        with lock:
            state["cancelled"] = True
            running = state["started"]
        if running:
            cancel()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(done.wait)
        raise
