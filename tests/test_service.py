"""IndexerService end to end: real watcher, real files, real DuckDB."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from conftest import (
    LogEvents,
    RunningService,
    TreeFactory,
    assert_index_matches_tree,
    eventually,
    held_by_another_process,
    indexable_files,
)
from structlog.testing import capture_logs

from indexer_service import (
    ConfigError,
    DatabaseError,
    DatabaseLockedError,
    IndexerService,
    Settings,
    find_service,
)
from indexer_service.demo.synthetic import LiveWriter
from indexer_service.sources.json_tree import files
from indexer_service.store.database import Database

SettingsFactory = Callable[..., Settings]


def _count(svc: IndexerService, sql: str) -> int:
    rows = svc.db.cursor().execute(sql).fetchall()
    return int(rows[0][0])


async def test_backfill_then_live_changes(
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    tmp_path: Path,
    log_events: LogEvents,
) -> None:
    """An existing tree is backfilled; then creates, rewrites and deletes are followed."""
    tree = storage_tree(sessions=2)
    root = tree.root
    settings = make_settings()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        assert _count(svc, "SELECT count(*) FROM parts") == tree.counts["part"]

        writer = LiveWriter(root, seed=7)
        session = writer.new_session()
        written = writer.write_step(session)
        victim = next(p for p in written if "/part/" in str(p))
        victim.unlink()
        expected = len(indexable_files(root))
        await eventually(
            svc, lambda: _count(svc, "SELECT count(*) FROM file_index") == expected, log_events
        )
        await svc.wait_until_synced()
    assert_index_matches_tree(root, settings.db_path)


@pytest.mark.asyncio_only  # 20,000 files; test_watcher.py's burst runs on trio
async def test_burst_into_new_directories_without_reconcile(
    tmp_path: Path, make_settings: SettingsFactory, log_events: LogEvents
) -> None:
    """20,000 files written into 2,000 new directories are all indexed by the watcher path alone."""
    root = tmp_path / "storage"
    (root / "part").mkdir(parents=True)
    settings = make_settings(reconcile_interval=3600.0)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        for d in range(2_000):
            directory = root / "part" / f"msg_{d:05d}"
            directory.mkdir()
            for f in range(10):
                doc = {"id": f"prt_{d:05d}{f}", "sessionID": "ses_x", "messageID": directory.name}
                (directory / f"prt_{d:05d}{f}.json").write_bytes(
                    orjson.dumps(doc | {"type": "step-start"})
                )
        await eventually(
            svc, lambda: _count(svc, "SELECT count(*) FROM parts") == 20_000, log_events, 60
        )
        assert (
            svc.stats()["reconciler"]["scans_full"] + svc.stats()["reconciler"]["scans_partial"]
            == 2
        )  # the initial scan and wait_until_synced's: no periodic scan helped


async def test_modify_storm_ends_with_final_version(
    running_service: RunningService, log_events: LogEvents
) -> None:
    """A text part rewritten hundreds of times ends up indexed with its final text."""
    async with running_service() as svc:
        assert svc.settings.storage_path is not None
        writer = LiveWriter(svc.settings.storage_path, seed=3)
        backfilled = svc.stats()["workers"]["files_indexed"]
        session = writer.new_session()
        writer.write_step(session)
        part = writer.last_text_part
        assert part is not None
        await anyio.to_thread.run_sync(lambda: writer.stream_text(part, deltas=300))
        final = orjson.loads(part.read_bytes())
        part_id = final["id"]

        def final_indexed() -> bool:
            rows = (
                svc.db.cursor()
                .execute("SELECT raw->>'text' FROM parts WHERE id = ?", [part_id])
                .fetchall()
            )
            return bool(rows) and rows[0][0] == final["text"]

        await eventually(svc, final_indexed, log_events)
        reads = svc.stats()["workers"]["files_indexed"] - backfilled
        assert reads < 300  # deduplicated: far fewer reads than rewrites


async def test_restart_indexes_only_what_changed(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """After a clean stop, a restart reads only the files changed or added meanwhile."""
    tree = storage_tree(sessions=2)
    settings = make_settings()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
    before = indexable_files(tree.root)
    writer = LiveWriter(tree.root, seed=11)
    writer.write_step(writer.new_session())
    after = indexable_files(tree.root)
    changed = {p for p, v in after.items() if before.get(p) != v}
    assert len(changed) > 5
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        assert svc.stats()["workers"]["files_indexed"] == len(changed)
    assert_index_matches_tree(tree.root, settings.db_path)


async def test_clean_shutdown_with_full_accumulator_loses_nothing(
    storage_tree: TreeFactory, make_settings: SettingsFactory, log_events: LogEvents
) -> None:
    """Files still waiting in the accumulator at exit are written before the database closes."""
    tree = storage_tree(sessions=1)
    settings = make_settings(window_ms=600_000.0, max_files=50_000, max_batch_files=50_000)
    async with IndexerService(settings) as svc:
        await log_events.wait_for("backfill_queued")
        assert svc.stats()["accumulator"]["pending"] == tree.files - tree.counts["other"]
        assert svc.stats()["workers"]["files_indexed"] == 0
    assert_index_matches_tree(tree.root, settings.db_path)


async def test_cancelled_host_still_gets_queued_files_written(
    storage_tree: TreeFactory, make_settings: SettingsFactory, log_events: LogEvents
) -> None:
    """Cancelling the scope around the service (what SIGINT does in the CLI) drains the
    accumulator and the workers like a clean exit: nothing queued is dropped."""
    tree = storage_tree(sessions=1)
    settings = make_settings(window_ms=600_000.0, max_files=50_000, max_batch_files=50_000)
    with anyio.CancelScope() as scope:
        async with IndexerService(settings) as svc:
            await log_events.wait_for("backfill_queued")
            assert svc.stats()["accumulator"]["pending"] == tree.files - tree.counts["other"]
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert_index_matches_tree(tree.root, settings.db_path)


async def test_starts_and_stops_many_times(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """The service can be started and stopped repeatedly in one process."""
    tree = storage_tree(sessions=1)
    settings = make_settings()
    for _ in range(4):
        async with IndexerService(settings) as svc:
            await svc.wait_until_synced()
            assert svc.stats()["state"] == "running"
        assert svc.stats()["state"] == "stopped"
    with Database(settings.db_path) as db:
        rows = db.cursor().execute("SELECT count(*) FROM file_index").fetchall()
    assert rows[0][0] == tree.files - tree.counts["other"]


async def test_missing_storage_then_created(tmp_path: Path, make_settings: SettingsFactory) -> None:
    """A service started before the storage exists indexes it once it appears."""
    settings = make_settings()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        project = tmp_path / "storage" / "project"
        project.mkdir(parents=True)
        (project / "global.json").write_bytes(
            orjson.dumps({"id": "global", "worktree": "/", "time": {"created": 1, "updated": 2}})
        )
        await svc.wait_until_synced()
        assert _count(svc, "SELECT count(*) FROM projects") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
async def test_unreadable_file_is_an_error_and_service_continues(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """A file that cannot be read gets error status; the rest is indexed."""
    tree = storage_tree(sessions=1)
    bad = next(p for p in indexable_files(tree.root) if "/part/" in p)
    os.chmod(bad, 0)
    async with IndexerService(make_settings()) as svc:
        await svc.wait_until_synced()
        assert _count(svc, "SELECT count(*) FROM file_index WHERE status = 'error'") == 1


async def test_thousands_of_deletions_at_once(running_service: RunningService) -> None:
    """Removing thousands of files at once removes their rows and file_index entries."""
    async with running_service(sessions=4) as svc:
        shutil.rmtree(_root(svc) / "part")
        await svc.wait_until_synced()
        assert _count(svc, "SELECT count(*) FROM parts") == 0
    assert_index_matches_tree(_root(svc), svc.settings.db_path)


async def test_directory_replaced_by_a_file(running_service: RunningService) -> None:
    """A message directory replaced by a plain file of the same name drops its files' rows."""
    async with running_service() as svc:
        victim = next(d for d in (_root(svc) / "part").iterdir() if d.is_dir())
        shutil.rmtree(victim)
        victim.write_text("not a directory")
        await svc.wait_until_synced()
        assert svc.health() == (True, "running")
    assert_index_matches_tree(_root(svc), svc.settings.db_path)


async def test_a_tree_growing_past_the_watch_limit_is_warned_about_once(
    running_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch limit is checked after every scan, not only the first: directories created
    while the service runs can cross it; the warning comes once."""
    from indexer_service.sources.json_tree import source

    async with running_service(sessions=1) as svc:
        known = svc.stats()["reconciler"]["dirs_known"]
        monkeypatch.setattr(source, "inotify_watch_limit", lambda: known + 3)
        root = _root(svc)
        with capture_logs() as logs:
            await svc.wait_until_synced()
            assert [e for e in logs if e["event"] == "watch_limit_low"] == []
            for i in range(5):
                new = root / "part" / f"msg_grown{i}"
                new.mkdir()
                (new / "prt_x.json").write_bytes(b'{"id": "prt_x"}')
            await svc.wait_until_synced()
            await svc.wait_until_synced()
        warned = [e for e in logs if e["event"] == "watch_limit_low"]
        assert len(warned) == 1 and warned[0]["dirs"] >= known + 5


@pytest.mark.asyncio_only  # the HTTP API (aiohttp)
async def test_a_port_in_use_reaches_the_host_as_a_config_error(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """Not an ExceptionGroup: the project's own error, naming the address."""
    storage_tree(sessions=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            async with IndexerService(make_settings(http_enabled=True, http_port=port)):
                pytest.fail("started although the port is taken")


async def test_a_locked_index_reaches_the_host_as_one_error(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """Another process holding the index: a `DatabaseLockedError` naming it, not a group."""
    storage_tree(sessions=1)
    settings = make_settings()
    with held_by_another_process(settings.db_path) as pid:
        with pytest.raises(DatabaseLockedError, match=f"locked by process {pid}"):
            async with IndexerService(settings):
                pytest.fail("started on a locked index")


async def test_an_index_on_a_read_only_path_reaches_the_host_as_one_error(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """/sys is read-only even to root: a `DatabaseError` saying to choose a writable path."""
    storage_tree(sessions=1)
    with pytest.raises(DatabaseError, match="choose another db_path") as caught:
        async with IndexerService(make_settings(db_path=Path("/sys/index.duckdb"))):
            pytest.fail("started on a read-only path")
    assert type(caught.value) is DatabaseError


@pytest.mark.parametrize("store", ["storage_path", "opencode_db"])
async def test_a_store_of_the_wrong_kind_reaches_the_host_as_one_error(
    store: str, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """A storage root that is a file, or a database path that is a folder, is refused at start
    (a missing one is waited for instead)."""
    wrong = tmp_path / "wrong"
    if store == "storage_path":
        wrong.write_text("not a folder")
    else:
        wrong.mkdir()
    with pytest.raises(ConfigError, match=f"{store} {wrong}"):
        async with IndexerService(make_settings(**{store: wrong})):
            pytest.fail("started on an unusable store")
    assert not make_settings().db_path.exists()  # refused before the index was created


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_http_api_under_trio_is_a_config_error_before_anything_is_opened(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """aiohttp needs asyncio: a trio host is told so and what to do, and gets no database, no
    token and no discovery file. Without the API, the same host runs the service."""
    storage_tree(sessions=1)
    settings = make_settings(http_enabled=True)
    with pytest.raises(ConfigError, match=r"asyncio backend.*http_enabled=False"):
        async with IndexerService(settings):
            pytest.fail("started although the HTTP API cannot run under trio")
    assert not settings.db_path.parent.exists()
    async with IndexerService(make_settings(http_enabled=False)) as svc:
        await svc.wait_until_synced()
        assert svc.health() == (True, "running")


async def test_the_hosts_own_error_comes_back_as_it_was_raised(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    storage_tree(sessions=1)
    cause = KeyError("x")
    with pytest.raises(ValueError, match="host failed") as caught:
        async with IndexerService(make_settings()):
            raise ValueError("host failed") from cause
    assert caught.value.__cause__ is cause


async def test_stats_are_current_when_wait_until_synced_returns(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    tree = storage_tree(sessions=1)
    async with IndexerService(make_settings()) as svc:
        await svc.wait_until_synced()
        stats = svc.stats()
        assert stats["backfill"]["finished"]
        assert stats["files"]["part"]["indexed"] == tree.counts["part"]


async def test_the_service_marks_its_backfill_finished_itself(
    storage_tree: TreeFactory, make_settings: SettingsFactory, log_events: LogEvents
) -> None:
    """A host that never calls `wait_until_synced` (a dashboard reading `stats()`) sees the
    backfill finished, with every record counted, once its batches are written."""
    tree = storage_tree(sessions=1)
    async with IndexerService(make_settings()) as svc:
        await log_events.wait_for("backfill_checkpointed")
        backfill = svc.stats()["backfill"]
    total = len(indexable_files(tree.root))
    assert backfill == {"total": total, "done": total, "finished": True}


async def test_a_file_rewritten_while_read_is_written_without_waiting_for_the_window(
    storage_tree: TreeFactory, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten while a worker reads it goes back to the accumulator and no batch
    follows: `wait_until_synced` still writes its final version at once, not after the
    batching window (an hour here)."""
    storage_tree(sessions=1)
    settings = make_settings(window_ms=3_600_000, watch=False)
    root = settings.storage_path
    assert root is not None
    changing = sorted(indexable_files(root))[0]
    read_fd = files._read_fd
    rewritten = threading.Event()

    def rewrite_once(fd: int, size: int) -> bytes:  # in the worker's thread
        if not rewritten.is_set() and os.fstat(fd).st_ino == os.stat(changing).st_ino:
            rewritten.set()
            data = orjson.loads(Path(changing).read_bytes())
            Path(changing).write_bytes(orjson.dumps({**data, "rewritten": True}))
        return read_fd(fd, size)

    monkeypatch.setattr(files, "_read_fd", rewrite_once)
    async with IndexerService(settings) as svc:
        with anyio.fail_after(60):
            await svc.wait_until_synced()
        assert svc.stats()["workers"]["files_requeued"] == 1
    assert_index_matches_tree(root, settings.db_path)


async def test_a_library_host_gets_no_port_and_no_files_by_default(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """Default settings serve no HTTP API: nothing listens, no token or discovery file."""
    storage_tree(sessions=1)
    settings = make_settings()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        beside = sorted(p.name for p in settings.db_path.parent.iterdir())
    assert not [name for name in beside if name.endswith((".token", ".api.json"))]
    assert find_service(settings.db_path) is None


def _root(svc: IndexerService) -> Path:
    """The legacy tree the service follows."""
    assert svc.settings.storage_path is not None
    return svc.settings.storage_path


async def test_periodic_passes_during_a_backfill_read_no_file_twice(
    storage_tree: TreeFactory, make_settings: SettingsFactory, log_events: LogEvents
) -> None:
    """Passes every 10 ms from the start: none runs before the backfill is written, so none
    finds its files in flight and queues them again. Every file is read once, and the passes
    do run once it is."""
    tree = storage_tree(sessions=3)
    settings = make_settings(reconcile_interval=0.01, max_files=20, max_batch_files=20)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        scans = log_events.counts["reconcile_done"]
        await log_events.wait_for("reconcile_done", scans + 1)  # a periodic pass, after it
        workers = svc.stats()["workers"]
    assert workers["files_indexed"] == len(indexable_files(tree.root))
    assert workers["files_requeued"] == 0
