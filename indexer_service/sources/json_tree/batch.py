"""The value a legacy-tree batch carries from `Loader.prepare` to `Loader.write`: `Prepared`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from indexer_service.sources.json_tree.file_index import FailedFile, IndexedFile
from indexer_service.sources.json_tree.files import Version

__all__ = ["Prepared"]


@dataclass
class Prepared:
    """A batch read and extracted, not yet written (see `Loader.write`)."""

    rows: dict[str, pa.Table] = field(default_factory=dict)
    """Rows by file type."""
    indexed: list[IndexedFile] = field(default_factory=list)
    failed: list[FailedFile] = field(default_factory=list)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    """(path, file type, key) of files that no longer exist."""
    versions: dict[str, Version] = field(default_factory=dict)
    requeue: list[str] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)  # past the byte budget: a batch of their own
    skipped: int = 0
    nbytes: int = 0
    """Bytes of the files read."""
    ticket: int = 0
    """`WriteLog` ticket taken before the first read."""
    read_seconds: float = 0.0
    parse_seconds: float = 0.0
