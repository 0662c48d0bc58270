"""OpenCode's legacy JSON storage tree (OpenCode 1.0-1.1) as a source of records."""

from indexer_service.sources.json_tree.source import JsonTreeSource

__all__ = ["JsonTreeSource"]
