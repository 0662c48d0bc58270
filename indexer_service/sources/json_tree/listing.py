"""What the reconciler's listing of the storage tree produces and remembers: `Listing` (the
files of one pass, as Arrow batches), the per-directory memory `TreeLister` keeps between
passes (packed into one string per directory), and `PathList` (what a pass found, as keys)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, overload

import pyarrow as pa

Scandir = Callable[[str], AbstractContextManager[Iterator["os.DirEntry[str]"]]]
Skipped = tuple[tuple[str, str], ...]
"""(name, kind) of the entries of one directory skipped without being opened (`entries`)."""

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
    return zlib.crc32(subdir.encode("utf-8", "surrogateescape")) % shards if shards > 1 else 0


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
    skipped: dict[str, Skipped] = field(default_factory=dict)
    """Entries skipped in a directory when it was last listed (key as in ``dirs``; "" of a
    nested directory: the entries beside its subdirectories)."""


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
    ``unavailable``: why the root could not be listed (then nothing else is set); ``skipped``:
    (key, kind) of entries skipped that were not there when their directory was last listed;
    ``tops``: record folders (`layout.FILE_TYPES`) found in the root. Paths are keys
    (`layout.escape`), those of ``covered`` and ``failed`` excepted."""

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
    processes: int = 1
    """Processes that listed this pass (2: a listing child listed half, `sharded`)."""
    unavailable: str | None = None
    root_missing: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    tops: int = 0


class PathList(Sequence[Path]):
    """Paths held compactly in Arrow; `Path` objects are made on access (1M paths as `Path`
    objects would take about 1 GB)."""

    def __init__(self, paths: pa.Array | pa.ChunkedArray | None = None) -> None:
        self._arr = pa.array([], pa.string()) if paths is None else paths

    def __len__(self) -> int:
        return len(self._arr)

    @overload
    def __getitem__(self, i: int) -> Path: ...
    @overload
    def __getitem__(self, i: slice) -> PathList: ...
    def __getitem__(self, i: int | slice) -> Path | PathList:
        if isinstance(i, slice):
            return PathList(pa.array(self._arr.to_pylist()[i], pa.string()))
        return Path(self._arr[i].as_py())

    def __iter__(self) -> Iterator[Path]:
        for chunk in self.chunks(5_000):
            yield from map(Path, chunk)

    def chunks(self, size: int) -> Iterator[list[str]]:
        """The paths as strings, ``size`` at a time."""
        for start in range(0, len(self._arr), size):
            yield self._arr.slice(start, size).to_pylist()
