"""`store.changes.ChangeSequence` over a real index: numbers are never handed out twice."""

from __future__ import annotations

from pathlib import Path

from indexer_service.store.changes import RESERVE_BLOCK
from indexer_service.store.database import Database


def _claim(db: Database) -> int:
    with db.changes.claim() as seq:  # a transaction that stamps nothing, or rolls back
        return seq


def test_numbers_are_not_reused_after_a_reopen_or_a_restart(db_path: Path) -> None:
    """Numbers claimed by transactions that left no row are above every later number's
    floor: after `reopen` in the process, and after the file is closed and opened again."""
    with Database(db_path) as db:
        claimed = [_claim(db) for _ in range(RESERVE_BLOCK + 5)]
        assert claimed == sorted(set(claimed))
        assert db.changes.committed() == claimed[-1]
        db.reopen()
        after_reopen = _claim(db)
        assert after_reopen > claimed[-1]
    with Database(db_path) as db:
        assert _claim(db) > after_reopen
