"""End-to-end checks with the real OpenCode client (not part of make test)."""
