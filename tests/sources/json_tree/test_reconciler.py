"""Reconciler: real files in tmp_path, real DuckDB, file_index set up with FileTracker."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from anyio.abc import TaskStatus
from conftest import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from indexer_service.accumulator import AccumulatorConfig, FileBatchAccumulator
from indexer_service.backoff import Backoff
from indexer_service.demo.synthetic import age_tree
from indexer_service.sources.json_tree.file_index import FileTracker, IndexedFile
from indexer_service.sources.json_tree.layout import NESTED, classify_relative
from indexer_service.sources.json_tree.lister import TreeLister
from indexer_service.sources.json_tree.listing import indexable_name
from indexer_service.sources.json_tree.reconciler import Reconciler
from indexer_service.store.database import Database

HOUR = 3600.0


class Collector:
    """An on_missing_files / on_deleted_files callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_next = False

    async def __call__(self, paths: list[str]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("downstream refused the batch")
        self.calls.append(list(paths))

    @property
    def paths(self) -> set[str]:
        return {str(p) for call in self.calls for p in call}


class Ticker:
    """An injectable sleep: each tick lets the periodic loop run exactly one scan."""

    def __init__(self) -> None:
        self.naps = 0
        self._tickets = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        self.naps += 1
        self._notify()
        while not self._tickets:
            await self._changed.wait()
        self._tickets -= 1

    def tick_nowait(self) -> None:
        self._tickets += 1
        self._notify()

    async def wait_naps(self, n: int) -> None:
        with anyio.fail_after(30):
            while self.naps < n:
                await self._changed.wait()

    async def tick(self) -> None:
        """Run one periodic scan and wait until the loop sleeps again."""
        n = self.naps
        self.tick_nowait()
        await self.wait_naps(n + 1)


class Gate:
    """A scandir that counts listings in flight, can fail chosen paths, and can block (in the
    worker thread) on matching paths until released; ``on_done`` runs after a listing."""

    def __init__(self, block: Callable[[str], bool] = lambda p: False) -> None:
        self.block = block
        self.fail: dict[str, OSError] = {}
        self.on_done: dict[str, Callable[[], object]] = {}
        self.calls: list[str] = []
        self.active = self.max_active = 0
        self.entered = threading.Event()
        self.released = threading.Event()
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, path: str) -> Iterator[Iterator[os.DirEntry[str]]]:
        with self._lock:
            self.calls.append(path)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if path in self.fail:
                raise self.fail[path]
            if self.block(path) and not self.released.is_set():
                self.entered.set()
                assert self.released.wait(30)
            with os.scandir(path) as it:
                yield it
            if path in self.on_done:
                self.on_done.pop(path)()
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())  # epoch: compared with the mtimes of real files


@pytest.fixture
def tracker(db: Database, clock: FakeClock) -> FileTracker:
    return FileTracker(db, retry=Backoff(base_seconds=60, cap_seconds=600), clock=clock)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


def write(root: Path, rel: str, text: str = "{}") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_tree(root: Path, messages: int = 2, parts: int = 2) -> list[Path]:
    """A small storage tree: every file type, plus files the layout does not index."""
    files = [
        write(root, "project/p1.json"),
        write(root, "session/p1/ses_a.json"),
        write(root, "todo/ses_a.json", "[]"),
        write(root, "session_diff/ses_a.json", "[]"),
    ]
    for m in range(messages):
        files.append(write(root, f"message/ses_a/msg_{m}.json"))
        files += [write(root, f"part/msg_{m}/prt_{m}_{k}.json") for k in range(parts)]
    for noise in ("migration", "part/msg_0/.hidden.json", "part/msg_0/x.txt", "part/a/b/c.json"):
        write(root, noise, "2")
    (root / "snapshot" / "p1").mkdir(parents=True)
    return files


def index(tracker: FileTracker, paths: list[Path], *, v1: bool = False) -> None:
    """Mark the current version of each file indexed (v1: without mtime_ns)."""
    rows = []
    for p in paths:
        s = p.stat()
        ftype = p.parent.parent.name if p.parent.parent.name in NESTED else p.parent.name
        ns = None if v1 else s.st_mtime_ns
        rows.append(IndexedFile(str(p), ftype, s.st_mtime, s.st_size, None, ns))
    tracker.mark_indexed_batch(rows)


def strs(paths: Any) -> set[str]:
    return {str(p) for p in paths}


def make(
    root: Path, db: Database, clock: FakeClock, **kw: Any
) -> tuple[Reconciler, Collector, Collector]:
    missing, deleted = Collector(), Collector()
    rec = Reconciler(
        root, db, on_missing_files=missing, on_deleted_files=deleted, clock=clock, **kw
    )
    return rec, missing, deleted


async def test_new_files_reported(root: Path, db: Database, clock: FakeClock) -> None:
    """Every indexable file without a row is reported new, and nothing the layout skips."""
    files = make_tree(root)
    rec, missing, deleted = make(root, db, clock)
    found = await rec.scan_now()
    assert strs(found) == strs(files) == missing.paths
    assert deleted.calls == []
    stats = rec.get_stats()
    assert stats["last"]["new"] == len(files) and stats["scans_full"] == 1


async def test_in_sync_reports_nothing(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A tree whose versions are all in file_index gives nothing to do, full or partial."""
    index(tracker, make_tree(root))
    rec, missing, deleted = make(root, db, clock)
    for full in (True, False):
        assert list(await rec.scan_now(full=full)) == []
    assert missing.calls == deleted.calls == []


async def test_modified_newer_mtime_same_size(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A newer mtime_ns with the same size is a modification."""
    files = make_tree(root)
    index(tracker, files)
    s = files[0].stat()
    os.utime(files[0], ns=(s.st_atime_ns, s.st_mtime_ns + 1))
    rec, _, _ = make(root, db, clock)
    assert strs(await rec.scan_now()) == {str(files[0])}
    assert rec.get_stats()["last"]["modified"] == 1


async def test_modified_same_mtime_other_size(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A different size with the very same mtime is a modification."""
    files = make_tree(root)
    index(tracker, files)
    s = files[1].stat()
    files[1].write_text('{"title": "longer"}')
    os.utime(files[1], ns=(s.st_atime_ns, s.st_mtime_ns))
    rec, _, _ = make(root, db, clock)
    assert strs(await rec.scan_now()) == {str(files[1])}


async def test_v1_rows_compare_mtime(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """Rows without mtime_ns (schema v1) compare the float mtime."""
    files = make_tree(root)
    index(tracker, files, v1=True)
    rec, _, _ = make(root, db, clock)
    assert list(await rec.scan_now()) == []
    s = files[2].stat()
    os.utime(files[2], ns=(s.st_atime_ns, s.st_mtime_ns + 1_000_000))
    assert strs(await rec.scan_now(full=True)) == {str(files[2])}


async def test_deleted_reported_separately(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """Rows of vanished files go to on_deleted_files, never to the missing files."""
    files = make_tree(root)
    index(tracker, files)
    tracker.mark_indexed(str(root / "part/msg_9/prt_x.json"), "part", 1.0, 2, None)
    tracker.mark_indexed("/elsewhere/part/m/p.json", "part", 1.0, 2, None)  # not under root
    files[-1].unlink()
    rec, missing, deleted = make(root, db, clock)
    assert list(await rec.scan_now()) == []
    assert deleted.paths == {str(files[-1]), str(root / "part/msg_9/prt_x.json")}
    assert missing.calls == [] and rec.get_stats()["last"]["deleted"] == 2


async def test_error_retry_due_and_not_due(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """An error row of the same version is retried once retry_after has passed, not before;
    a new version of a failing file is reported at once."""
    files = make_tree(root)
    index(tracker, files)
    bad, changed = files[4], files[5]
    for p in (bad, changed):
        s = p.stat()
        tracker.mark_error(str(p), "bad json", file_type="message", mtime=s.st_mtime, size=s.st_size, mtime_ns=s.st_mtime_ns)  # fmt: skip
    changed.write_text('{"fixed": true}')
    rec, _, _ = make(root, db, clock)
    assert strs(await rec.scan_now()) == {str(changed)}  # full pass, bad not due
    assert strs(await rec.scan_now()) == {str(changed)}  # partial pass, still not due
    clock.now += 61
    assert strs(await rec.scan_now()) == {str(bad), str(changed)}
    last = rec.get_stats()["last"]
    assert (last["retried"], last["modified"]) == (1, 1)


async def test_pending_and_due_errors_in_pruned_dirs(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """Pending rows, and error rows once due, are reported by partial passes even in
    directories that are not listed."""
    files = make_tree(root)
    age_tree(root, 2 * HOUR)
    index(tracker, files)
    rec, _, _ = make(root, db, clock)
    assert list(await rec.scan_now()) == []
    # a status other than indexed or error (none is written today) is read again
    sql = "UPDATE file_index SET status = 'pending' WHERE file_path = ?"
    db.cursor().execute(sql, [str(files[3])])
    s = files[6].stat()
    tracker.mark_error(str(files[6]), "truncated", file_type="part", mtime=s.st_mtime, size=s.st_size, mtime_ns=s.st_mtime_ns)  # fmt: skip
    assert strs(await rec.scan_now()) == {str(files[3])}
    clock.now += 61
    assert strs(await rec.scan_now()) == {str(files[3]), str(files[6])}
    stats = rec.get_stats()
    assert (stats["last"]["pending"], stats["last"]["retried"], stats["dirs_listed"]) == (1, 1, 0)
    assert not stats["last_scan_full"]


@pytest.mark.asyncio_only  # 12,000 files; chunking does not depend on the event loop
async def test_no_limit_on_results(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """12,000 new files are all reported, in chunks of at most chunk_size; so are 12,000
    deletions."""
    files = [write(root, f"part/msg_{i // 4:05d}/prt_{i}.json") for i in range(12_000)]
    (root / "project").mkdir()  # a root left with no record folder at all is unavailable
    rec, missing, deleted = make(root, db, clock)
    found = await rec.scan_now()
    assert len(found) == 12_000 and missing.paths == strs(files)
    assert max(len(c) for c in missing.calls) == 5_000 and len(missing.calls) == 3
    index(tracker, files)
    shutil.rmtree(root / "part")
    assert list(await rec.scan_now()) == []
    assert deleted.paths == strs(files) and len(deleted.calls) == 3


async def test_a_backfill_goes_out_in_path_order(
    root: Path, db: Database, clock: FakeClock
) -> None:
    """New files go to the pipeline sorted by path, not in the order directories happen to be
    listed: a bulk batch then holds one record type and neighbouring records, which DuckDB
    writes faster into a large index (docs/benchmarks.md)."""
    files = [str(f) for f in make_tree(root, messages=30, parts=5)]
    rec, missing, _ = make(root, db, clock, chunk_size=40)
    found = [str(p) for p in await rec.scan_now()]
    assert found == sorted(files)
    assert [p for chunk in missing.calls for p in chunk] == sorted(files)


async def test_noise_and_layout_rule(root: Path, db: Database, clock: FakeClock) -> None:
    """Files the layout rejects (no .json, hidden, too deep, unknown dirs) are never reported."""
    make_tree(root)
    rec, _, _ = make(root, db, clock)
    found = await rec.scan_now()
    rels = [str(p.relative_to(root)) for p in found]
    assert all(classify_relative(r) is not None for r in rels)
    assert not any(".hidden" in r or r.startswith("snapshot") for r in rels)


@given(st.text(alphabet=st.characters(blacklist_characters="/\0"), min_size=1, max_size=12))
def test_name_rule_matches_layout(name: str) -> None:
    """The listing's fast name rule agrees with layout.classify_relative."""
    assert indexable_name(name) == (classify_relative(f"part/m/{name}") is not None)
    assert indexable_name(name) == (classify_relative(f"todo/{name}") is not None)
    assert NESTED == {"session", "message", "part"}


async def test_periodic_loop_and_failed_scan(root: Path, db: Database, clock: FakeClock) -> None:
    """The loop scans on every interval; a failed scan is logged and the next one recovers."""
    ticker = Ticker()
    files = make_tree(root)
    rec, missing, _ = make(root, db, clock, sleep=ticker.sleep)
    missing.fail_next = True
    with structlog.testing.capture_logs() as logs:
        async with rec:
            await ticker.tick()
            assert [e["event"] for e in logs].count("reconcile_failed") == 1
            await ticker.tick()
    assert missing.paths == strs(files)
    assert rec.get_stats()["scans_failed"] == 1


async def test_scan_now_waits_for_loop_scan(root: Path, db: Database, clock: FakeClock) -> None:
    """scan_now during a periodic scan waits for it: never two listings at once."""
    ticker, gate = Ticker(), Gate(block=lambda p: p.endswith("/part"))
    files = make_tree(root)
    rec, _, _ = make(root, db, clock, sleep=ticker.sleep, scandir=gate)
    results: list[set[str]] = []

    async def call_scan_now() -> None:
        results.append(strs(await rec.scan_now()))

    async with rec, anyio.create_task_group() as tg:
        ticker.tick_nowait()
        await anyio.to_thread.run_sync(gate.entered.wait)
        tg.start_soon(call_scan_now)
        await anyio.wait_all_tasks_blocked()
        assert results == [] and rec.get_stats()["scans_full"] == 0
        gate.released.set()
        await ticker.wait_naps(2)
    assert results == [strs(files)]
    assert gate.max_active == 1
    assert rec.get_stats()["scans_full"] + rec.get_stats()["scans_partial"] == 2


async def test_cancelling_the_loop_during_a_scan_is_prompt(
    root: Path, db: Database, clock: FakeClock
) -> None:
    """Cancelling the periodic loop during a scan ends it at the next directory, with nothing
    reported."""
    ticker, gate = Ticker(), Gate(block=lambda p: "/part/" in p)
    for m in range(30):
        write(root, f"part/msg_{m:02d}/prt.json")
    rec, missing, deleted = make(root, db, clock, sleep=ticker.sleep, scandir=gate)
    loop = anyio.CancelScope()

    async def periodic(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with loop:
            await rec.run(task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(periodic)
        ticker.tick_nowait()
        await anyio.to_thread.run_sync(gate.entered.wait)
        loop.cancel()
        await anyio.wait_all_tasks_blocked()
        calls = len(gate.calls)
        gate.released.set()
    assert len(gate.calls) == calls  # no directory listed after the stop
    assert missing.calls == deleted.calls == []
    assert rec.get_stats()["scans_full"] == 0


async def test_tg_start_run(root: Path, db: Database, clock: FakeClock) -> None:
    """run() works under a caller's task group: started() at once, one scan per interval."""
    ticker = Ticker()
    rec, missing, _ = make(root, db, clock, sleep=ticker.sleep)
    async with anyio.create_task_group() as tg:
        await tg.start(rec.run)
        await ticker.tick()
        assert missing.calls == []  # storage missing: nothing to report
        files = make_tree(root)
        await ticker.tick()
        assert missing.paths == strs(files)
        tg.cancel_scope.cancel()


async def test_storage_missing_then_created(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A missing storage dir reports nothing, no deletions, warns once; indexing resumes when
    it appears."""
    tracker.mark_indexed(str(root / "todo/old.json"), "todo", 1.0, 2, None)
    rec, missing, deleted = make(root, db, clock)
    with structlog.testing.capture_logs() as logs:
        assert list(await rec.scan_now()) == []
        assert list(await rec.scan_now(full=True)) == []
        assert missing.calls == deleted.calls == []
        assert rec.get_stats()["storage_missing"]
        files = make_tree(root)
        assert strs(await rec.scan_now()) == strs(files)
    events = [e["event"] for e in logs]
    assert events.count("storage_missing") == 1 and events.count("storage_found") == 1
    assert deleted.paths == {str(root / "todo/old.json")}


async def test_storage_removed_while_running(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker, tmp_path: Path
) -> None:
    """Storage moved away reports no deletions; moved back, everything is still in sync."""
    files = make_tree(root)
    index(tracker, files)
    rec, missing, deleted = make(root, db, clock)
    assert list(await rec.scan_now()) == []
    root.rename(tmp_path / "away")
    assert list(await rec.scan_now()) == []
    (tmp_path / "away").rename(root)
    assert list(await rec.scan_now()) == []
    assert missing.calls == deleted.calls == []


async def test_storage_replaced(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker, tmp_path: Path
) -> None:
    """A storage dir replaced by another one is listed afresh: old rows deleted, new files new."""
    old = make_tree(root)
    index(tracker, old)
    rec, _, deleted = make(root, db, clock)
    assert list(await rec.scan_now()) == []
    root.rename(tmp_path / "old")
    new = [write(root, "todo/ses_new.json")]
    assert strs(await rec.scan_now()) == strs(new)
    assert deleted.paths == strs(old)


async def test_file_modified_during_scan(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A file rewritten right after the scan stat'ed it is reported by the next scan."""
    files = make_tree(root)
    target = root / "part/msg_1/prt_1_0.json"
    age_tree(root, 60)  # hot, but not racy: the directory mtime is trusted
    index(tracker, files)
    gate = Gate()
    gate.on_done[str(target.parent)] = lambda: target.write_text('{"text": "streamed"}')
    rec, missing, _ = make(root, db, clock, scandir=gate)
    first = strs(await rec.scan_now())
    second = strs(await rec.scan_now())
    assert not rec.get_stats()["last_scan_full"]
    assert str(target) in first | second and missing.paths == {str(target)}


async def test_unreadable_directory_not_deleted(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A directory whose listing fails (EACCES injected) reports no deletions; logged and
    counted; it is listed again at the next scan."""
    files = make_tree(root)
    index(tracker, files)
    gate = Gate()
    bad = str(root / "part/msg_1")
    gate.fail[bad] = PermissionError(errno.EACCES, "Permission denied", bad)
    gone = root / "part/msg_1/prt_1_0.json"
    gone.unlink()
    rec, _, deleted = make(root, db, clock, scandir=gate)
    with structlog.testing.capture_logs() as logs:
        assert list(await rec.scan_now()) == []
    assert deleted.calls == [] and rec.get_stats()["errors"] == 1
    assert any(e["event"] == "listing_failed" and e["dir"] == bad for e in logs)
    gate.fail.clear()
    new = write(root, "part/msg_1/prt_new.json")
    assert strs(await rec.scan_now()) == {str(new)}
    assert gate.calls.count(bad) == 2
    await rec.scan_now(full=True)
    assert deleted.paths == {str(gone)}  # rows never listed are settled by a full pass


async def test_failed_top_level_listing(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """EMFILE listing part/ keeps every part row; other directories are still reconciled."""
    files = make_tree(root)
    index(tracker, files)
    for p in files:
        p.unlink()
    gate = Gate()
    gate.fail[str(root / "part")] = OSError(errno.EMFILE, "Too many open files")
    rec, _, deleted = make(root, db, clock, scandir=gate)
    assert list(await rec.scan_now()) == []
    assert deleted.paths == {str(p) for p in files if "/part/" not in str(p)}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads through chmod 000; see the EACCES test")
async def test_chmod_000_directory(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A chmod 000 directory is an error, not a deletion of its files."""
    files = make_tree(root)
    index(tracker, files)
    (root / "part/msg_0").chmod(0)
    try:
        rec, _, deleted = make(root, db, clock)
        await rec.scan_now()
        assert deleted.calls == [] and rec.get_stats()["errors"] >= 1
    finally:
        (root / "part/msg_0").chmod(0o755)


async def test_pruned_directories_not_listed_nor_deleted(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A partial pass skips cold unchanged directories: nothing listed, nothing deleted."""
    files = make_tree(root)
    age_tree(root, 2 * HOUR)
    index(tracker, files)
    gate = Gate()
    rec, missing, deleted = make(root, db, clock, scandir=gate)
    await rec.scan_now()
    gate.calls.clear()
    assert list(await rec.scan_now()) == []
    stats = rec.get_stats()
    assert (gate.calls, stats["files_listed"], stats["last_scan_full"]) == ([], 0, False)
    assert missing.calls == deleted.calls == []


async def test_pruning_finds_new_and_deleted_files(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """Partial passes find a new file in a known directory, a deleted file, and a new
    directory, listing only what changed."""
    files = make_tree(root)
    age_tree(root, 60)
    index(tracker, files)
    gate = Gate()
    rec, _, deleted = make(root, db, clock, scandir=gate)
    await rec.scan_now()
    assert list(await rec.scan_now()) == [] and rec.get_stats()["dirs_listed"] == 0
    new = write(root, "part/msg_0/prt_0_new.json")
    (root / "part/msg_1/prt_1_1.json").unlink()
    gate.calls.clear()
    assert strs(await rec.scan_now()) == {str(new)}
    assert deleted.paths == {str(root / "part/msg_1/prt_1_1.json")}
    assert sorted(gate.calls) == [str(root / "part/msg_0"), str(root / "part/msg_1")]
    index(tracker, [new])
    fresh = write(root, "part/msg_new/prt.json")
    assert strs(await rec.scan_now()) == {str(fresh)}


async def test_vanished_directory_in_partial_pass(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """A removed cold directory's files are reported deleted by the next partial pass."""
    files = make_tree(root)
    age_tree(root, 2 * HOUR)
    index(tracker, files)
    rec, _, deleted = make(root, db, clock)
    await rec.scan_now()
    shutil.rmtree(root / "part/msg_0")
    assert list(await rec.scan_now()) == []
    assert deleted.paths == {str(p) for p in files if "/part/msg_0/" in str(p)}
    assert not rec.get_stats()["last_scan_full"]


async def test_full_pass_catches_changes_in_cold_dirs(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """An in-place modification and a new file in cold directories (invisible to partial
    passes) are found by the next full pass, every full_scan_every scans."""
    files = make_tree(root)
    age_tree(root, 2 * HOUR)
    index(tracker, files)
    rec, missing, _ = make(root, db, clock, full_scan_every=3, full_scan_cpu_share=1.0)
    await rec.scan_now()
    target = root / "part/msg_0/prt_0_0.json"
    with open(target, "r+") as f:  # in place: the directory mtime does not move
        f.write('{"a":1}')
    new = write(root, "message/ses_a/msg_late.json")
    for _ in range(2):
        clock.now += 30
        await rec.scan_now()
    assert missing.calls == []  # late by design: cold directories wait for the full pass
    clock.now += 30
    assert strs(await rec.scan_now()) == {str(target), str(new)}
    assert rec.get_stats()["scans_full"] == 2


async def test_full_pass_waits_for_cpu_budget(root: Path, db: Database, clock: FakeClock) -> None:
    """A due full pass is postponed until the last one's CPU time over the share has passed."""
    make_tree(root)
    rec, _, _ = make(root, db, clock, full_scan_every=1, full_scan_cpu_share=1e-9)
    await rec.scan_now()
    await rec.scan_now()
    stats = rec.get_stats()
    assert (stats["scans_full"], stats["scans_partial"], stats["full_scans_postponed"]) == (1, 1, 1)
    clock.now += 1e10  # more than any CPU time of a tiny tree's pass / 1e-9
    await rec.scan_now()
    assert rec.get_stats()["scans_full"] == 2


async def test_stats(root: Path, db: Database, clock: FakeClock) -> None:
    """get_stats reports scans, timing, files listed, findings per scan and in total."""
    files = make_tree(root)
    rec, _, _ = make(root, db, clock)
    await rec.scan_now()
    await rec.scan_now()
    stats = rec.get_stats()
    assert stats["scans_full"] == 1 and stats["scans_partial"] == 1
    assert stats["total"]["new"] == 2 * len(files) and stats["last_scan_at"] == clock.now
    assert stats["last_duration_s"] >= 0 and stats["files_listed"] > 0
    assert stats["dirs_known"] == 8 and stats["errors_total"] == 0


def test_racy_directory_listed_again(root: Path) -> None:
    """A directory whose mtime is within the racy window is listed again at the next pass;
    once old enough it is trusted and skipped."""
    make_tree(root)
    gate = Gate()
    lister = TreeLister(str(root), scandir=gate, racy_seconds=HOUR)
    lister.scan(full=False)
    gate.calls.clear()
    again = lister.scan(full=False)
    assert str(root / "part/msg_0") in gate.calls and again.dirs_listed == len(gate.calls)
    age_tree(root, 2 * HOUR)
    lister.scan(full=False)  # mtimes moved: listed once more, now trusted
    gate.calls.clear()
    assert lister.scan(full=False).dirs_listed == 0 and gate.calls == []


async def test_scan_feeds_a_bounded_accumulator_every_file_once(
    root: Path, db: Database, clock: FakeClock, tracker: FileTracker
) -> None:
    """Accumulator + reconciler: a scan finding far more files than the accumulator may hold
    waits for room instead of dropping any; batches respect the size cap and deliver every
    new and modified file exactly once, and a second scan finds nothing once they are indexed."""
    files = make_tree(root, messages=60, parts=40)  # 2,464 indexable files
    index(tracker, files[:100])
    for p in files[:10]:  # modified since indexed
        p.write_text('{"changed": true}')
    acc = FileBatchAccumulator(
        AccumulatorConfig(window_ms=50, max_files=100, max_pending=300, max_coalesced_files=300)
    )
    rec = Reconciler(root, db, on_missing_files=acc.add_many, clock=clock)
    taken: list[str] = []
    sizes: list[int] = []

    async def consume() -> None:
        async for batch in acc:
            sizes.append(len(batch.keys))
            taken.extend(batch.keys)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        await tg.start(acc.run)
        tg.start_soon(consume)
        found = await rec.scan_now()
        await acc.stop()
    expected = strs(files[100:]) | strs(files[:10])
    assert sorted(taken) == sorted(expected) == sorted(strs(found))
    assert max(sizes) <= 300
    index(tracker, [Path(p) for p in taken])
    assert len(await rec.scan_now()) == 0
