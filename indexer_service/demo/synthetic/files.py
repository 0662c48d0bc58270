"""Storage file writes as opencode makes them (in place, no temp file) and tree ageing."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

_KINDS = frozenset(("project", "session", "message", "part", "todo", "session_diff"))
_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_INPLACE = os.O_WRONLY | os.O_CREAT  # Bun.write on an existing file: no O_TRUNC, then ftruncate
_INDENT = orjson.OPT_INDENT_2


def _write(path: str, data: bytes, flags: int = _NEW) -> None:
    """Write like Bun.write: no temp file, no rename; mkdir the parents on ENOENT."""
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        done = os.write(fd, data)
        while done < len(data):  # short writes: only on signals or a full disk
            done += os.write(fd, data[done:])
        if not flags & os.O_TRUNC:
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class _Sink:
    """Serialises records like ``JSON.stringify(obj, null, 2)`` (one line if compact) and writes
    them; counts files by kind; logs paths when live."""

    def __init__(self, root: Path, live: bool, on_write: Callable[[Path], None] | None) -> None:
        self.root, self.live, self.on_write = str(root), live, on_write
        self.counts: Counter[str] = Counter()
        self.bytes = 0
        self.log: list[Path] = []

    def put(self, rel: str, obj: object, compact: bool = False) -> str:
        path = f"{self.root}/{rel}"
        data = orjson.dumps(obj) if compact else orjson.dumps(obj, option=_INDENT)
        self.raw(path, rel.partition("/")[0], data)
        return path

    def raw(self, path: str, kind: str, data: bytes) -> None:
        _write(path, data, _INPLACE if self.live else _NEW)
        self.counts[kind if kind in _KINDS else "other"] += 1
        self.bytes += len(data)
        if self.live:
            self.log.append(Path(path))
            if self.on_write is not None:
                self.on_write(Path(path))


def age_tree(root: Path, seconds: float) -> None:
    """Set the mtime of ``root`` and of every directory and file under it to ``seconds`` ago,
    as on a machine where nothing was written for that long (the reconciler's cold
    directories)."""
    ns = time.time_ns() - int(seconds * 1e9)
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns))
        os.utime(dirpath, ns=(ns, ns))
