"""Walk: one pass of `lister.TreeLister` over the storage tree, ``os.scandir`` + ``stat``.

It lists the record folders at their depth, stats the files into Arrow batches and keeps the
lister's per-directory memory (`listing.TopDir`) up to date as it goes: a directory whose mtime
has not moved is not listed again, its known names are stat'ed (full pass) or it is skipped
unless hot (partial pass).
"""

from __future__ import annotations

import os
import stat as st_mode
import time
from dataclasses import dataclass

import pyarrow as pa

from indexer_service.sources.json_tree import entries
from indexer_service.sources.json_tree.entries import Links
from indexer_service.sources.json_tree.layout import NESTED, escape
from indexer_service.sources.json_tree.listing import (
    GONE,
    SCHEMA,
    CancelFlag,
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

__all__ = ["Walk", "WalkSettings"]

_TYPE, _REG = st_mode.S_IFMT(0o170000), st_mode.S_IFREG


BATCH_ROWS = 65_536  # files per Arrow batch of a listing


@dataclass(frozen=True)
class WalkSettings:
    """How a pass walks: its listing function, its shard ``(i, n)``, the ages (ns) under which
    a directory is hot or its mtime not trusted, and the flag that cancels it."""

    scandir: Scandir
    shard: tuple[int, int]
    hot_ns: int
    racy_ns: int
    cancel: CancelFlag


class Walk:
    """One pass over the record folders of the root open as ``fd``, updating ``tops`` (the
    lister's memory) as it goes: `top` lists one folder, `flush` closes the last batch."""

    def __init__(
        self,
        root: str,
        fd: int,
        tops: dict[str, TopDir],
        how: WalkSettings,
        *,
        full: bool,
        stat: bool = True,
    ) -> None:
        self.root, self.fd, self.tops, self.how, self.full = root, fd, tops, how, full
        self.stat = stat or not full  # only a full pass may leave its files unstat'ed
        self.index, self.shards = how.shard
        now = time.time_ns()
        self.hot_cutoff = now - how.hot_ns
        self.racy_cutoff = now - how.racy_ns
        self.out = Listing(full=full)
        self.links = Links(root)
        self.rel: list[str] = []
        self.mt: list[float] = []
        self.ns: list[int] = []
        self.sz: list[int] = []

    def top(self, top: str) -> None:
        tops = self.tops
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
            with self.how.scandir(f"{self.root}/{top}") as it:
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
        if self.how.cancel.is_set():
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
        if trusted is None or newest >= self.hot_cutoff or not self.stat:
            t.hot.add(key)  # files not stat'ed: the next pass stats them, then it knows
        else:
            t.hot.discard(key)
        if ok:
            out.covered.add(reldir)
        else:
            out.failed.append(escape(reldir))
        if len(self.rel) >= BATCH_ROWS:
            self.flush()

    def _list_dir(self, reldir: str) -> tuple[list[str], int, bool, Skipped]:
        """scandir + stat: (names, newest mtime, complete, entries skipped)."""
        names: list[str] = []
        skipped: list[tuple[str, str]] = []
        s: os.stat_result | None
        newest, ok, pre, stat = 0, True, reldir + "/", self.stat
        rel, mt, ns, sz = self.rel.append, self.mt.append, self.ns.append, self.sz.append
        with self.how.scandir(f"{self.root}/{reldir}") as it:
            for e in it:
                n = e.name
                if n[0] == ".":
                    continue
                try:
                    if e.is_file(follow_symlinks=False):  # from readdir: no system call
                        if not indexable_name(n):
                            continue
                        s = e.stat() if stat else None
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
                if not stat or s is None:  # the version of every file of the pass is unknown
                    continue
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
                    s, inside = self.links.stat(f"{self.root}/{r}")
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
        n = len(self.rel)
        cols = (
            entries.keys(self.rel),
            pa.array(self.mt, pa.float64()) if self.stat else pa.nulls(n, pa.float64()),
            pa.array(self.ns, pa.int64()) if self.stat else pa.nulls(n, pa.int64()),
            pa.array(self.sz, pa.int64()) if self.stat else pa.nulls(n, pa.int64()),
        )
        self.out.batches.append(pa.record_batch(list(cols), schema=SCHEMA))
        for col in (self.rel, self.mt, self.ns, self.sz):
            col.clear()
