"""``python -m indexer_service``: the same as the ``indexer-service`` command."""

from .cli import main

raise SystemExit(main())
