"""Listing split across shards and a child process: real trees, a real child process."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import FakeClock

from indexer_service.demo.synthetic import age_tree
from indexer_service.sources.json_tree.file_index import FileTracker, IndexedFile
from indexer_service.sources.json_tree.lister import TreeLister
from indexer_service.sources.json_tree.listing import Listing, ListingCancelled, ScanCancel
from indexer_service.sources.json_tree.reconciler import Reconciler
from indexer_service.sources.json_tree.sharded import ShardedLister
from indexer_service.store.database import Database

HOUR = 3600.0


def write(root: Path, rel: str, text: str = "{}") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_tree(root: Path, messages: int = 40, parts: int = 3) -> None:
    for rel in ("project/p1.json", "session/p1/ses_a.json", "todo/ses_a.json"):
        write(root, rel)
    for m in range(messages):
        write(root, f"message/ses_a/msg_{m}.json")
        for k in range(parts):
            write(root, f"part/msg_{m}/prt_{k}.json")


def rows(listing: Listing) -> set[tuple[str, int, int]]:
    out = set()
    for batch in listing.batches:
        d = batch.to_pydict()
        out |= set(zip(d["rel"], d["mtime_ns"], d["size"], strict=True))
    return out


def change(root: Path) -> None:
    """A new file in a known directory, a deleted file, a new and a removed directory, and a
    new flat file."""
    write(root, "part/msg_3/prt_new.json")
    (root / "part/msg_5/prt_0.json").unlink()
    write(root, "part/msg_new/prt_0.json")
    shutil.rmtree(root / "part/msg_7")
    write(root, "todo/ses_b.json")


def change_and_rewrite(root: Path) -> tuple[set[str], set[str]]:
    """`change`, and a file rewritten in place in a cold directory: (the paths a pass must
    find missing, the paths it must find deleted)."""
    change(root)
    with open(root / "part/msg_9/prt_1.json", "w") as f:
        f.write('{"a": 1}')
    new = ("part/msg_3/prt_new.json", "part/msg_new/prt_0.json", "todo/ses_b.json")
    gone = ("part/msg_5/prt_0.json", *(f"part/msg_7/prt_{k}.json" for k in range(3)))
    return {str(root / r) for r in (*new, "part/msg_9/prt_1.json")}, {str(root / r) for r in gone}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    make_tree(root)
    age_tree(root, 2 * HOUR)
    return root


def test_shards_list_the_tree_once_between_them(root: Path) -> None:
    """Two shards split from one lister list every file exactly once, in full and partial
    passes, and find the same deletions as a lister that was never split."""
    whole, half = TreeLister(str(root)), TreeLister(str(root))
    whole.scan(full=True)
    half.scan(full=True)
    other = TreeLister(str(root), shard=(1, 2))
    (state,) = half.split(2)
    other.restore(state)
    for full in (True, False):
        a, b = half.scan(full=full), other.scan(full=full)
        assert rows(a) | rows(b) == rows(whole.scan(full=full))
        assert not rows(a) & rows(b)
        assert (bool(rows(a)) and bool(rows(b))) == full  # a partial pass skips cold dirs
    change(root)
    expected, a, b = whole.scan(full=False), half.scan(full=False), other.scan(full=False)
    assert rows(a) | rows(b) == rows(expected) and not rows(a) & rows(b)
    assert sorted(a.gone + b.gone) == sorted(expected.gone)
    assert "part/msg_7/prt_0.json" in expected.gone  # a removed directory
    assert a.covered | b.covered == expected.covered


def test_child_process_lists_half_of_a_large_tree(root: Path) -> None:
    """Past ``min_files`` the first full pass starts a child; later passes, full and partial,
    list what a single lister lists; `close` ends the child."""
    lister, whole = ShardedLister(str(root), min_files=50), TreeLister(str(root))
    first = lister.scan(full=True)
    assert rows(first) == rows(whole.scan(full=True))
    pid = lister.child_pid
    assert lister.sharded and pid is not None
    try:
        assert rows(lister.scan(full=True)) == rows(whole.scan(full=True))
        assert lister.counts() == whole.counts()
        change(root)
        got, expected = lister.scan(full=False), whole.scan(full=False)
        assert rows(got) == rows(expected) and sorted(got.gone) == sorted(expected.gone)
    finally:
        lister.close()
    assert not lister.sharded and lister.child_pid is None
    with pytest.raises(ProcessLookupError):  # exited and reaped by close()
        os.kill(pid, 0)


@pytest.mark.parametrize(("known", "first_processes"), [(40 * 4 + 3, 2), (49, 1)])
def test_first_pass_over_a_large_index_is_split_from_its_start(
    root: Path, known: int, first_processes: int
) -> None:
    """When the index already holds ``min_files`` files (a restart), the child lists half of
    the first pass too; with fewer, the first pass is this process's and the child starts
    after it. Either way every pass lists what one lister lists."""
    lister, whole = ShardedLister(str(root), min_files=50), TreeLister(str(root))
    try:
        first = lister.scan(full=True, known_files=known)
        assert first.processes == first_processes
        assert (first.child_cpu_s > 0) == (first_processes == 2)
        assert rows(first) == rows(whole.scan(full=True))
        assert lister.sharded
        change(root)
        got, expected = lister.scan(full=False), whole.scan(full=False)
        assert got.processes == 2 and lister.counts() == whole.counts()
        assert rows(got) == rows(expected) and sorted(got.gone) == sorted(expected.gone)
        assert rows(lister.scan(full=True)) == rows(whole.scan(full=True))
    finally:
        lister.close()


def test_bad_names_and_skipped_entries_cross_to_the_child_and_back(root: Path) -> None:
    """A file and a folder whose names are not UTF-8, a FIFO and a folder named like a record:
    two processes list the same keys (``\\xNN`` for the bytes) and count the same skipped
    entries as one lister, and find the same deletions."""
    os.close(os.open(os.path.join(os.fsencode(root / "part/msg_3"), b"prt_\xff.json"), os.O_CREAT))
    bad = os.path.join(os.fsencode(root / "part"), b"msg_\xfe")
    os.mkdir(bad)
    os.close(os.open(os.path.join(bad, b"prt_0.json"), os.O_CREAT))
    os.mkfifo(root / "part/msg_4/prt_fifo.json")
    (root / "part/msg_5/prt_dir.json").mkdir()
    lister, whole = ShardedLister(str(root), min_files=50), TreeLister(str(root))
    try:
        expected = whole.scan(full=True)
        assert rows(lister.scan(full=True)) == rows(expected)
        keys = {rel for rel, _, _ in rows(expected)}
        assert {"part/msg_3/prt_\\xff.json", "part/msg_\\xfe/prt_0.json"} <= keys
        assert lister.sharded
        assert rows(lister.scan(full=True)) == rows(whole.scan(full=True))
        assert lister.counts() == whole.counts()
        assert whole.counts()[2] == {"fifo": 1, "folder": 1}
        shutil.rmtree(bad)
        got, expected = lister.scan(full=False), whole.scan(full=False)
        assert (
            sorted(got.gone)
            == sorted(expected.gone)
            == [os.fsdecode(bad + b"/prt_0.json")[len(str(root)) + 1 :]]
        )
    finally:
        lister.close()


def test_small_tree_stays_in_process(root: Path) -> None:
    lister = ShardedLister(str(root), min_files=10_000)
    lister.scan(full=True)
    assert not lister.sharded and lister.child_pid is None


def test_custom_scandir_stays_in_process(root: Path) -> None:
    """A child lists with os.scandir, so an injected scandir (tests, gates) keeps the whole
    listing here, however large the tree."""
    calls: list[str] = []

    def scandir(path: str) -> Any:
        calls.append(path)
        return os.scandir(path)

    lister = ShardedLister(str(root), scandir=scandir, min_files=50)
    lister.scan(full=True)
    lister.scan(full=True)
    assert not lister.sharded and lister.child_pid is None and calls


def test_killed_child_costs_one_local_pass(root: Path) -> None:
    """A child that dies is noticed at the next pass, which lists the whole tree here."""
    lister, whole = ShardedLister(str(root), min_files=50), TreeLister(str(root))
    lister.scan(full=True)
    whole.scan(full=True)
    pid = lister.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    change(root)
    with structlog.testing.capture_logs() as logs:
        got = lister.scan(full=False)
    assert rows(got) == rows(whole.scan(full=True)) and got.full
    assert [e["event"] for e in logs] == ["listing_child_failed"]
    assert not lister.sharded
    lister.close()


def test_cancelled_pass_leaves_the_child_in_step(root: Path) -> None:
    lister, whole = ShardedLister(str(root), min_files=50), TreeLister(str(root))
    lister.scan(full=True)
    cancel = threading.Event()
    cancel.set()
    try:
        with pytest.raises(ListingCancelled):
            lister.scan(full=True, cancel=cancel)
        lister.reset()  # what the reconciler does after a failed scan
        assert rows(lister.scan(full=False)) == rows(whole.scan(full=True))
        assert lister.sharded
    finally:
        lister.close()


def test_a_scan_cancel_wakes_the_thread_waiting_for_the_child() -> None:
    """`ScanCancel.set` (never blocking: the event loop calls it) makes it readable, so the
    scan's thread waiting on the child's pipe and on it wakes at once."""
    woke: list[list[Any]] = []
    with ScanCancel() as cancel:
        waiter = threading.Thread(target=lambda: woke.append(wait([cancel.fileno()])))
        waiter.start()
        assert not cancel.is_set()
        cancel.set()
        cancel.set()  # twice is fine
        waiter.join()
        assert woke == [[cancel.fileno()]] and cancel.is_set()


async def test_reconciler_with_a_listing_child(root: Path, db: Database, clock: FakeClock) -> None:
    """The reconciler finds new, modified and deleted files the same with a listing child,
    and stops the child when its ``async with`` ends."""
    found: list[Any] = []

    async def collect(paths: list[str]) -> None:
        found.extend(str(p) for p in paths)

    rec = Reconciler(
        root, db, on_missing_files=collect, on_deleted_files=collect, clock=clock,
        shard_min_files=50,
    )  # fmt: skip
    async with rec:
        first = {str(p) for p in await rec.scan_now()}
        assert len(first) == 40 * 4 + 3 and rec.get_stats()["listing_child_pid"] is not None
        FileTracker(db).mark_indexed_batch(
            [
                IndexedFile(p, "part", s.st_mtime, s.st_size, None, s.st_mtime_ns)
                for p in first
                for s in [os.stat(p)]
            ]
        )
        found.clear()
        expected_missing, expected_gone = change_and_rewrite(root)
        missing = {str(p) for p in await rec.scan_now(full=True)}
        assert missing == expected_missing
        assert set(found) - missing == expected_gone
        pid = rec.get_stats()["listing_child_pid"]
        assert pid is not None
    assert rec.get_stats()["listing_child_pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_restarted_reconciler_lists_its_first_pass_in_two_processes(
    root: Path, db: Database, clock: FakeClock
) -> None:
    """A reconciler started over an index that holds ``shard_min_files`` files of the tree
    (a service restarted) lists its first pass with the child, and finds what changed while
    it was stopped: new, modified and deleted files."""
    tracker = FileTracker(db)
    tracker.mark_indexed_batch(
        [
            IndexedFile(str(p), "part", s.st_mtime, s.st_size, None, s.st_mtime_ns)
            for p in root.rglob("*.json")
            for s in [p.stat()]
        ]
    )
    expected_missing, expected_gone = change_and_rewrite(root)
    deleted: list[str] = []

    async def collect(paths: list[str]) -> None:
        deleted.extend(str(p) for p in paths)

    rec = Reconciler(root, db, on_deleted_files=collect, clock=clock, shard_min_files=50)
    with structlog.testing.capture_logs() as logs:
        async with rec:
            missing = {str(p) for p in await rec.scan_now()}
    done = [e for e in logs if e["event"] == "reconcile_done"]
    assert [(e["full"], e["processes"]) for e in done] == [(True, 2)]
    assert missing == expected_missing and set(deleted) == expected_gone


def test_child_does_not_outlive_a_killed_parent(root: Path) -> None:
    """kill -9 of the process that started the child: the child sees its pipe close and
    exits (it is in its own session, so nothing else would stop it)."""
    code = (
        "import sys, time\n"
        "from indexer_service.sources.json_tree.sharded import ShardedLister\n"
        f"lister = ShardedLister({str(root)!r}, min_files=50)\n"
        "lister.scan(full=True)\n"
        "lister.scan(full=True)\n"
        "print('PID', lister.child_pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as parent:
        assert parent.stdout is not None
        pid = int(next(line for line in parent.stdout if line.startswith("PID")).split()[1])
        # not our child, so no wait(): a pidfd becomes readable when the process exits
        pidfd = os.pidfd_open(pid)
        try:
            assert select.select([pidfd], [], [], 0)[0] == []  # running
            parent.kill()
            assert select.select([pidfd], [], [], 10)[0] == [pidfd]  # exited within 10 s
        finally:
            os.close(pidfd)
