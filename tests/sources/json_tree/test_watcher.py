"""StorageWatcher with a real watchfiles watch on real files."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
import watchfiles
from conftest import LogEvents
from watchfiles import Change

from indexer_service import watching as watching_module
from indexer_service.sources.json_tree.watcher import (
    StorageWatcher,
    list_json_files,
    sweep_new_dirs,
)
from indexer_service.watching import WatchfilesRustInternalError, undecodable_path


class Collector:
    """Collects reported paths and wakes waiters when a condition holds."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.calls = 0
        self.deliveries: list[str] = []
        self._changed = anyio.Event()

    async def __call__(self, paths: list[str]) -> None:
        self.calls += 1
        self.paths.update(paths)
        self.deliveries += paths
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, cond: Callable[[set[str]], bool], timeout: float = 15) -> None:
        with anyio.fail_after(timeout):
            while not cond(self.paths):
                await self._changed.wait()


@asynccontextmanager
async def watching(root: Path) -> AsyncIterator[tuple[StorageWatcher, Collector]]:
    got = Collector()
    watcher = StorageWatcher(root, got, rearm_seconds=0.05, wake_ms=100)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        yield watcher, got
        tg.cancel_scope.cancel()


def _write(path: Path, text: str = "{}") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


async def test_reports_created_and_modified_json(tmp_path: Path) -> None:
    """A new file and a rewrite of an existing one are both reported."""
    old = _write(tmp_path / "project" / "p1.json")
    async with watching(tmp_path) as (_, got):
        new = _write(tmp_path / "session" / "p1" / "ses_1.json")
        Path(old).write_text('{"id": "p1"}')
        await got.wait_for(lambda s: {old, new} <= s)


async def test_ignores_files_outside_the_indexed_layout(tmp_path: Path) -> None:
    """Non-JSON files, unknown directories and wrong depths never reach the callback."""
    (tmp_path / "part").mkdir()
    async with watching(tmp_path) as (_, got):
        _write(tmp_path / "migration", "2")
        _write(tmp_path / "session_share" / "ses_1.json")
        _write(tmp_path / "part" / "m1" / "x.json.123.tmp")
        _write(tmp_path / "part" / "toplevel.json")
        marker = _write(tmp_path / "todo" / "ses_1.json")
        await got.wait_for(lambda s: marker in s)
        assert got.paths == {marker}


async def test_burst_into_new_directories_is_complete(tmp_path: Path) -> None:
    """Every file of a burst into freshly created directories is reported (new dirs are swept)."""
    (tmp_path / "part").mkdir()
    async with watching(tmp_path) as (watcher, got):
        expected: set[str] = set()
        for d in range(200):
            directory = tmp_path / "part" / f"msg_{d:04d}"
            directory.mkdir()
            for f in range(20):
                expected.add(_write(directory / f"prt_{f:03d}.json"))
        # the sweeps of the new directories report their files too (every sweep reports
        # after it ran, so wait for one rather than race the events that came first)
        await got.wait_for(lambda s: expected <= s and watcher.files_from_sweeps > 0, timeout=30)
        assert watcher.dirs_swept >= 1


async def test_a_file_both_reported_and_swept_is_sent_once(tmp_path: Path) -> None:
    """One wake-up that reports a new directory and some of its files sends each file once:
    sent twice, it would be read twice (the two copies can land in different batches)."""
    directory = tmp_path / "part" / "msg_1"
    reported = _write(directory / "prt_1.json")
    unreported = _write(directory / "prt_2.json")  # created before the directory's watch
    got = Collector()
    watcher = StorageWatcher(tmp_path, got)
    await watcher._dispatch(
        {
            (Change.added, str(tmp_path / "part")),
            (Change.added, str(directory)),
            (Change.added, reported),
            (Change.modified, reported),
        }
    )
    assert sorted(got.deliveries) == sorted([reported, unreported])
    assert got.calls == 1
    assert watcher.files_from_sweeps == 2


def test_sweep_walks_nested_new_directories_once(tmp_path: Path) -> None:
    files = {
        _write(tmp_path / "part" / f"msg_{d}" / f"prt_{f}.json") for d in range(3) for f in range(2)
    }
    dirs = [str(tmp_path / "part"), *(str(tmp_path / "part" / f"msg_{d}") for d in range(3))]
    found = sweep_new_dirs(dirs)
    assert sorted(found) == sorted(files)


async def test_new_top_level_directory_is_swept(tmp_path: Path) -> None:
    """Files created with their whole directory chain in one go are found by the sweep."""
    async with watching(tmp_path) as (_, got):
        staging = tmp_path.parent / (tmp_path.name + "-staging")
        made = _write(staging / "message" / "ses_1" / "msg_1.json")
        os.rename(staging / "message", tmp_path / "message")
        target = str(tmp_path / "message" / "ses_1" / "msg_1.json")
        assert not os.path.exists(made)
        await got.wait_for(lambda s: target in s)


async def test_root_deleted_and_recreated_is_rearmed(tmp_path: Path) -> None:
    """After the storage root is removed and created again, new files are still reported."""
    root = tmp_path / "storage"
    root.mkdir()
    async with watching(root) as (_, got):
        first = _write(root / "project" / "a.json")
        await got.wait_for(lambda s: first in s)
        shutil.rmtree(root)
        root.mkdir()
        # the watch is re-armed asynchronously: keep writing until a file is seen
        later = root / "project" / "b.json"
        with anyio.fail_after(15):
            while str(later) not in got.paths:
                _write(later, f'{{"n": {got.calls}}}')
                with anyio.move_on_after(0.2):
                    await got.wait_for(lambda s: str(later) in s)


def test_list_json_files_keeps_json_files_and_tolerates_missing(tmp_path: Path) -> None:
    """A sweep keeps the .json files (the loader classifies them) and treats a missing
    directory as empty."""
    keep = _write(tmp_path / "part" / "m" / "p.json")
    _write(tmp_path / "part" / "m" / "p.txt")
    assert list_json_files(str(tmp_path / "part")) == [keep]
    assert list_json_files(str(tmp_path / "nope")) == []


async def test_a_watch_that_cannot_be_armed_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the OS refuses the watch (inotify's watch limit), the watcher reports itself
    started, logs ``watch_failed`` with the limit, and arms the watch at its next try."""
    real = watchfiles.awatch
    calls = 0
    armed = anyio.Event()

    async def awatch(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:  # what watchfiles raises past fs.inotify.max_user_watches
            raise OSError("OS file watch limit reached. about [...]")
        async for changes in real(*args, **kwargs):
            armed.set()
            yield changes

    monkeypatch.setattr(watching_module, "awatch", awatch)
    got = Collector()
    watcher = StorageWatcher(tmp_path, got, retry_seconds=0.05, wake_ms=100)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run)
            with anyio.fail_after(15):
                await armed.wait()
            path = _write(tmp_path / "project" / "p1.json")
            await got.wait_for(lambda s: path in s)
            tg.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == "watch_failed"]
    assert len(failed) == 1 and "watch limit" in failed[0]["error"]
    assert "re-arming" in failed[0]["action"]
    assert watcher.get_stats()["failures"] == 1


async def test_a_name_that_is_not_utf8_does_not_end_the_watch(
    tmp_path: Path, log_events: LogEvents
) -> None:
    """watchfiles gives up its watch at a file name that is not UTF-8: the watcher arms a new
    one, which reports the files written after."""
    (tmp_path / "part" / "m1").mkdir(parents=True)
    async with watching(tmp_path) as (watcher, got):
        raw = os.path.join(os.fsencode(tmp_path / "part" / "m1"), b"prt_\xff.json")
        os.close(os.open(raw, os.O_CREAT | os.O_WRONLY))
        with anyio.fail_after(15):
            await log_events.wait_for("watch_restarted")
            await log_events.wait_for("watch_started", 2)
        later = _write(tmp_path / "part" / "m1" / "prt_later.json")
        await got.wait_for(lambda s: later in s)
        assert watcher.get_stats()["restarts"] == 1
    (restarted,) = [e for e in log_events.entries if e["event"] == "watch_restarted"]
    assert restarted["error"].endswith('/part/m1/prt_\\xFF.json" to string')


async def test_a_folder_name_that_is_not_utf8_leaves_the_tree_to_reconciliation(
    tmp_path: Path, log_events: LogEvents
) -> None:
    """A folder whose name is not UTF-8 fails every arming of the watch (arming lists it): the
    watcher says it started, logs ``watch_failed`` naming the folder, and arms the watch again
    once the folder is renamed."""
    bad = os.path.join(os.fsencode(tmp_path / "part"), b"msg_\xfe")
    os.makedirs(bad)
    got = Collector()
    watcher = StorageWatcher(tmp_path, got, retry_seconds=0.05, wake_ms=100)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        with anyio.fail_after(15):
            await log_events.wait_for("watch_failed")
        os.rename(bad, tmp_path / "part" / "msg_fe")
        with anyio.fail_after(15):
            await log_events.wait_for("watch_started")
        later = _write(tmp_path / "part" / "msg_fe" / "prt_later.json")
        await got.wait_for(lambda s: later in s)
        tg.cancel_scope.cancel()
    failed = [e for e in log_events.entries if e["event"] == "watch_failed"]
    assert 'part/msg_\\xFE" to string' in failed[0]["error"]
    assert "rename it" in failed[0]["action"]


def test_the_path_watchfiles_could_not_decode_is_read_back() -> None:
    """watchfiles' message shows the path in Rust's debug form: read back as bytes."""
    error = WatchfilesRustInternalError(
        'Unable to decode path "/s/part/msg_\\xFF\\u{1b}\\"q\\\\" to string'
    )
    assert undecodable_path(error) == b'/s/part/msg_\xff\x1b"q\\'
    assert undecodable_path(WatchfilesRustInternalError("error in underlying watcher")) is None


def test_a_tree_larger_than_the_watch_limit_is_warned_about(tmp_path: Path) -> None:
    """More directories than fs.inotify.max_user_watches: a warning that says what is missed
    and how to raise the limit; none below it."""
    watcher = StorageWatcher(tmp_path, Collector())
    with structlog.testing.capture_logs() as logs:
        assert not watcher.check_watch_limit(dirs=999, limit=1_000)
        assert watcher.check_watch_limit(dirs=190_000, limit=8_192)
        assert watcher.check_watch_limit(dirs=190_001, limit=8_192)  # said once
    assert [e["event"] for e in logs] == ["watch_limit_low"]
    assert logs[0]["fix"] == "sudo sysctl fs.inotify.max_user_watches=524288"
    assert "full pass" in logs[0]["action"]
    with structlog.testing.capture_logs() as logs:
        assert not watcher.check_watch_limit(dirs=5_000, limit=8_192)  # limit raised meanwhile
        assert watcher.check_watch_limit(dirs=9_000, limit=8_192)
    assert [e["event"] for e in logs] == ["watch_limit_low"]
