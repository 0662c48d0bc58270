"""The first pass over an index that holds none of the tree's files lists names only.

Real files in tmp_path and a real DuckDB file; a listing function that counts the ``stat``
calls made on the entries it hands out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from indexer_service.demo.synthetic import age_tree
from indexer_service.sources.json_tree.file_index import FileTracker, IndexedFile
from indexer_service.sources.json_tree.layout import NESTED
from indexer_service.sources.json_tree.lister import TreeLister
from indexer_service.sources.json_tree.reconciler import Reconciler
from indexer_service.store.database import Database


class _Entry:
    """An `os.DirEntry` whose ``stat`` calls are counted."""

    def __init__(self, entry: os.DirEntry[str], counter: StatCounter) -> None:
        self._entry, self._counter = entry, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._entry, name)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self._counter.stats += 1
        return self._entry.stat(follow_symlinks=follow_symlinks)


class StatCounter:
    """A scandir whose entries count their ``stat`` calls."""

    def __init__(self) -> None:
        self.stats = 0

    @contextmanager
    def __call__(self, path: str) -> Iterator[Iterator[Any]]:
        with os.scandir(path) as it:
            yield (_Entry(e, self) for e in it)


class Received:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, paths: list[str]) -> None:
        self.paths += paths


def make_tree(root: Path) -> list[Path]:
    files = [root / "project" / "prj_a.json", root / "session" / "prj_a" / "ses_a.json"]
    files += [root / "message" / "ses_a" / f"msg_{m}.json" for m in range(3)]
    files += [root / "part" / f"msg_{m}" / f"prt_{m}_{k}.json" for m in range(3) for k in range(4)]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text('{"v": 1}')
    age_tree(root, 3600)  # cold: nothing changed within the last 15 minutes
    return files


def mark_indexed(db: Database, files: list[Path]) -> None:
    rows = []
    for f in files:
        st = f.stat()
        ftype = f.parent.parent.name if f.parent.parent.name in NESTED else f.parent.name
        rows.append(IndexedFile(str(f), ftype, st.st_mtime, st.st_size, None, st.st_mtime_ns))
    FileTracker(db).mark_indexed_batch(rows)


async def test_a_first_pass_over_an_empty_index_stats_no_file(tmp_path: Path, db: Database) -> None:
    """With nothing indexed, every file listed is new: the pass reads names, stats none, and
    hands them out in path order, as a compared pass does."""
    root = tmp_path / "storage"
    files = make_tree(root)
    counter, received = StatCounter(), Received()
    rec = Reconciler(root, db, on_missing_files=received, scandir=counter)
    await rec.scan_now()
    assert received.paths == sorted(map(str, files))
    assert counter.stats == 0


async def test_once_the_index_holds_files_a_first_pass_stats_them(
    tmp_path: Path, db: Database
) -> None:
    """After a restart (the index holds rows) the first pass stats every file, to compare."""
    root = tmp_path / "storage"
    files = make_tree(root)
    mark_indexed(db, files[:1])
    counter, received = StatCounter(), Received()
    rec = Reconciler(root, db, on_missing_files=received, scandir=counter)
    await rec.scan_now()
    assert sorted(received.paths) == sorted(map(str, files[1:]))
    assert counter.stats == len(files)


async def test_a_rewrite_in_a_cold_directory_after_a_names_only_pass_is_found(
    tmp_path: Path, db: Database
) -> None:
    """A first pass that stats nothing leaves every directory to be stat'ed by the next
    (partial) pass, so a file rewritten in place in an old directory, whose own mtime does not
    move, is still found then, not only at the next full pass."""
    root = tmp_path / "storage"
    files = make_tree(root)
    received = Received()
    rec = Reconciler(root, db, on_missing_files=received, full_scan_every=10)
    await rec.scan_now()
    mark_indexed(db, files)
    target = files[-1]
    parent_ns = target.parent.stat().st_mtime_ns
    with target.open("r+") as f:  # in place: the directory's mtime does not change
        f.write('{"v": 2}')
    assert target.parent.stat().st_mtime_ns == parent_ns
    received.paths.clear()
    await rec.scan_now()
    assert rec.get_stats()["last_scan_full"] is False
    assert received.paths == [str(target)]
    await rec.scan_now()  # that pass knew every version: the old directories are cold again
    assert rec.get_stats()["dirs_hot"] == 1  # only the rewritten file's


def test_a_names_only_listing_leaves_versions_unknown_and_directories_hot(tmp_path: Path) -> None:
    """`TreeLister.scan(stat=False)` lists the same files as a full pass with null versions,
    and every directory stays hot until a pass stats its files."""
    root = tmp_path / "storage"
    files = make_tree(root)
    lister = TreeLister(str(root))
    listing = lister.scan(full=True, stat=False)
    rels = [r for b in listing.batches for r in b.column("rel").to_pylist()]
    assert sorted(rels) == sorted(str(f.relative_to(root)) for f in files)
    assert all(b.column("mtime_ns").null_count == b.num_rows for b in listing.batches)
    dirs, hot, _ = lister.counts()
    assert hot == dirs == 6
    again = lister.scan(full=False)
    assert sum(b.num_rows - b.column("mtime_ns").null_count for b in again.batches) == len(files)
    assert lister.counts()[1] == 0
