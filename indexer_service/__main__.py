"""``python -m indexer_service``: the same as the ``indexer-service`` command."""

from indexer_service.cli.main import main

raise SystemExit(main())
