"""Exceptions raised by indexer_service; the CLI maps them to exit codes."""

from __future__ import annotations

from pathlib import Path


class IndexerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(IndexerError, ValueError):
    """Raised when a setting has an invalid value; the message names the setting."""


class DatabaseError(IndexerError):
    """Raised when the database file cannot be opened or used."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"database {path}: {reason}")


class DatabaseLockedError(DatabaseError):
    """Raised when another process holds the database file (DuckDB allows one writer process)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(path, f"locked by {holder}; stop it or use another --db")


class SchemaVersionError(DatabaseError):
    """Raised when the database was written by a newer indexer_service than this one."""


class ParseError(IndexerError):
    """Raised when a storage file cannot be turned into rows; the reason says what is wrong."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
