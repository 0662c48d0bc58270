"""Ask the kernel about storage files without reading them: is a file in the page cache
(`in_page_cache`, mincore(2)), and read these files ahead in the background (`prefetch`)."""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
from collections.abc import Iterable

from indexer_service.sources.json_tree.files import OPEN_FLAGS

__all__ = ["in_page_cache", "prefetch"]

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
        fd = os.open(path, OPEN_FLAGS)
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
            fd = os.open(path, OPEN_FLAGS)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, _WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
