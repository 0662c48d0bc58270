"""The machine's position across restarts: an older copy of the index put back (numbers that
stamped nothing before a restart: test_numbering.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
from conftest import LogEvents, TreeFactory

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveWriter
from indexer_service.ship import sink as sink_module
from indexer_service.store import group as group_module
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


async def test_a_first_shipment_in_small_windows_of_a_changed_index_is_exact(
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    log_events: LogEvents,
) -> None:
    """An index that saw deletes, emptied lists and rewrites before it ever shipped, shipped
    from the start in windows of a few rows (COPY alone, no replacing) while a writer adds
    records: every row once (no window refused for a duplicate), none missing."""
    tree = storage_tree(sessions=4)
    small = {"max_files": 10, "max_batch_files": 10}  # many transactions, so many windows
    monkeypatch.setattr(group_module, "GROUP_FILES", 1)  # a transaction a batch
    async with IndexerService(make_settings(**small)) as svc:
        await svc.wait_until_synced()
        todos = sorted(tree.root.glob("todo/*.json"))
        todos[0].write_text("[]")
        todos[1].unlink()
        next(tree.root.glob("part/*/*.json")).unlink()
        shutil.rmtree(next(tree.root.glob("message/*")))
        await svc.wait_until_synced()
        for part in sorted(tree.root.glob("part/*/*.json"))[:60]:  # windows between the two
            part.write_bytes(part.read_bytes() + b" ")
        await svc.wait_until_synced()
        todos[1].write_text('[{"id": "1", "content": "back", "status": "pending"}]')
        await svc.wait_until_synced()
    monkeypatch.setattr(sink_module, "WINDOW_ROWS", 25)
    settings = make_settings(ship_to=pg_url, machine_id="m", **small)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        writer = LiveWriter(tree.root, seed=13)
        session = writer.new_session()
        for _ in range(3):
            writer.write_step(session)
            await svc.wait_until_synced()
        await shipped_everything(svc)
        assert svc.stats()["sink"]["windows"] > 10
        assert log_events.counts["sink_failed"] == 0
    assert team_rows(pg_url, "m") == index_rows(settings.db_path)
