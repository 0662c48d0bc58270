"""Keep a DuckDB analytics database continuously and exactly in sync with OpenCode's records.

The public surface: `IndexerService` (the service, an async context manager), its `Settings`,
the typed snapshot its `stats()` returns (`ServiceStats`; its parts are in
`indexer_service.stats`), the `QueryResult` of a read-only query, the client of a running service's HTTP API, and every
error a host can receive.
"""

from indexer_service._version import __version__
from indexer_service.errors import (
    AccumulatorClosed,
    ApiError,
    ConfigError,
    DatabaseDamagedError,
    DatabaseError,
    DatabaseLockedError,
    IndexerError,
    QueryError,
    QueryFailed,
    QueryRefused,
    QueryTimeout,
    SchemaVersionError,
    ShipError,
    WriteFailedError,
)
from indexer_service.http.client import ServiceClient, find_service
from indexer_service.read.query import QueryResult
from indexer_service.service import IndexerService
from indexer_service.settings import Settings
from indexer_service.stats import ServiceStats

__all__ = [
    "AccumulatorClosed",
    "ApiError",
    "ConfigError",
    "DatabaseDamagedError",
    "DatabaseError",
    "DatabaseLockedError",
    "IndexerError",
    "IndexerService",
    "QueryError",
    "QueryFailed",
    "QueryRefused",
    "QueryResult",
    "QueryTimeout",
    "SchemaVersionError",
    "ServiceClient",
    "ServiceStats",
    "Settings",
    "ShipError",
    "WriteFailedError",
    "__version__",
    "find_service",
]
