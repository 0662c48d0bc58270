"""OpenCode record files -> typed rows for the store (pure: no files, no database file)."""

from indexer_service.extract.diagnosis import diagnose
from indexer_service.extract.extractor import Extracted, Extractor, array_items
from indexer_service.extract.specs import SPECS, RecordSpec

__all__ = ["SPECS", "Extracted", "Extractor", "RecordSpec", "array_items", "diagnose"]
