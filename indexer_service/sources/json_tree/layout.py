"""Where a file sits in the OpenCode storage tree says what it holds (pure, no I/O).

OpenCode takes every id from paths, not from file contents (sessions can be moved between project
directories without their JSON being updated), and so do we. A path is its own key, except a
path that is not valid UTF-8: its key is `escape`'s rendering, which `unescape` turns back.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

FILE_TYPES: tuple[str, ...] = ("project", "session", "message", "part", "todo", "session_diff")
"""Top-level directories that are indexed; everything else in the tree is skipped."""

DEPTH: dict[str, int] = {
    "project": 1,
    "session": 2,
    "message": 2,
    "part": 2,
    "todo": 1,
    "session_diff": 1,
}
"""Top-level directory -> path components below it: 2 for a parent-id directory and the file,
1 for the file alone."""

NESTED = frozenset(top for top, depth in DEPTH.items() if depth == 2)
"""Top-level directories whose files sit one directory deeper (``part/<messageID>/``)."""


class Location(NamedTuple):
    """What a storage path holds: its file type, the id in its file name, its parent directory id."""

    file_type: str
    key: str
    """The file name without ``.json``: the record id, or the session id for todo/session_diff."""
    parent: str | None
    """projectID for sessions, sessionID for messages, messageID for parts, else None."""


def classify_relative(rel: str) -> Location | None:
    """Classify a path relative to the storage root (``/``-separated); None when not indexed."""
    parts = rel.split("/")
    top = parts[0]
    depth = DEPTH.get(top)
    if depth is None or len(parts) != depth + 1:
        return None
    name = parts[-1]
    if not name.endswith(".json") or len(name) <= 5 or name.startswith("."):
        return None
    parent = parts[1] if depth == 2 else None
    if parent is not None and (not parent or parent.startswith(".")):
        return None
    return Location(top, name[:-5], parent)


def classify(root: str, path: str) -> Location | None:
    """Classify an absolute path under ``root``; None when outside the root or not indexed."""
    prefix = root.rstrip(os.sep) + os.sep
    if not path.startswith(prefix):
        return None
    rel = path[len(prefix) :]
    if os.sep != "/":
        rel = rel.replace(os.sep, "/")
    return classify_relative(rel)


_ESCAPED_BYTE = re.compile(rb"\\x([89a-f][0-9a-f])")


def escape(path: str) -> str:
    """A path as a key: one whose name is not valid UTF-8 (Python keeps its bytes as
    surrogates) is written with ``\\xNN`` for each such byte, so it fits a VARCHAR and a log."""
    if path.isascii():
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unescape(key: str) -> str | None:
    """The path on disk that `escape` turned into ``key`` (surrogates for its bytes); None when
    ``key`` escapes nothing (it names a path as it is)."""
    if "\\x" not in key:
        return None
    raw = _ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), key.encode())
    try:
        raw.decode()
    except UnicodeDecodeError:
        return os.fsdecode(raw)
    return None
