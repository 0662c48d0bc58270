"""The team database going away while OpenCode keeps writing: stopped, then killed, then
started again; the sink catches up and the team database equals the index."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio
import pytest
from conftest import LogEvents, TreeFactory
from pg_server import PgServer

from indexer_service import IndexerService, Settings
from indexer_service.backoff import Backoff
from indexer_service.demo.synthetic import LiveWriter
from indexer_service.ship.sink import Sink
from indexer_service.stats import SinkStats
from ship.shipped import service_rows, shipped_everything, team_rows, until_logged

pytestmark = pytest.mark.asyncio_only  # the sink's own code is backend-neutral; one is enough


async def _keep_writing(
    svc: IndexerService, writer: LiveWriter, events: LogEvents, stop: anyio.Event
) -> None:
    """One step of a session after another, each once the index wrote the one before."""
    session = writer.new_session()
    while not stop.is_set():
        written = events.counts["batch_indexed"]
        await anyio.to_thread.run_sync(writer.write_step, session)
        await events.wait_for("batch_indexed", written + 1)


def _more_windows(sink: Callable[[], SinkStats], before: int) -> bool:
    """Whether the sink shipped since it had shipped ``before`` windows."""
    return sink()["windows"] > before


async def test_the_server_stopped_then_killed_during_live_writes_converges(
    storage_tree: TreeFactory,
    make_settings: Callable[..., Settings],
    own_pg_server: PgServer,
    log_events: LogEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a session is being written, the server is stopped (a clean shutdown), started,
    then killed (a crash: no goodbye to the client) and started: each time the sink says it
    is unreachable, local indexing goes on, and once the server is back the sink ships again;
    at the end the team database holds exactly the index's rows."""
    monkeypatch.setattr(Sink, "backoff", Backoff(0.05, 0.2))  # retried at once: a fast test
    tree = storage_tree(sessions=2)
    url = own_pg_server.url()
    writer = LiveWriter(tree.root, seed=11)
    async with IndexerService(make_settings(ship_to=url, machine_id="m")) as svc:
        await svc.wait_until_synced()
        await shipped_everything(svc)

        def sink() -> SinkStats:
            stats = svc.stats()["sink"]
            return stats

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_writing, svc, writer, log_events, stop)
            for outage in (own_pg_server.stop, own_pg_server.kill):
                await anyio.to_thread.run_sync(outage)
                await until_logged(
                    log_events, "sink_failed", lambda: sink()["state"] == "unreachable"
                )
                indexed = log_events.counts["batch_indexed"]
                await log_events.wait_for("batch_indexed", indexed + 2)  # indexing goes on
                assert sink()["behind_changes"] > 0
                await anyio.to_thread.run_sync(own_pg_server.start)
                # the writer goes on: each batch written is a chance to ship
                more = partial(_more_windows, sink, sink()["windows"])
                await until_logged(log_events, "batch_indexed", more)
            stop.set()
        await svc.wait_until_synced()
        await shipped_everything(svc, timeout=60)
        assert team_rows(url, "m") == await service_rows(svc)
        assert svc.health() == (True, "running")
    reconnected = [e for e in log_events.entries if e["event"] == "sink_reconnected"]
    assert len(reconnected) == 2
