"""TreeLister: lists the storage tree for the reconciler, ``os.scandir`` + ``stat`` into Arrow.

It walks only what `layout` indexes (the `FILE_TYPES` directories at their depth) and remembers,
per directory, its mtime, the newest mtime seen in it and its file names (~70 MB for 1M files
in 200k directories). Entries change only together with the directory mtime, so an unchanged
directory is not listed again: a full pass stats its known names (no open or getdents), a
partial pass skips it unless it is *hot* (it or a file in it changed within ``hot_seconds``). A
directory mtime within ``racy_seconds`` of the scan is not trusted (a second change in the same
timestamp tick would not move it): listed again next time. A directory that cannot be listed
goes to ``failed``, never to ``gone``. Entries that are not record files (links out of the root,
FIFOs, folders where files belong...) are handled as `entries` says, and the skipped ones are
remembered per directory, like its file names. Each pass is a `walk.Walk`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import pyarrow as pa

from indexer_service.sources.json_tree import entries
from indexer_service.sources.json_tree.layout import FILE_TYPES, NESTED
from indexer_service.sources.json_tree.listing import (
    GONE,
    CancelFlag,
    ListerState,
    Listing,
    Scandir,
    TopDir,
    shard_of,
)
from indexer_service.sources.json_tree.walk import Walk, WalkSettings

__all__ = ["TreeLister"]


class TreeLister:
    """Lists the tree under ``root``; not thread-safe (one scan at a time).

    ``shard=(i, n)`` lists only the subdirectories of `NESTED` directories whose `shard_of` is
    ``i`` (and, for ``i == 0``, the flat directories): n listers, one per shard, together list
    the tree once.
    """

    def __init__(
        self,
        root: str,
        *,
        scandir: Scandir = os.scandir,
        hot_seconds: float = 900.0,
        racy_seconds: float = 2.0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        self.root = root
        self.shard = shard
        self._scandir = scandir
        self._hot_ns = int(hot_seconds * 1e9)
        self._racy_ns = int(racy_seconds * 1e9)
        self._root_id: tuple[int, int] | None = None
        self._tops: dict[str, TopDir] = {}

    def split(self, shards: int) -> list[ListerState]:
        """Become shard 0 of ``shards`` and return the memory of shards 1..n-1, for listers
        created with ``shard=(i, shards)`` (`restore`). Only an unsharded lister splits."""
        if self.shard != (0, 1):
            raise ValueError("only an unsharded lister can split")
        out = [ListerState(self._root_id, {}) for _ in range(shards)]
        for name, top in self._tops.items():
            n = shards if name in NESTED else 1  # flat directories stay with shard 0
            parts = [TopDir(top.ino, top.mtime_ns) for _ in range(n)]
            for key, packed in top.dirs.items():
                parts[shard_of(key, n)].dirs[key] = packed
            for key in top.hot:
                parts[shard_of(key, n)].hot.add(key)
            for key, skipped in top.skipped.items():  # "" (the folder's own): shard 0's
                parts[shard_of(key, n) if key else 0].skipped[key] = skipped
            for i, part in enumerate(parts):
                out[i].tops[name] = part
        self.shard = (0, shards)
        self._tops = out[0].tops
        return out[1:]

    def restore(self, state: ListerState) -> None:
        """Take over the memory `split` handed out for this lister's shard."""
        self._root_id, self._tops = state.root_id, state.tops

    def reset(self) -> None:
        """Forget everything: the next pass lists the whole tree."""
        self._root_id = None
        self._tops = {}

    @property
    def primed(self) -> bool:
        return self._root_id is not None

    def counts(self) -> tuple[int, int, dict[str, int]]:
        """(directories remembered, hot directories, entries skipped by kind)."""
        tops = list(self._tops.values())  # a scan thread may add or drop tops meanwhile
        skipped: dict[str, int] = {}
        for t in tops:
            for found in list(t.skipped.values()):
                for _, kind in found:
                    skipped[kind] = skipped.get(kind, 0) + 1
        return sum(len(t.dirs) for t in tops), sum(len(t.hot) for t in tops), skipped

    def scan(self, *, full: bool, cancel: CancelFlag | None = None, stat: bool = True) -> Listing:
        """One pass; full when asked or when nothing is remembered (first pass, after reset).
        ``stat=False`` on a full pass lists the files without their versions (null columns)
        and leaves every directory hot, so the next pass stats them: for a first pass that
        only needs the names (an index that holds none of the files)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            missing = isinstance(exc, GONE)
            if missing:
                self.reset()
            return Listing(unavailable=exc.strerror or str(exc), root_missing=missing)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._root_id:
                self.reset()
            how = WalkSettings(
                self._scandir, self.shard, self._hot_ns, self._racy_ns, cancel or threading.Event()
            )
            full = full or not self.primed
            walk = Walk(self.root, fd, self._tops, how, full=full, stat=stat)
            for top in FILE_TYPES:
                if top in NESTED or self.shard[0] == 0:  # flat directories are shard 0's
                    walk.top(top)
            walk.flush()
            self._root_id = (st.st_dev, st.st_ino)
            return walk.out
        except BaseException:
            self.reset()
            raise
        finally:
            os.close(fd)

    def stat_files(self, rels: Sequence[str]) -> pa.RecordBatch:
        """Stat single files (keys relative to the root); missing or unreadable ones are left
        out."""
        return entries.stat_files(self.root, rels)

    def confirm_gone(self, rels: Sequence[str], failed: Sequence[str]) -> tuple[list[str], int]:
        """(the indexable files a stat says are not there, outside ``failed`` directories; how
        many could not be checked)."""
        return entries.confirm_gone(self.root, rels, failed)
