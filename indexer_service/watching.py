"""`follow`: watchfiles' ``awatch`` that stops within milliseconds when cancelled.

``awatch`` waits for its file-watching thread, which checks its stop event every ``step`` ms
but sets that event itself only after the thread returns on its own ``rust_timeout`` (0.5 s
here): every stop of a watcher cost about half a second. `follow` sets the stop event first,
and says that the watch is armed as soon as it is (waiting for the first timeout cost another
half second at every start).

watchfiles cannot report a path that is not valid UTF-8: its watch fails for good at the first
event on such a name, an open or a listing included (``WatchfilesRustInternalError: Unable to
decode path``). `follow` then arms a new watch (after 0.5 s, doubling while it keeps failing, up
to 60 s) and logs ``watch_restarted``; the changes lost meanwhile are found by reconciliation. A
watch that fails before it is armed (a recursive watch lists every folder as it arms, so a
folder with such a name fails it each time) is raised to the caller, with the path on disk it
names (`undecodable_path`).

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
import structlog
from watchfiles import Change, awatch
from watchfiles._rust_notify import WatchfilesRustInternalError

from indexer_service.backoff import Backoff
from indexer_service.errors import first_of

__all__ = ["RESTART", "Changes", "WatchfilesRustInternalError", "follow", "undecodable_path"]

log = structlog.get_logger(__name__)

Changes = set[tuple[Change, str]]

RESTART = Backoff(base_seconds=0.5, cap_seconds=60.0)
"""When a watch that failed after it was armed is armed again: 0.5 s after its first failure,
doubling while it keeps failing within ``cap_seconds`` of being armed."""


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


_RUST_ESCAPES = {
    b"\\": b"\\",
    b'"': b'"',
    b"'": b"'",
    b"n": b"\n",
    b"t": b"\t",
    b"r": b"\r",
    b"0": b"\0",
}


def undecodable_path(error: WatchfilesRustInternalError) -> bytes | None:
    """The path (as bytes) that watchfiles could not decode, read back from its message (Rust's
    debug form: ``\\xNN`` for a byte that is not UTF-8); None for another error."""
    text = str(error)
    head, tail = 'Unable to decode path "', '" to string'
    if not (text.startswith(head) and text.endswith(tail)):
        return None
    body, out, i = text[len(head) : -len(tail)].encode(), bytearray(), 0
    while i < len(body):
        if body[i : i + 1] != b"\\":
            out += body[i : i + 1]
            i += 1
        elif body[i + 1 : i + 2] == b"x":
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif body[i + 1 : i + 3] == b"u{":
            end = body.index(b"}", i)
            out += chr(int(body[i + 3 : end], 16)).encode()
            i = end + 1
        else:
            out += _RUST_ESCAPES.get(body[i + 1 : i + 2], body[i + 1 : i + 2])
            i += 2
    return bytes(out)


async def follow(
    path: Path | str | tuple[Path, ...],
    handle: Callable[[Changes], Awaitable[bool]],
    *,
    on_armed: Callable[[], None] = lambda: None,
    on_restart: Callable[[], None] = lambda: None,
    **options: Any,
) -> None:
    """Watch ``path`` (or a tuple of paths; ``options`` go to ``awatch``), awaiting
    ``handle(changes)`` for each batch (an empty one on each ``rust_timeout`` with
    ``yield_on_timeout``), until ``handle`` returns False or the caller is cancelled;
    ``on_armed()`` each time the watch is in place.
    A watch that watchfiles gives up after it was armed is armed again (``on_restart()``, see
    the module doc); one that fails before raises ``WatchfilesRustInternalError``, and any
    other error of the watch or of ``handle`` is raised as it is."""
    failures = 0
    while True:
        armed, started = anyio.Event(), anyio.current_time()
        try:
            await _follow(path, handle, armed, on_armed, options)
            return
        except Exception as exc:
            error = first_of(exc, WatchfilesRustInternalError)  # awatch raises it in a group
            if error is None:
                raise
            if not armed.is_set():
                raise error from None
            if anyio.current_time() - started > RESTART.cap_seconds:
                failures = 0  # it had been working for a while: not the same failure
            failures += 1
            delay = RESTART.delay(failures)
            log.warning(
                "watch_restarted",
                path=", ".join(map(str, path)) if isinstance(path, tuple) else str(path),
                error=str(error),
                retry_in_s=delay,
                action="changes made meanwhile are found by the next reconciliation",
            )
            on_restart()
            await anyio.sleep(delay)


async def _follow(
    path: Path | str | tuple[Path, ...],
    handle: Callable[[Changes], Awaitable[bool]],
    is_armed: anyio.Event,
    on_armed: Callable[[], None],
    options: dict[str, Any],
) -> None:
    """One watch, as `follow` says; ``is_armed`` is set once it is in place."""
    paths = path if isinstance(path, tuple) else (path,)
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
