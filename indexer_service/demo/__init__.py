"""`indexer-service demo`: the real service on a generated OpenCode store, written to live."""
