"""What the reconciler's listing of the storage tree produces and remembers: `Listing` (the
files of one pass, as Arrow batches) and the per-directory memory `TreeLister` keeps between
passes (packed into one string per directory)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, Self

import pyarrow as pa

Scandir = Callable[[str], AbstractContextManager[Iterator["os.DirEntry[str]"]]]

SCHEMA = pa.schema(
    [("rel", pa.string()), ("mtime", pa.float64()), ("mtime_ns", pa.int64()), ("size", pa.int64())]
)
"""One row per file stat'ed: path relative to the root, ``st_mtime``, ``st_mtime_ns``, size."""


GONE = (FileNotFoundError, NotADirectoryError)


class ListingCancelled(Exception):
    """Raised in the listing thread when the scan was cancelled."""


class CancelFlag(Protocol):
    """What a scan polls between directories (a `threading.Event`, `ScanCancel`, or a flag
    shared with a parent process)."""

    def is_set(self) -> bool: ...


class ScanCancel:
    """A cancel flag whose `set` (from any thread, the event loop's included: it never blocks)
    also makes its `fileno` readable, so a thread waiting for a listing child's answer wakes
    at once. It holds a pipe: use it as a context manager, and set it only inside."""

    def __init__(self) -> None:
        self._set = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def set(self) -> None:
        if not self._set:
            self._set = True
            os.write(self._write, b"!")

    def is_set(self) -> bool:
        return self._set

    def fileno(self) -> int:
        return self._read

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._read)
        os.close(self._write)


def shard_of(subdir: str, shards: int) -> int:
    """The shard a subdirectory belongs to; flat top-level directories are shard 0's."""
    return zlib.crc32(subdir.encode()) % shards if shards > 1 else 0


def indexable_name(name: str) -> bool:
    """The file-name rule of `layout.classify_relative`, without splitting a path."""
    return name.endswith(".json") and len(name) > 5 and name[0] != "."


def pack_dir(mtime_ns: int | None, newest_ns: int, names: str) -> str:
    """A directory's memory as one string (about half the size of a tuple of three):
    its mtime (empty: not trusted, list it at the next check), the newest mtime of it and its
    files when last checked, and its indexable file names, ``/``-separated."""
    return f"{'' if mtime_ns is None else format(mtime_ns, 'x')}/{newest_ns:x}/{names}"


def unpack_dir(packed: str | None) -> tuple[int | None, int, str]:
    if packed is None:
        return None, 0, ""
    mtime, newest, names = packed.split("/", 2)
    return (int(mtime, 16) if mtime else None), int(newest, 16), names


@dataclass(eq=False)
class TopDir:
    ino: int
    mtime_ns: int | None = None
    dirs: dict[str, str] = field(default_factory=dict)  # subdir name ("" when flat) -> pack_dir()
    hot: set[str] = field(default_factory=set)


@dataclass
class ListerState:
    """What a `TreeLister` remembers, handed to another lister (see `TreeLister.split`)."""

    root_id: tuple[int, int] | None
    tops: dict[str, TopDir]


@dataclass(eq=False)
class Listing:
    """What one pass saw (paths relative to the root). ``batches``: the files stat'ed;
    ``covered``: directories all of whose files are in them; ``gone`` (partial passes): known
    files now absent; ``failed``: directories under which nothing may be inferred deleted;
    ``unavailable``: why the root could not be listed (then nothing else is set)."""

    full: bool = False
    batches: list[pa.RecordBatch] = field(default_factory=list)
    covered: set[str] = field(default_factory=set)
    gone: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    dirs_listed: int = 0
    dirs_checked: int = 0
    child_cpu_s: float = 0.0
    """CPU seconds a listing child process spent on this pass (`sharded`)."""
    unavailable: str | None = None
    root_missing: bool = False
