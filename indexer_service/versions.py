"""File versions: read a file whole at one known version, and know which versions were written.

OpenCode rewrites files in place, many times a second while a session streams. A read is kept
only if the file did not change while it was read (`read_file`), and a batch may not write a
version older than one another batch already wrote (`WriteLog`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "MAX_FILE_BYTES",
    "FileChanged",
    "FileTooLarge",
    "NotAFile",
    "Version",
    "WriteLog",
    "current_version",
    "in_page_cache",
    "prefetch",
    "read_file",
]

MAX_FILE_BYTES = 64 * 2**20
"""Default limit on the size of one storage file (`Settings.max_file_bytes`): indexing a file
costs about 5x its size in memory at its peak, and OpenCode's files are far smaller (a 100 MB
file is a pathology, e.g. a runaway tool output)."""


class Version(NamedTuple):
    """What identifies one version of a file: an in-place rewrite changes mtime or size.

    A named tuple, like the other per-file records: building one costs a third of a frozen
    dataclass, and a bulk load builds several per file."""

    mtime: float
    mtime_ns: int
    size: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Version:
        return cls(st.st_mtime, st.st_mtime_ns, st.st_size, st.st_ino)


class FileChanged(Exception):
    """Raised when a file changed while it was read; neither version may be indexed."""


class NotAFile(Exception):
    """Raised when a path exists but is not a regular file (treated like a deleted file)."""


class FileTooLarge(Exception):
    """Raised, before anything is read, when a file is larger than the caller's limit."""

    def __init__(self, path: str, version: Version, limit: int) -> None:
        self.version = version
        self.limit = limit
        super().__init__(f"file too large: {version.size} bytes > max_file_bytes {limit}")


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
"""How every storage file is opened: non-blocking, so a FIFO in the tree cannot hang an open."""


def _read_fd(fd: int, size: int) -> bytes:
    """Read up to ``size + 1`` bytes: one more than expected shows that the file grew."""
    data = os.read(fd, size + 1)
    while len(data) < size:  # short read: go on until EOF
        more = os.read(fd, size + 1 - len(data))
        if not more:
            break
        data += more
    return data


def read_file(path: str, max_bytes: int | None = None) -> tuple[bytes, Version]:
    """The whole file and its version: fstat before the read, fstat again after it.

    Raises `FileChanged` if the file was modified during the read, `NotAFile`, `FileTooLarge`
    (larger than ``max_bytes``: nothing is read), or the `OSError` of opening it. A file
    replaced by rename meanwhile was still read whole at one version (the replacement is a new
    file, with its own event).
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotAFile(path)
        if max_bytes is not None and before.st_size > max_bytes:
            raise FileTooLarge(path, Version.of(before), max_bytes)
        data = _read_fd(fd, before.st_size)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if len(data) != before.st_size or (after.st_mtime_ns, after.st_size) != (
        before.st_mtime_ns,
        before.st_size,
    ):
        raise FileChanged(path)
    return data, Version.of(before)


def current_version(path: str) -> Version | None:
    """The version on disk now; None if there is no regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Version.of(st) if stat.S_ISREG(st.st_mode) else None


_WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)


def _libc() -> ctypes.CDLL | None:
    """libc with mmap, munmap and mincore typed; None where they are not there."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
        libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def in_page_cache(path: str) -> bool | None:
    """Whether the file's first page is in the page cache, i.e. reading it will not wait for
    the disk; None when this system cannot tell or the file cannot be opened.

    Asked with mincore(2), which reads nothing. (Reading with ``RWF_NOWAIT`` starts reading a
    missing page in, and on this VM's disk that read often finished in time to answer True.)
    """
    if _LIBC is None:
        return None
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size == 0:
            return True  # nothing to wait for
        length = min(st.st_size, mmap.PAGESIZE)
        addr = _LIBC.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            return None
        try:
            page = ctypes.c_ubyte()
            if _LIBC.mincore(addr, length, ctypes.byref(page)) != 0:
                return None
            return bool(page.value & 1)
        finally:
            _LIBC.munmap(addr, length)
    finally:
        os.close(fd)


def prefetch(paths: Iterable[str]) -> None:
    """Ask the kernel to read these files into the page cache in the background
    (``POSIX_FADV_WILLNEED``), so that reading them one by one afterwards does not wait for
    the disk once per file. Files that cannot be opened are left alone."""
    if _WILLNEED is None:
        return
    for path in paths:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, _WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


class WriteLog:
    """Which write last touched each path, so a batch re-stats only the paths that another
    batch wrote after this one read them: only those can hold a newer version.

    ``begin()`` before reading returns a ticket; ``contended(ticket, paths)`` (under the write
    lock) says which paths to check; ``written(ticket, paths)`` records the write. Tickets older
    than ``horizon`` writes (e.g. of a batch that was never written) check every path.
    """

    def __init__(self, horizon: int = 256) -> None:
        self.horizon = horizon
        self._gen = 0  # writes done
        self._last: dict[str, int] = {}  # path -> the write that last included it
        self._reading: Counter[int] = Counter()  # tickets of batches not yet written
        self._lock = threading.Lock()

    def begin(self) -> int:
        with self._lock:
            self._reading[self._gen] += 1
            return self._gen

    def contended(self, ticket: int, paths: Iterable[str]) -> set[str] | None:
        """Paths written since ``ticket``; None when the ticket is too old to tell."""
        with self._lock:
            if ticket < self._gen - self.horizon:
                return None
            last = self._last
            return {p for p in paths if last.get(p, -1) > ticket}

    def written(self, ticket: int, paths: Iterable[str]) -> None:
        with self._lock:
            self._gen += 1
            gen = self._gen
            for p in paths:
                self._last[p] = gen
            reading = self._reading
            reading[ticket] -= 1
            if reading[ticket] <= 0:
                del reading[ticket]
            floor = max(min(reading, default=gen), gen - self.horizon)
            for t in [t for t in reading if t < gen - self.horizon]:
                del reading[t]
            # Nobody can need entries at or below the oldest ticket still reading.
            if len(self._last) > 4096:
                self._last = {p: g for p, g in self._last.items() if g > floor}
