"""Keep a DuckDB analytics database in sync with OpenCode storage."""
