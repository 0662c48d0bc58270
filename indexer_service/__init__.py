"""Keep a DuckDB analytics database continuously and exactly in sync with OpenCode storage."""

from ._version import __version__
from .db import Database
from .errors import (
    ConfigError,
    DatabaseError,
    DatabaseLockedError,
    IndexerError,
    ParseError,
    SchemaVersionError,
)
from .settings import Settings
from .tracker import FileTracker

__all__ = [
    "ConfigError",
    "Database",
    "DatabaseError",
    "DatabaseLockedError",
    "FileTracker",
    "IndexerError",
    "ParseError",
    "SchemaVersionError",
    "Settings",
    "__version__",
]
