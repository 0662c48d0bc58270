"""The sink end to end: a real service, real files, a real PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from conftest import LogEvents, TreeFactory, eventually
from pg_server import PASSWORD, PgServer

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveWriter
from indexer_service.ship.tables import SHIPPED_TABLES
from ship.shipped import (
    index_rows,
    service_rows,
    shipped_everything,
    team_rows,
    until_logged,
)

SettingsFactory = Callable[..., Settings]

pytestmark = pytest.mark.asyncio_only  # the sink's own code is backend-neutral; one is enough


async def test_the_index_is_shipped_then_changes_and_deletes_follow(
    storage_tree: TreeFactory, make_settings: SettingsFactory, pg_url: str, log_events: LogEvents
) -> None:
    """Backfill, new records, a rewritten part and a deleted session reach the team database,
    which then holds exactly the index's rows for this machine (no raw, no file paths)."""
    tree = storage_tree(sessions=3)
    settings = make_settings(ship_to=pg_url, machine_id="ada-laptop")
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
        first = team_rows(pg_url, "ada-laptop")
        assert len(first["parts"]) == tree.counts["part"] > 0
        assert first == await service_rows(svc)

        writer = LiveWriter(tree.root, seed=3)
        session = writer.new_session()
        writer.write_step(session)
        victim = next(tree.root.glob("session/*/*.json"))
        victim.unlink()  # the session's own record; its messages stay
        shutil.rmtree(next(tree.root.glob("part/*")))  # a message's parts, all at once
        await eventually(svc, lambda: not victim.exists(), log_events)
        await svc.wait_until_synced()
        await shipped_everything(svc)
        assert team_rows(pg_url, "ada-laptop") == await service_rows(svc)
        stats = svc.stats()["sink"]
        assert stats["state"] in ("caught_up", "shipping")
        assert stats["behind_changes"] == 0
        assert "ada-laptop" not in pg_url and PASSWORD not in stats["target"]

    with psycopg.connect(pg_url) as pg:
        columns = {
            r[0]
            for r in pg.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'parts'"
            ).fetchall()
        }
    assert "raw" not in columns and "file_path" not in columns


async def test_an_emptied_todo_list_and_a_shrunk_one_are_shipped(
    storage_tree: TreeFactory, make_settings: SettingsFactory, pg_url: str, log_events: LogEvents
) -> None:
    """Items that left a list leave the team database too (the list is replaced whole)."""
    tree = storage_tree(sessions=4)
    lists = sorted(tree.root.glob("todo/*.json"))
    assert len(lists) >= 2
    async with IndexerService(make_settings(ship_to=pg_url, machine_id="m")) as svc:
        await svc.wait_until_synced()
        lists[0].write_text("[]")
        lists[1].write_text('[{"id": "1", "content": "only", "status": "pending"}]')
        await svc.wait_until_synced()
        await shipped_everything(svc)
        local = await service_rows(svc)
        assert team_rows(pg_url, "m")["todos"] == local["todos"]
    empty = lists[0].stem
    assert not [r for r in local["todos"] if r[0] == empty]


async def test_two_machines_with_the_same_ids_do_not_collide(
    tmp_path: Path, storage_tree: TreeFactory, make_settings: SettingsFactory, pg_url: str
) -> None:
    """The same OpenCode tree indexed on two machines: two copies, each its machine's."""
    storage_tree(sessions=2)
    for machine in ("m1", "m2"):
        settings = make_settings(
            ship_to=pg_url, machine_id=machine, db_path=tmp_path / f"{machine}.duckdb"
        )
        async with IndexerService(settings) as svc:
            await svc.wait_until_synced()
            await shipped_everything(svc)
    one, two = team_rows(pg_url, "m1"), team_rows(pg_url, "m2")
    assert one == two == index_rows(tmp_path / "m1.duckdb")
    with psycopg.connect(pg_url) as pg:
        machines = pg.execute("SELECT machine_id FROM indexer_machines ORDER BY 1").fetchall()
        total = pg.execute("SELECT count(*) FROM parts").fetchall()[0][0]
    assert machines == [("m1",), ("m2",)]
    assert total == 2 * len(one["parts"])


async def test_a_restart_resumes_and_a_new_index_replaces_the_machines_rows(
    tmp_path: Path, storage_tree: TreeFactory, make_settings: SettingsFactory, pg_url: str
) -> None:
    """A second run ships only what changed; an index file made anew (same machine id)
    replaces what the server held for the machine, leaving nothing of the old one."""
    tree = storage_tree(sessions=2)
    settings = make_settings(ship_to=pg_url, machine_id="m")
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
    removed = next(tree.root.glob("session/*/*.json"))
    removed.unlink()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
        assert svc.stats()["sink"]["restarts"] == 0
    assert team_rows(pg_url, "m") == index_rows(settings.db_path)

    settings.db_path.unlink()
    shutil.rmtree(tree.root / "part")
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)
        assert svc.stats()["sink"]["restarts"] == 1
    assert team_rows(pg_url, "m") == index_rows(settings.db_path)
    assert team_rows(pg_url, "m")["parts"] == []


async def test_a_generated_machine_id_is_kept_in_the_index(
    storage_tree: TreeFactory, make_settings: SettingsFactory, pg_url: str
) -> None:
    storage_tree(sessions=1)
    ids = []
    for _ in range(2):
        async with IndexerService(make_settings(ship_to=pg_url)) as svc:
            await svc.wait_until_synced()
            await shipped_everything(svc)
            ids.append(svc.stats()["sink"]["machine_id"])
    assert ids[0] == ids[1] and ids[0] is not None
    with psycopg.connect(pg_url) as pg:
        assert pg.execute("SELECT machine_id FROM indexer_machines").fetchall() == [(ids[0],)]


def test_tables_shipped_are_the_record_tables() -> None:
    assert [t.name for t in SHIPPED_TABLES] == [
        "projects", "sessions", "messages", "parts", "todos", "session_diffs",
    ]  # fmt: skip


async def test_an_unreachable_server_leaves_local_indexing_going(
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    own_pg_server: PgServer,
    log_events: LogEvents,
) -> None:
    """With the server stopped the service indexes as before and says how far behind the
    sink is; once the server is back the sink catches up exactly."""
    tree = storage_tree(sessions=2)
    url = own_pg_server.url()
    own_pg_server.stop()
    async with IndexerService(make_settings(ship_to=url, machine_id="m")) as svc:
        await svc.wait_until_synced()

        def unreachable() -> bool:
            return svc.stats()["sink"]["state"] == "unreachable"

        await until_logged(log_events, "sink_failed", unreachable, timeout=20)
        ok, reason = svc.health()
        assert ok and "sink unreachable" in reason and "changes" in reason
        assert PASSWORD not in reason
        assert svc.stats()["sink"]["behind_changes"] > 0
        metrics = svc.metrics.render(svc.stats()).decode()
        assert "indexer_sink_up 0.0" in metrics and "indexer_sink_behind_changes 0.0" not in metrics
        failed = [e for e in log_events.entries if e["event"] == "sink_failed"]
        assert failed and PASSWORD not in repr(failed)
        writer = LiveWriter(tree.root, seed=5)
        writer.write_step(writer.new_session())
        await svc.wait_until_synced()
        own_pg_server.start()
        await shipped_everything(svc, timeout=60)
        assert team_rows(url, "m") == await service_rows(svc)
        assert svc.health() == (True, "running")
        metrics = svc.metrics.render(svc.stats()).decode()
        assert "indexer_sink_up 1.0" in metrics and "indexer_sink_behind_changes 0.0" in metrics


async def test_without_a_sink_nothing_of_it_shows(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """No ship_to: no sink in stats, health or metrics."""
    storage_tree(sessions=1)
    async with IndexerService(make_settings()) as svc:
        await svc.wait_until_synced()
        assert "sink" not in svc.stats()
        assert svc.health() == (True, "running")
        assert b"sink" not in svc.metrics.render(svc.stats())
