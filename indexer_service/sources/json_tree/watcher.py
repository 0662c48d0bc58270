"""StorageWatcher: filesystem events on the storage tree -> paths for the accumulator.

watchfiles reports changes in sets with their order lost (a file can show up as both added and
deleted), so events carry no verdict: every reported ``.json`` path goes downstream, where the
loader's stat decides between index and delete. Two known blind spots are closed here:

* files written into a new directory before its watch exists are never reported (measured: 10% of
  a 20,000-file burst): every new directory is listed at once and its files are sent too;
* a deleted and recreated storage root silently stops producing events: the root's deletion
  event and its identity (checked on every wake-up) re-arm the watch;
* a name that is not valid UTF-8 ends watchfiles' watch: `watching.follow` arms a new one.
  Such names never reach the callback from watchfiles; a sweep passes them on escaped
  (`layout.escape`), and the loader records them as errors.

What is still missed (inotify queue overflow, exhausted watches) is caught by the reconciler.
Exhausted watches are worth a warning: on Linux each directory costs one inotify watch out of
``fs.inotify.max_user_watches`` (192,536 by default on a 24 GB machine; a 1M-file OpenCode tree
has ~190k directories). Past the limit watchfiles silently leaves new directories unwatched
(measured: 40 of 101 new files reported), and may refuse the whole watch when arming hits the
limit; the watcher then retries, and the service runs on reconciliation alone meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus
from watchfiles import Change

from indexer_service.model import Emit
from indexer_service.sources.json_tree.layout import DEPTH, FILE_TYPES, classify, escape
from indexer_service.stats import WatcherStats
from indexer_service.watching import (
    Changes,
    WatchfilesRustInternalError,
    follow,
    undecodable_path,
)

log = structlog.get_logger(__name__)


_WATCH_LIMIT = "/proc/sys/fs/inotify/max_user_watches"


def inotify_watch_limit() -> int | None:
    """``fs.inotify.max_user_watches``: the directories one user may watch (None off Linux)."""
    try:
        with open(_WATCH_LIMIT) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _root_id(root: str) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _exists(path: bytes) -> bool:
    return os.path.lexists(path)


def list_json_files(directory: str) -> list[str]:
    """Every ``.json`` file under ``directory`` (recursively), as keys (`layout.escape`);
    missing directories give []. The loader classifies each key before it reads it."""
    found: list[str] = []
    todo = [directory]
    while todo:
        try:
            with os.scandir(todo.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".json"):  # no is_dir() call: ~20% faster than os.walk
                found.append(escape(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                todo.append(entry.path)
    return found


def sweep_new_dirs(dirs: list[str]) -> list[str]:
    """`list_json_files` of each new directory, skipping those inside another one of them
    (its walk covers them)."""
    new = set(dirs)
    found: list[str] = []
    for directory in new:
        parent = os.path.dirname(directory)
        if parent in new or os.path.dirname(parent) in new:
            continue
        found += list_json_files(directory)
    return found


class StorageWatcher:
    """Follow the storage tree with watchfiles and hand every relevant path to ``on_paths``."""

    def __init__(
        self,
        root: Path | str,
        on_paths: Emit,
        *,
        debounce_ms: int = 50,
        step_ms: int = 10,
        wake_ms: int = 500,
        rearm_seconds: float = 1.0,
        retry_seconds: float = 60.0,
    ) -> None:
        self.root = str(Path(root))
        self.on_paths = on_paths
        # watchfiles holds changes until no new one arrives for `step` ms, at most `debounce` ms:
        # short values keep event-to-index latency low; batching is the accumulator's job.
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.wake_ms = wake_ms
        self.rearm_seconds = rearm_seconds
        self.retry_seconds = retry_seconds
        self.events = 0
        self.failures = 0
        self.dirs_swept = 0
        self.files_from_sweeps = 0
        self.rearms = 0
        self.restarts = 0
        self._over_limit = False  # warned that the tree has more directories than watches

    def _filter(self, change: Change, path: str) -> bool:
        if path.endswith(".json"):
            return classify(self.root, path) is not None
        if path == self.root:  # the root itself deleted (a recreated root may reuse its inode)
            return True
        if change != Change.added or not path.startswith(self.root + os.sep):
            return False
        # a new directory that can hold indexable files: a top-level one or a parent-id one
        parts = path[len(self.root) + 1 :].split(os.sep)
        return parts[0] in FILE_TYPES and len(parts) <= DEPTH[parts[0]]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; ``task_status.started()`` once the first watch is armed (or
        could not be: the service starts on reconciliation alone)."""
        started = False

        def armed() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            ident = await anyio.to_thread.run_sync(_root_id, self.root)
            if ident is None:
                armed()
                await anyio.sleep(self.rearm_seconds)
                continue
            try:
                await self._watch(ident, armed)
            except (OSError, WatchfilesRustInternalError) as exc:
                # "OS file watch limit reached", or a folder whose name is not UTF-8
                self.failures += 1
                limit = await anyio.to_thread.run_sync(inotify_watch_limit)
                blocker = None if isinstance(exc, OSError) else undecodable_path(exc)
                log.warning(
                    "watch_failed",
                    root=self.root,
                    error=str(exc),
                    max_user_watches=limit,
                    action="changes are found by reconciliation; "
                    f"re-arming in {self.retry_seconds:g} s"
                    + ("" if blocker is None else " once that path is gone (rename it)"),
                )
                armed()
                await self._wait_to_rearm(blocker)

    async def _wait_to_rearm(self, blocker: bytes | None) -> None:
        """Wait ``retry_seconds``, then as long again while ``blocker`` (a path that failed the
        arming) is there: arming again would fail on it, stalling the loop as it arms."""
        while True:
            await anyio.sleep(self.retry_seconds)
            if blocker is None or not await anyio.to_thread.run_sync(_exists, blocker):
                return

    async def _watch(self, ident: tuple[int, int], armed: Callable[[], None]) -> None:
        """Follow one arming of the watch until the root is replaced (return) or it fails."""

        def on_armed() -> None:
            armed()
            log.info("watch_started", root=self.root)

        async def handle(changes: Changes) -> bool:
            if changes:
                await self._dispatch(changes)
            replaced = any(p == self.root for _, p in changes)
            if replaced or await anyio.to_thread.run_sync(_root_id, self.root) != ident:
                log.warning("storage_root_replaced", root=self.root, action="re-arming watch")
                self.rearms += 1
                return False
            return True

        def on_restart() -> None:
            self.restarts += 1

        await follow(
            self.root,
            handle,
            on_armed=on_armed,
            on_restart=on_restart,
            watch_filter=self._filter,
            debounce=self.debounce_ms,
            step=self.step_ms,
            rust_timeout=self.wake_ms,
            yield_on_timeout=True,
            ignore_permission_denied=True,
        )

    def check_watch_limit(self, dirs: int, limit: int | None) -> bool:
        """Whether ``dirs`` directories need more inotify watches than the OS allows (``limit``:
        `inotify_watch_limit`, None if unknown); warns (``watch_limit_low``) when the tree
        crosses the limit, once until it is back below."""
        over = limit is not None and dirs >= limit
        warned, self._over_limit = self._over_limit, over
        if not over or warned:
            return over
        log.warning(
            "watch_limit_low",
            root=self.root,
            dirs=dirs,
            max_user_watches=limit,
            action="directories past the limit are not watched: reconciliation finds their new "
            "files at its next scan and in-place rewrites at its next full pass",
            fix=f"sudo sysctl fs.inotify.max_user_watches={max(2 * dirs, 524_288)}",
        )
        return True

    async def _dispatch(self, changes: set[tuple[Change, str]]) -> None:
        files: set[str] = set()
        new_dirs: list[str] = []
        for change, path in changes:
            if path.endswith(".json"):
                files.add(path)
            elif change == Change.added and path != self.root:
                new_dirs.append(path)
        self.events += len(changes)
        if new_dirs:
            # Swept files go out with the event's own: sent apart, a file reported both ways
            # could be read twice (once per batch), as 37% of a 100k-file burst was.
            swept = await anyio.to_thread.run_sync(sweep_new_dirs, new_dirs)
            self.dirs_swept += len(new_dirs)
            self.files_from_sweeps += len(swept)
            files.update(swept)
        if files:
            await self.on_paths(list(files))

    def get_stats(self) -> WatcherStats:
        """Events received, directories swept (and files found so), re-arms, restarts and
        failures."""
        return WatcherStats(
            events=self.events,
            dirs_swept=self.dirs_swept,
            files_from_sweeps=self.files_from_sweeps,
            rearms=self.rearms,
            restarts=self.restarts,
            failures=self.failures,
        )
