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
remembered per directory, like its file names.
"""

from __future__ import annotations

import os
import stat as st_mode
import threading
import time
from collections.abc import Sequence

import pyarrow as pa

from indexer_service.sources.json_tree import entries
from indexer_service.sources.json_tree.entries import Links
from indexer_service.sources.json_tree.layout import FILE_TYPES, NESTED, escape
from indexer_service.sources.json_tree.listing import (
    GONE,
    SCHEMA,
    CancelFlag,
    ListerState,
    Listing,
    ListingCancelled,
    Scandir,
    Skipped,
    TopDir,
    indexable_name,
    pack_dir,
    shard_of,
    unpack_dir,
)

__all__ = ["TreeLister"]

_BATCH_ROWS = 65_536
_TYPE, _REG = st_mode.S_IFMT(0o170000), st_mode.S_IFREG


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

    def scan(self, *, full: bool, cancel: CancelFlag | None = None) -> Listing:
        """One pass; full when asked or when nothing is remembered (first pass, after reset)."""
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
            walk = _Walk(self, fd, full or not self.primed, cancel or threading.Event())
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


class _Walk:
    """The state of one pass."""

    def __init__(self, lister: TreeLister, fd: int, full: bool, cancel: CancelFlag) -> None:
        self.l, self.fd, self.full, self.cancel = lister, fd, full, cancel
        self.index, self.shards = lister.shard
        now = time.time_ns()
        self.hot_cutoff = now - lister._hot_ns
        self.racy_cutoff = now - lister._racy_ns
        self.out = Listing(full=full)
        self.links = Links(lister.root)
        self.rel: list[str] = []
        self.mt: list[float] = []
        self.ns: list[int] = []
        self.sz: list[int] = []

    def top(self, top: str) -> None:
        tops = self.l._tops
        prev = tops.get(top)
        try:
            st = self.links.folder(self.fd, top)
        except GONE:
            if prev is not None:
                self._vanish(prev, top, list(prev.dirs))
                del tops[top]
            return
        except OSError as exc:
            self._fail(top, exc)
            return
        self.out.tops += 1
        if prev is None or prev.ino != st.st_ino:
            if prev is not None:
                self._vanish(prev, top, list(prev.dirs))
            prev = tops[top] = TopDir(st.st_ino)
        if top not in NESTED:
            if self.full or prev.mtime_ns != st.st_mtime_ns or "" in prev.hot:
                self._leaf(prev, top, "", st)
            prev.mtime_ns = unpack_dir(prev.dirs.get(""))[0]
            return
        checks = list(prev.dirs if self.full else prev.hot)
        if prev.mtime_ns != st.st_mtime_ns:
            subs = self._subdirs(prev, top)
            if subs is None:
                return
            self._vanish(prev, top, [s for s in prev.dirs if s not in subs])
            for sub in subs - prev.dirs.keys():
                self._leaf(prev, f"{top}/{sub}", sub, None)
            prev.mtime_ns = self._trusted(st.st_mtime_ns)
        for sub in checks:
            if sub in prev.dirs:
                self._leaf(prev, f"{top}/{sub}", sub, None)

    def _subdirs(self, t: TopDir, top: str) -> set[str] | None:
        """The subdirectories of a nested top-level directory in this shard (None: failed)."""
        self.out.dirs_listed += 1
        subs: set[str] = set()
        skipped: list[tuple[str, str]] = []
        try:
            with self.l._scandir(f"{self.l.root}/{top}") as it:
                for e in it:
                    if e.name[0] == ".":
                        continue
                    if e.is_dir(follow_symlinks=False):
                        subs.add(e.name)
                    elif self.index == 0 and (kind := entries.misplaced(e)) is not None:
                        skipped.append((e.name, kind))
        except OSError as exc:
            t.mtime_ns = None
            self._fail(top, exc)
            return None
        if self.index == 0:
            self._remember(t, top, "", tuple(skipped))
        if self.shards > 1:
            subs = {s for s in subs if shard_of(s, self.shards) == self.index}
        return subs

    def _remember(self, t: TopDir, reldir: str, key: str, skipped: Skipped) -> None:
        """Keep what a listing of ``reldir`` skipped; hand on what it had not skipped before."""
        self.out.skipped += entries.remember(t.skipped, key, reldir, skipped)

    def _trusted(self, mtime_ns: int) -> int | None:
        return mtime_ns if mtime_ns <= self.racy_cutoff else None

    def _leaf(self, t: TopDir, reldir: str, key: str, st: os.stat_result | None) -> None:
        if self.cancel.is_set():
            raise ListingCancelled
        out = self.out
        out.dirs_checked += 1
        packed = t.dirs.get(key)
        prev_mtime, prev_newest, prev_names = unpack_dir(packed)
        try:
            if st is None:
                st = os.stat(reldir, dir_fd=self.fd)
        except GONE:  # raced with its deletion: the parent's next listing decides
            out.failed.append(escape(reldir))
            if packed is not None:
                t.dirs[key] = pack_dir(None, prev_newest, prev_names)
                t.hot.add(key)
            return
        except OSError as exc:
            self._fail(reldir, exc, t, key)
            return
        mtime = st.st_mtime_ns
        if packed is None or prev_mtime != mtime:
            out.dirs_listed += 1
            try:
                names, newest, ok, skipped = self._list_dir(reldir)
            except OSError as exc:
                self._fail(reldir, exc, t, key)
                return
            self._remember(t, reldir, key, skipped)
            if prev_names and not self.full:
                kept = set(names)
                pre = reldir + "/"
                out.gone.extend(pre + n for n in prev_names.split("/") if n not in kept)
            joined, changed = "/".join(names), False
        else:
            joined, newest, ok, changed = self._stat_names(reldir, prev_names)
        newest = max(newest, mtime)
        trusted = self._trusted(mtime) if ok and not changed else None
        t.dirs[key] = pack_dir(trusted, newest, joined)
        if trusted is None or newest >= self.hot_cutoff:
            t.hot.add(key)
        else:
            t.hot.discard(key)
        if ok:
            out.covered.add(reldir)
        else:
            out.failed.append(escape(reldir))
        if len(self.rel) >= _BATCH_ROWS:
            self.flush()

    def _list_dir(self, reldir: str) -> tuple[list[str], int, bool, Skipped]:
        """scandir + stat: (names, newest mtime, complete, entries skipped)."""
        names: list[str] = []
        skipped: list[tuple[str, str]] = []
        newest, ok, pre = 0, True, reldir + "/"
        rel, mt, ns, sz = self.rel.append, self.mt.append, self.ns.append, self.sz.append
        with self.l._scandir(f"{self.l.root}/{reldir}") as it:
            for e in it:
                n = e.name
                if n[0] == ".":
                    continue
                try:
                    if e.is_file(follow_symlinks=False):  # from readdir: no system call
                        if not indexable_name(n):
                            continue
                        s = e.stat()
                    else:
                        found, kind = entries.other(e, self.links)
                        if kind is not None:
                            skipped.append((n, kind))
                        if found is None:
                            continue
                        s = found
                except GONE:
                    continue
                except OSError as exc:  # keep the name: unknown is not deleted
                    self.out.errors.append((escape(pre + n), exc.strerror or str(exc)))
                    names.append(n)
                    ok = False
                    continue
                names.append(n)
                rel(pre + n)
                mt(s.st_mtime)
                ns(m := s.st_mtime_ns)
                sz(s.st_size)
                if m > newest:
                    newest = m
        return names, newest, ok, tuple(skipped)

    def _stat_names(self, reldir: str, names: str) -> tuple[str, int, bool, bool]:
        """Stat the known files of an unchanged directory: (names, newest mtime, complete,
        changed). A file found missing makes the directory untrusted: it is listed next time."""
        newest, ok, pre, fd, stat = 0, True, reldir + "/", self.fd, os.stat
        rel, mt, ns, sz = self.rel.append, self.mt.append, self.ns.append, self.sz.append
        gone: list[str] = []
        for n in names.split("/") if names else ():
            r = pre + n
            try:
                s = stat(r, dir_fd=fd, follow_symlinks=False)
                if s.st_mode & _TYPE != _REG:  # a link, as when it was listed
                    s, inside = self.links.stat(f"{self.l.root}/{r}")
                    if inside and s.st_mode & _TYPE != _REG:
                        raise FileNotFoundError(r)  # no longer a file: listed next time
            except GONE:
                gone.append(n)
                continue
            except OSError as exc:
                self.out.errors.append((escape(r), exc.strerror or str(exc)))
                ok = False
                continue
            rel(r)
            mt(s.st_mtime)
            ns(m := s.st_mtime_ns)
            sz(s.st_size)
            if m > newest:
                newest = m
        if not gone:
            return names, newest, ok, False
        if not self.full:
            self.out.gone.extend(pre + n for n in gone)
        drop = set(gone)
        return "/".join(n for n in names.split("/") if n not in drop), newest, ok, True

    def _vanish(self, t: TopDir, top: str, keys: list[str]) -> None:
        for key in keys:
            names = unpack_dir(t.dirs.pop(key))[2]
            t.hot.discard(key)
            t.skipped.pop(key, None)
            if not self.full and names:
                pre = f"{top}/{key}/" if key else f"{top}/"
                self.out.gone.extend(pre + n for n in names.split("/"))

    def _fail(self, reldir: str, exc: OSError, t: TopDir | None = None, key: str = "") -> None:
        self.out.failed.append(escape(reldir))
        self.out.errors.append((escape(reldir), exc.strerror or str(exc)))
        if t is not None:  # untrusted and hot: listed again at the next pass
            _, newest, names = unpack_dir(t.dirs.get(key))
            t.dirs[key] = pack_dir(None, newest, names)
            t.hot.add(key)

    def flush(self) -> None:
        if not self.rel:
            return
        cols = (
            entries.keys(self.rel),
            pa.array(self.mt, pa.float64()),
            pa.array(self.ns, pa.int64()),
            pa.array(self.sz, pa.int64()),
        )
        self.out.batches.append(pa.record_batch(list(cols), schema=SCHEMA))
        for col in (self.rel, self.mt, self.ns, self.sz):
            col.clear()
