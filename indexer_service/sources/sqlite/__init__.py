"""OpenCode's SQLite database (opencode >= 1.2) as a source of records."""

from indexer_service.sources.sqlite.source import SqliteSource

__all__ = ["SqliteSource"]
