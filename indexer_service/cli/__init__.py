"""The ``indexer-service`` command line; `main` is its entry point."""

from indexer_service.cli.main import main

__all__ = ["main"]
