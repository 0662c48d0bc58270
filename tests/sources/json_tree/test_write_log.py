"""WriteLog: which paths were written, as the loader asks before a write."""

from __future__ import annotations

from indexer_service.sources.json_tree.write_log import WriteLog


def write(log: WriteLog, paths: list[str]) -> None:
    log.written(log.begin(), paths)


def test_a_path_written_lately_is_known_until_twice_the_window_has_passed() -> None:
    """The loader deletes first only the rows it may have written itself: a path stays known
    for at least ``recent`` paths written after it, and is forgotten after twice that."""
    log = WriteLog(recent=4)
    write(log, ["a"])
    assert log.wrote_lately(["x", "a"])
    assert not log.wrote_lately(["x", "y"])
    write(log, ["b", "c", "d"])  # the window is full: "a" moves to the older half
    write(log, ["e", "f", "g"])
    assert log.wrote_lately(["a"])
    write(log, ["h"])  # the second window is full too: "a" is forgotten
    assert not log.wrote_lately(["a"])
    assert log.wrote_lately(["e", "h"])
