"""Keep a DuckDB analytics database continuously and exactly in sync with OpenCode storage."""

from ._version import __version__
from .accumulator import AccumulatorConfig, FileBatchAccumulator
from .db import Database
from .errors import (
    ConfigError,
    DatabaseError,
    DatabaseLockedError,
    IndexerError,
    ParseError,
    SchemaVersionError,
)
from .query import QueryError, QueryFailed, QueryRefused, QueryResult, QueryTimeout
from .reconciler import Reconciler
from .service import IndexerService
from .settings import Settings
from .tracker import FileTracker

__all__ = [
    "AccumulatorConfig",
    "ConfigError",
    "Database",
    "DatabaseError",
    "DatabaseLockedError",
    "FileBatchAccumulator",
    "FileTracker",
    "IndexerError",
    "IndexerService",
    "ParseError",
    "QueryError",
    "QueryFailed",
    "QueryRefused",
    "QueryResult",
    "QueryTimeout",
    "Reconciler",
    "SchemaVersionError",
    "Settings",
    "__version__",
]
