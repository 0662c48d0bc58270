"""What the reconciler's listing makes of an entry that is not a plain record file.

A link is followed only when it leads to a regular file inside the storage root (``realpath``,
asked for links alone: the listing learns an entry is a link from ``readdir`` at no cost). A link
that leads out of the root is listed as the link itself, so that the loader's error row for it
(`files.OutsideRoot`) keeps one version. FIFOs, sockets, devices and folders where only record
files belong are never opened: they are *skipped* entries, counted by kind (`SKIPPED_KINDS`) and
named once in the log. Keys of names that are not UTF-8 (`layout.escape`) are turned back into
the names on disk before a ``stat``.
"""

from __future__ import annotations

import errno
import os
import stat as st_mode
from collections.abc import Sequence

import pyarrow as pa

from indexer_service.sources.json_tree.layout import classify_relative, escape, unescape
from indexer_service.sources.json_tree.listing import GONE, SCHEMA, Skipped, indexable_name

__all__ = [
    "SKIPPED_KINDS",
    "Links",
    "confirm_gone",
    "keys",
    "misplaced",
    "mode_kind",
    "other",
    "remember",
    "stat_files",
]

SKIPPED_KINDS = ("fifo", "socket", "device", "folder", "misplaced", "link")
"""Entries skipped without being opened: a FIFO, a socket, a device; a folder where record files
belong (one named like a record, or the first level of a tree deeper than the layout); a file
where the layout has folders (``part/prt_x.json``); a link to a folder, which is not followed."""


def mode_kind(mode: int) -> str | None:
    """The skipped kind of an entry of this mode where a record file belongs; None for a
    regular file."""
    if st_mode.S_ISREG(mode):
        return None
    if st_mode.S_ISDIR(mode):
        return "folder"
    if st_mode.S_ISFIFO(mode):
        return "fifo"
    if st_mode.S_ISSOCK(mode):
        return "socket"
    if st_mode.S_ISCHR(mode) or st_mode.S_ISBLK(mode):
        return "device"
    return "link"


def misplaced(e: os.DirEntry[str]) -> str | None:
    """The skipped kind of an entry that is not a folder where the layout has folders; None
    for a file not named like a record."""
    if e.is_symlink():
        return "link"  # links to folders are not followed
    kind = mode_kind(e.stat(follow_symlinks=False).st_mode)
    return "misplaced" if kind is None and indexable_name(e.name) else kind


def other(e: os.DirEntry[str], links: Links) -> tuple[os.stat_result | None, str | None]:
    """(the stat to list it by, or None; its skipped kind, or None) of an entry that is not a
    regular file, where record files belong: a link to a record file is listed."""
    if e.is_dir(follow_symlinks=False):
        return None, "folder"
    if e.is_symlink():
        if not indexable_name(e.name):
            return None, None
        s, inside = links.stat(e.path)
        kind = mode_kind(s.st_mode) if inside else None
        return (None if kind else s), kind
    return None, mode_kind(e.stat(follow_symlinks=False).st_mode)


def remember(
    memory: dict[str, Skipped], key: str, reldir: str, skipped: Skipped
) -> list[tuple[str, str]]:
    """Keep in ``memory[key]`` what a listing of ``reldir`` skipped; return (key, kind) of the
    entries it had not skipped before."""
    before = memory.get(key, ())
    if skipped == before:
        return []
    if skipped:
        memory[key] = skipped
    else:
        memory.pop(key, None)
    pre = reldir + "/"
    return [(escape(pre + n), k) for n, k in skipped if (n, k) not in before]


def keys(names: list[str]) -> pa.Array:
    """Paths as an Arrow column of keys: escaped only when one is not valid UTF-8 (the common
    case costs nothing more than the conversion)."""
    try:
        return pa.array(names, pa.string())
    except UnicodeEncodeError:
        return pa.array([escape(n) for n in names], pa.string())


class Links:
    """Links under one storage root (its real path is taken once, when the object is made)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.base = os.path.realpath(root).rstrip("/") + "/"

    def folder(self, dir_fd: int, name: str) -> os.stat_result:
        """The stat of the folder ``name`` in the root (open as ``dir_fd``); a link is followed
        only inside the root (EXDEV otherwise), anything else raises NotADirectoryError."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if st_mode.S_ISLNK(st.st_mode):
            st, inside = self.stat(f"{self.root}/{name}")
            if not inside:
                raise OSError(errno.EXDEV, "a link out of the storage root, not listed")
        if not st_mode.S_ISDIR(st.st_mode):
            raise NotADirectoryError(name)
        return st

    def stat(self, path: str) -> tuple[os.stat_result, bool]:
        """(stat, inside the root) of the link at ``path``: what it leads to when inside, the
        link itself otherwise. A dangling link raises FileNotFoundError, a loop ELOOP."""
        real = os.path.realpath(path, strict=True)
        if real.startswith(self.base):
            return os.stat(real), True
        return os.lstat(path), False


def _lstat_key(root: str, rel: str) -> tuple[str, os.stat_result]:
    """(path on disk, lstat) of the entry a key names: as it is, else as the bytes it escapes."""
    path = f"{root}/{rel}"
    try:
        return path, os.lstat(path)
    except FileNotFoundError:
        raw = unescape(rel)
        if raw is None:
            raise
        path = f"{root}/{raw}"
        return path, os.lstat(path)


def stat_files(root: str, rels: Sequence[str]) -> pa.RecordBatch:
    """Stat single files (keys relative to the root) as the listing would; missing,
    unreadable or non-regular ones are left out."""
    rows, links = [], None
    for rel in rels:
        try:
            path, s = _lstat_key(root, rel)
            if st_mode.S_ISLNK(s.st_mode):
                links = links or Links(root)
                s = links.stat(path)[0]
        except OSError:
            continue
        if st_mode.S_ISREG(s.st_mode):
            rows.append(dict(rel=rel, mtime=s.st_mtime, mtime_ns=s.st_mtime_ns, size=s.st_size))
    return pa.RecordBatch.from_pylist(rows, schema=SCHEMA)


def confirm_gone(root: str, rels: Sequence[str], failed: Sequence[str]) -> tuple[list[str], int]:
    """(the indexable files a stat says are not there, outside ``failed`` directories; how
    many could not be checked)."""
    skip = tuple(d + "/" for d in failed)
    gone, unknown = [], 0
    for rel in rels:
        if (skip and rel.startswith(skip)) or classify_relative(rel) is None:
            continue
        try:
            path, _ = _lstat_key(root, rel)
            if not st_mode.S_ISREG(os.stat(path).st_mode):
                gone.append(rel)  # replaced by a directory or a device: not a file
        except GONE:
            gone.append(rel)
        except OSError:
            unknown += 1
    return gone, unknown
