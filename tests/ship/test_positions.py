"""The machine's position across restarts: an older copy of the index put back (numbers that
stamped nothing before a restart: test_numbering.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
from conftest import TreeFactory

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveWriter
from ship.shipped import index_rows, shipped_everything, team_rows

SettingsFactory = Callable[..., Settings]

pytestmark = pytest.mark.asyncio_only


async def test_an_older_copy_of_the_index_ships_itself_again(
    storage_tree: TreeFactory, make_settings: SettingsFactory, pg_url: str
) -> None:
    """An index file put back from a copy (same epoch, fewer changes than the server has of
    it) is shipped from the start, so the server ends equal to it."""
    tree = storage_tree(sessions=2)
    settings = make_settings(ship_to=pg_url, machine_id="m")
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
    copy = settings.db_path.with_name("copy.duckdb")
    shutil.copyfile(settings.db_path, copy)
    writer = LiveWriter(tree.root, seed=12)
    writer.write_step(writer.new_session())
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
    shutil.rmtree(next(tree.root.glob("part/*")))
    shutil.copyfile(copy, settings.db_path)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
        assert svc.stats()["sink"]["restarts"] == 1
    assert team_rows(pg_url, "m") == index_rows(settings.db_path)
