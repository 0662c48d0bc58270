"""FileTracker: status transitions, batch marking, retry backoff."""

from __future__ import annotations

import pytest
from conftest import FakeClock

from indexer_service.backoff import Backoff
from indexer_service.sources.json_tree.file_index import FailedFile, FileTracker, IndexedFile
from indexer_service.store.database import Database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def tracker(db: Database, clock: FakeClock) -> FileTracker:
    return FileTracker(db, retry=Backoff(base_seconds=30, cap_seconds=600), clock=clock)


def test_mark_indexed_then_get(tracker: FileTracker) -> None:
    """An indexed file reads back with its version, record id and status."""
    tracker.mark_indexed("/s/part/m/p.json", "part", 12.5, 40, "prt_1", mtime_ns=12_500_000_000)
    entry = tracker.get("/s/part/m/p.json")
    assert entry is not None
    assert (entry.status, entry.record_id, entry.mtime, entry.size, entry.mtime_ns) == (
        "indexed",
        "prt_1",
        12.5,
        40,
        12_500_000_000,
    )
    assert entry.indexed_at is not None
    assert tracker.get("/nope") is None


def test_batch_of_10000_in_one_call(tracker: FileTracker) -> None:
    """10,000 files are marked indexed in one call and counted by status and type."""
    rows = [IndexedFile(f"/s/part/m/p{i}.json", "part", 1.0, i, f"prt_{i}") for i in range(10_000)]
    tracker.mark_indexed_batch(rows)
    assert tracker.counts_by_status() == {"indexed": 10_000}
    assert tracker.counts_by_type() == {"part": {"indexed": 10_000}}
    entry = tracker.get("/s/part/m/p9999.json")
    assert entry is not None and entry.record_id == "prt_9999"


def test_error_keeps_record_id_and_counts_attempts(tracker: FileTracker, clock: FakeClock) -> None:
    """A failing version keeps the last good record id; repeated failures back off, capped."""
    tracker.mark_indexed("/p", "part", 1.0, 10, "prt_1")
    delays = []
    for _ in range(7):
        tracker.mark_error("/p", "truncated JSON at byte 5", file_type="part", mtime=2.0, size=5)
        entry = tracker.get("/p")
        assert entry is not None and entry.retry_after is not None
        delays.append(entry.retry_after - clock.now)
    assert entry is not None and entry.status == "error"
    assert entry.record_id == "prt_1"
    assert entry.error_message == "truncated JSON at byte 5"
    assert entry.attempts == 7
    assert delays == [30, 60, 120, 240, 480, 600, 600]


def test_error_attempts_reset_when_the_file_changes(tracker: FileTracker) -> None:
    """A new version that fails again starts its backoff from the first attempt."""
    tracker.mark_error("/p", "empty file", file_type="part", mtime=1.0, size=0)
    tracker.mark_error("/p", "empty file", file_type="part", mtime=1.0, size=0)
    tracker.mark_error("/p", "NUL bytes", file_type="part", mtime=2.0, size=9)
    entry = tracker.get("/p")
    assert entry is not None and entry.attempts == 1 and entry.error_message == "NUL bytes"


def test_needs_indexing_decisions(tracker: FileTracker, clock: FakeClock) -> None:
    """Unknown, changed and due-error files need indexing; unchanged ones do not."""
    tracker.mark_indexed("/a", "part", 1.0, 10, "a", mtime_ns=1_000_000_000)
    assert not tracker.needs_indexing("/a", 1.0, 10, mtime_ns=1_000_000_000)
    assert tracker.needs_indexing("/a", 1.0, 10, mtime_ns=1_000_000_001)  # same size, newer
    assert tracker.needs_indexing("/a", 1.0, 11, mtime_ns=1_000_000_000)  # same mtime, new size
    assert tracker.needs_indexing("/unknown", 1.0, 1)

    tracker.mark_error("/b", "bad", file_type="part", mtime=5.0, size=3)
    assert not tracker.needs_indexing("/b", 5.0, 3)  # backing off
    clock.now += 31
    assert tracker.needs_indexing("/b", 5.0, 3)  # due
    assert tracker.needs_indexing("/b", 6.0, 3)  # changed: always


def test_v1_rows_compare_on_float_mtime(db: Database, tracker: FileTracker) -> None:
    """Rows without mtime_ns (written by v1) are compared on their float mtime."""
    db.cursor().execute(
        "INSERT INTO file_index (file_path, file_type, mtime, size) VALUES ('/v1', 'part', 3.5, 7)"
    )
    assert not tracker.needs_indexing("/v1", 3.5, 7, mtime_ns=3_500_000_000)
    assert tracker.needs_indexing("/v1", 3.6, 7, mtime_ns=3_600_000_000)


def test_indexing_again_clears_the_error(tracker: FileTracker) -> None:
    """A file that indexes after failing is back to 'indexed' with no message or attempts."""
    tracker.mark_error_batch([FailedFile("/p", "part", 1.0, 1, "bad")])
    tracker.mark_indexed_batch([IndexedFile("/p", "part", 2.0, 2, "prt")])
    entry = tracker.get("/p")
    assert entry is not None
    assert (entry.status, entry.error_message, entry.attempts) == ("indexed", None, 0)


def test_remove_forgets_files(tracker: FileTracker, clock: FakeClock) -> None:
    """Removed files are gone, with their counts."""
    tracker.mark_indexed_batch([IndexedFile(f"/i{i}", "part", 1, 1, None) for i in range(3)])
    for i in range(3):
        clock.now += 1
        tracker.mark_error(f"/e{i}", f"bad {i}", file_type="message")
    assert tracker.remove(["/i0", "/e0", "/never"]) == 2
    assert tracker.counts_by_status() == {"indexed": 2, "error": 2}
    assert tracker.remove([]) == 0


def test_batch_inside_a_failed_transaction_leaves_nothing(
    db: Database, tracker: FileTracker
) -> None:
    """Batch marks join the caller's transaction and vanish with its rollback."""
    with pytest.raises(RuntimeError), db.transaction():
        tracker.mark_indexed_batch([IndexedFile("/x", "part", 1, 1, "x")])
        raise RuntimeError("crash between rows and commit")
    assert tracker.get("/x") is None


def test_retry_policy_is_bounded() -> None:
    """Backoff doubles from the base and never exceeds the cap."""
    policy = Backoff(base_seconds=10, cap_seconds=100)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 50)] == [10, 20, 40, 80, 100, 100]
