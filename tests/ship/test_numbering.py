"""Change numbers and the sink across restarts: a number the sink has passed is never given to
a later change, even one that no row carries."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from conftest import LogEvents, TreeFactory, eventually

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveWriter
from ship.shipped import index_rows, shipped_everything, team_rows

pytestmark = pytest.mark.asyncio_only  # the sink's own code is backend-neutral; one is enough


def _status(svc: IndexerService, path: Path, status: str) -> bool:
    cur = svc.db.own_cursor()
    try:
        rows = cur.execute("SELECT status FROM file_index WHERE file_path = ?", [str(path)])
        return rows.fetchall() == [(status,)]
    finally:
        cur.close()


async def test_changes_after_a_batch_of_errors_and_a_restart_are_shipped(
    storage_tree: TreeFactory,
    make_settings: Callable[..., Settings],
    pg_url: str,
    log_events: LogEvents,
) -> None:
    """A malformed file is the last batch before a stop: its transaction stamps no record
    row, yet the sink ships past its number. The session written while the service is down
    is shipped by the next run: its rows get a number above every one handed out before."""
    tree = storage_tree(sessions=1)
    settings = make_settings(ship_to=pg_url, machine_id="m")
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        bad = next(tree.root.glob("part/*")) / "prt_zzzz.json"
        bad.write_text("{")
        await eventually(svc, partial(_status, svc, bad, "error"), log_events)
        await shipped_everything(svc)
    writer = LiveWriter(tree.root, seed=3)
    writer.write_step(writer.new_session())
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
    assert team_rows(pg_url, "m") == index_rows(settings.db_path)
