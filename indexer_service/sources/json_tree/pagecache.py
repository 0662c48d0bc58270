"""Ask the kernel about storage files without reading them: is a file in the page cache
(`in_page_cache`, mincore(2)), and read these files ahead in the background (`prefetch`, and
`read_ahead` for a bulk batch). Files are opened through `files.Tree`, so never outside the
storage root."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable, Sequence
from functools import partial

import anyio

from indexer_service.sources.json_tree.files import (
    BadName,
    FileChanged,
    NotAFile,
    OutsideRoot,
    Tree,
)

__all__ = ["in_page_cache", "prefetch", "read_ahead"]

_THREADS = 4  # threads asking for a batch to be read ahead
_PROBES = 8  # files per batch checked for being in the page cache

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


_CANNOT_OPEN = (OSError, BadName, FileChanged, NotAFile, OutsideRoot)


def in_page_cache(path: str, tree: Tree) -> bool | None:
    """Whether the file's first page is in the page cache, i.e. reading it will not wait for
    the disk; None when this system cannot tell or the file cannot be opened (``tree``: the
    storage root it is under).

    Asked with mincore(2), which reads nothing. (Reading with ``RWF_NOWAIT`` starts reading a
    missing page in, and on this VM's disk that read often finished in time to answer True.)
    """
    if _LIBC is None:
        return None
    try:
        fd, st = tree.open(path)
    except _CANNOT_OPEN:
        return None
    try:
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


def prefetch(root: str, paths: Iterable[str]) -> None:
    """Ask the kernel to read these files (under the storage ``root``) into the page cache in
    the background (``POSIX_FADV_WILLNEED``), so that reading them one by one afterwards does
    not wait for the disk once per file. Files that cannot be opened are left alone."""
    if _WILLNEED is None:
        return
    with Tree(root) as tree:
        for path in paths:
            try:
                fd, _ = tree.open(path)
            except _CANNOT_OPEN:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, _WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def _cached(root: str, probes: Sequence[str]) -> list[bool | None]:
    with Tree(root) as tree:
        return [in_page_cache(p, tree) for p in probes]


async def read_ahead(root: str, paths: Sequence[str]) -> int:
    """`prefetch` a batch when a sample of its files is not in the page cache; how many files
    were handed to the kernel (0: the batch is cached)."""
    probes = paths[:: max(1, len(paths) // _PROBES)][:_PROBES]
    if all(await anyio.to_thread.run_sync(_cached, root, probes)):
        return 0
    size = -(-len(paths) // _THREADS)
    async with anyio.create_task_group() as tg:
        for start in range(0, len(paths), size):
            tg.start_soon(
                partial(anyio.to_thread.run_sync, prefetch, root, paths[start : start + size])
            )
    return len(paths)
