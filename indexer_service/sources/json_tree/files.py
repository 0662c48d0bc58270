"""Read a storage file whole at one known version (`read_file`), or say which version is on disk.

OpenCode rewrites files in place, many times a second while a session streams: a read is kept
only if the file did not change while it was read.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

__all__ = [
    "OPEN_FLAGS",
    "FileChanged",
    "FileTooLarge",
    "NotAFile",
    "Version",
    "current_version",
    "read_file",
]


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


OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
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
    fd = os.open(path, OPEN_FLAGS)
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
