"""OpenCode records (JSON documents) -> typed rows for the store (pure: no files, no database)."""

from indexer_service.extract.diagnosis import diagnose
from indexer_service.extract.extractor import Extracted, Extractor, array_items, utf8_column
from indexer_service.extract.specs import SPECS, RecordSpec

__all__ = [
    "SPECS",
    "Extracted",
    "Extractor",
    "RecordSpec",
    "array_items",
    "diagnose",
    "utf8_column",
]
