"""Read a storage file whole at one known version (`Tree.read`), or say which version is on disk
(`Tree.version`), without ever opening anything outside the storage root.

OpenCode rewrites files in place, many times a second while a session streams: a read is kept
only if the file did not change while it was read.

Every directory is opened relative to its parent, from the root down, and every file relative
to its directory, each with ``O_NOFOLLOW``: the kernel refuses a link at each step, so a link
swapped in at any moment cannot lead out of the tree. A link met on the way is resolved once
(``realpath``): if it ends outside the root it is `OutsideRoot` and nothing is opened; if it ends
inside, what it leads to is reached by the same link-free walk. Each entry is ``lstat``'ed
before it is opened, so anything but a regular file (a FIFO, a socket, a device, a folder) is
`NotAFile` and never opened. A `Tree` keeps the directories of one batch open (at most
``_MAX_DIRS``); a file costs about 4.7 us more to read than through its full path (18.5 against
13.8 us here, docs/operations.md).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple, Self

from indexer_service.sources.json_tree.layout import FILE_TYPES, escape, unescape

__all__ = [
    "OPEN_FLAGS",
    "BadName",
    "FileChanged",
    "FileTooLarge",
    "NotAFile",
    "OutsideRoot",
    "Tree",
    "Version",
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


class OutsideRoot(Exception):
    """Raised, before anything is opened, for a link that leads out of the storage root."""

    def __init__(self, path: str, target: str, version: Version) -> None:
        self.version = version
        super().__init__(f"outside the storage root: a link to {escape(target)}, not read")


class BadName(Exception):
    """Raised, before anything is opened, for a path that is not valid UTF-8 (its key is the
    escaped path): its ids cannot be stored as they are."""

    def __init__(self, path: str, version: Version) -> None:
        self.version = version
        super().__init__(
            "name is not valid UTF-8 (its bytes are shown as \\xNN): not read; rename it to "
            "index it"
        )


class _Linked(Exception):
    """A directory on the way to a file is a link."""


OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
"""How every storage file is opened: never through a link, and non-blocking, so that a FIFO
swapped in after the ``lstat`` cannot hang the open."""
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
"""How every directory on the way is opened: only as a place to open from, never read
(``O_PATH``), which also keeps it out of the watcher's events (a read-only open of a directory
is an ``IN_OPEN`` on it and on its parent)."""
_MAX_DIRS = 64
_FORMAT = 0o170000  # the file type bits of st_mode
_NO_VERSION = Version(0.0, 0, 0, 0)


def _read_fd(fd: int, size: int) -> bytes:
    """Read up to ``size + 1`` bytes: one more than expected shows that the file grew."""
    data = os.read(fd, size + 1)
    while len(data) < size:  # short read: go on until EOF
        more = os.read(fd, size + 1 - len(data))
        if not more:
            break
        data += more
    return data


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class Tree:
    """The files under one storage root, opened as the module doc says; use it as a context
    manager (it holds directory descriptors), from one thread."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._prefix = root.rstrip("/") + "/"
        self._fd: int | None = None
        self._real: str | None = None
        self._dirs: dict[str, int] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def available(self) -> bool:
        """Whether the root is there and holds a record folder: a root that is gone, or empty
        (the mount point of a disk not mounted), is no evidence that its files were deleted."""
        try:
            fd = self._dir("")
        except OSError:
            return False
        for top in FILE_TYPES:
            try:
                os.stat(top, dir_fd=fd)
            except OSError:
                continue
            return True
        return False

    def _dir(self, reldir: str) -> int:
        """A descriptor of the directory ``reldir`` (relative to the root), reached without
        following a link (`_Linked` when one is on the way)."""
        if not reldir:
            if self._fd is None:
                self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            return self._fd
        fd = self._dirs.get(reldir)
        if fd is not None:
            return fd
        parent, _, name = reldir.rpartition("/")
        at = self._dir(parent)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=at)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, at):
                raise _Linked from None
            raise
        if len(self._dirs) >= _MAX_DIRS:
            os.close(self._dirs.pop(next(iter(self._dirs))))
        self._dirs[reldir] = fd
        return fd

    def locate(self, path: str) -> tuple[int, str, os.stat_result]:
        """(descriptor of its directory, name, ``lstat``) of the regular file at ``path`` (a key:
        an escaped path is looked for as it is, then as the bytes it escapes: `BadName`).
        Raises `OutsideRoot`, `NotAFile`, or the `OSError` of the lookup."""
        if not path.startswith(self._prefix):
            raise OutsideRoot(path, path, _NO_VERSION)
        rel = path[len(self._prefix) :]
        try:
            return self._find(rel, follow=True)
        except (FileNotFoundError, NotADirectoryError):
            raw = unescape(rel)
            if raw is None:
                raise
            st = os.lstat(self._prefix + raw)  # no such entry either: FileNotFoundError
            raise BadName(path, Version.of(st)) from None

    def _plain(self, path: str) -> tuple[int, str, os.stat_result] | None:
        """`locate` for a regular file reached without a link (almost every file, at the cost
        of one ``fstatat``); None for anything else, which `locate` sorts out."""
        prefix = self._prefix
        if not path.startswith(prefix):
            return None
        reldir, _, name = path[len(prefix) :].rpartition("/")
        try:
            at = self._dirs.get(reldir)
            if at is None:
                at = self._dir(reldir)
            st = os.stat(name, dir_fd=at, follow_symlinks=False)
        except (_Linked, OSError):
            return None
        return (at, name, st) if st.st_mode & _FORMAT == stat.S_IFREG else None

    def _find(self, rel: str, *, follow: bool) -> tuple[int, str, os.stat_result]:
        reldir, _, name = rel.rpartition("/")
        st: os.stat_result | None = None
        try:
            at = self._dir(reldir)
            st = os.stat(name, dir_fd=at, follow_symlinks=False)
        except _Linked:
            pass
        else:
            if stat.S_ISREG(st.st_mode):
                return at, name, st
            if not stat.S_ISLNK(st.st_mode):
                raise NotAFile(self._prefix + rel)
        if not follow:  # realpath said there was no link left: one was swapped in since
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), self._prefix + rel)
        return self._find(self._inside(rel, st), follow=False)

    def _inside(self, rel: str, st: os.stat_result | None) -> str:
        """Where the links on the way to ``rel`` lead, relative to the root (a dangling link
        raises FileNotFoundError, a loop ELOOP); `OutsideRoot` when that is out of the root."""
        path = self._prefix + rel
        target = os.path.realpath(path, strict=True)
        if self._real is None:
            self._real = os.path.realpath(self.root)
        base = self._real.rstrip("/") + "/"
        if not target.startswith(base):
            raise OutsideRoot(path, target, Version.of(st if st is not None else os.lstat(path)))
        return target[len(base) :]

    def open(self, path: str) -> tuple[int, os.stat_result]:
        """A descriptor of the regular file at ``path`` (the caller closes it) and its
        ``lstat`` from just before it was opened (see `locate`)."""
        at, name, st = self.locate(path)
        return self._open(at, name, path), st

    @staticmethod
    def _open(at: int, name: str, path: str) -> int:
        try:
            return os.open(name, OPEN_FLAGS, dir_fd=at)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
                raise FileChanged(path) from None
            raise

    def read(self, path: str, max_bytes: int | None = None) -> tuple[bytes, Version]:
        """The whole file and its version: ``lstat`` before the read, ``fstat`` after it.

        Raises `FileChanged` if the file was modified or replaced meanwhile, `FileTooLarge`
        (larger than ``max_bytes``: nothing is read), or what `locate` raises.
        """
        found = self._plain(path)
        at, name, before = self.locate(path) if found is None else found
        size = before.st_size
        if max_bytes is not None and size > max_bytes:
            raise FileTooLarge(path, Version.of(before), max_bytes)
        fd = self._open(at, name, path)
        try:
            data = _read_fd(fd, size)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (
            len(data) != size
            or after.st_mtime_ns != before.st_mtime_ns
            or after.st_size != size
            or after.st_ino != before.st_ino
            or after.st_dev != before.st_dev
        ):
            raise FileChanged(path)
        return data, Version(before.st_mtime, before.st_mtime_ns, size, before.st_ino)

    def version(self, path: str) -> Version | None:
        """The version on disk now, as `read` would record it (for a link out of the root or a
        name that is not UTF-8, the entry's own); None if there is no regular file."""
        try:
            return Version.of(self.locate(path)[2])
        except (OutsideRoot, BadName) as exc:
            return exc.version
        except (OSError, NotAFile):
            return None
