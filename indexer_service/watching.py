"""`follow`: watchfiles' ``awatch`` that stops within milliseconds when cancelled.

``awatch`` waits for its file-watching thread, which checks its stop event every ``step`` ms
but sets that event itself only after the thread returns on its own ``rust_timeout`` (0.5 s
here): every stop of a watcher cost about half a second. `follow` sets the stop event first,
and says that the watch is armed as soon as it is (waiting for the first timeout cost another
half second at every start).

Arming itself stalls the event loop: ``awatch`` builds watchfiles' ``RustNotify`` on the calling
thread, and its constructor adds one inotify watch per directory holding the GIL, so no Python
thread runs meanwhile (docs/benchmarks.md). Building it in a worker thread would not help.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import anyio
from watchfiles import Change, awatch

__all__ = ["Changes", "follow"]

Changes = set[tuple[Change, str]]


class _Stop:
    """watchfiles' stop event, which also tells when the watch is armed: the watching thread
    first asks whether to stop once its watches are in place (``step`` ms after)."""

    def __init__(self, on_armed: Callable[[], None]) -> None:
        self._event = anyio.Event()
        self._on_armed: Callable[[], None] | None = on_armed

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        on_armed, self._on_armed = self._on_armed, None
        if on_armed is not None:  # on the watching thread, the first time
            try:
                anyio.from_thread.run_sync(on_armed)
            except RuntimeError:  # the event loop is gone: nothing is waiting for this
                pass
        return self._event.is_set()


async def follow(
    path: Path | str | tuple[Path, ...],
    handle: Callable[[Changes], Awaitable[bool]],
    *,
    on_armed: Callable[[], None] = lambda: None,
    **options: Any,
) -> None:
    """Watch ``path`` (or a tuple of paths; ``options`` go to ``awatch``), awaiting
    ``handle(changes)`` for each batch (an empty one on each ``rust_timeout`` with
    ``yield_on_timeout``), until ``handle`` returns False or the caller is cancelled;
    ``on_armed()`` once the watch is in place. An error of the watch or of ``handle`` is
    raised as it is."""
    paths = path if isinstance(path, tuple) else (path,)
    is_armed = anyio.Event()
    stop = _Stop(is_armed.set)
    # awatch calls only `is_set()`, though its annotation names the event classes it expects
    stop_event = cast(anyio.Event, stop)
    failed: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            # awatch is closed here when the watch ends, not left to the garbage collector
            # (which trio reports as a ResourceWarning)
            try:
                async with aclosing(awatch(*paths, stop_event=stop_event, **options)) as batches:
                    async for changes in batches:
                        if not await handle(changes):
                            break
            except Exception as exc:  # raised below, not as an exception group
                failed.append(exc)
            finally:
                stop.set()
                tg.cancel_scope.cancel()

        tg.start_soon(consume)
        try:
            await is_armed.wait()
            on_armed()  # in the caller's task (it may be a `TaskStatus.started`)
            await anyio.sleep_forever()
        finally:
            stop.set()  # the thread sees it within `step` ms; then awatch ends
    if failed:
        raise failed[0]
