"""Fault injection and property tests (issue #10): huge and deeply nested files, a full disk,
and arbitrary JSON in every record field. Each test checks what a user would notice: the rest
of the batch is indexed, the file says what is wrong, the service says the disk is full, and
the index equals the tree once space is back."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import duckdb
import orjson
import pytest
from conftest import (
    LogEvents,
    TreeFactory,
    assert_index_matches_tree,
    fill,
    indexable_files,
    indexed_files,
    load_batch,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from indexer_service import IndexerService, Settings, WriteFailedError
from indexer_service import service as service_module
from indexer_service.backoff import Backoff
from indexer_service.cli.main import _settings, build_parser, main
from indexer_service.demo.synthetic import LiveWriter
from indexer_service.errors import ConfigError
from indexer_service.extract.specs import SPECS
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.store.database import Database
from indexer_service.store.write_retry import WriteRetry

SettingsFactory = Callable[..., Settings]
MiB = 2**20

TABLES = {"project": "projects", "session": "sessions", "message": "messages", "part": "parts",
          "todo": "todos", "session_diff": "session_diffs"}  # fmt: skip


def _entry(db: Database, path: str) -> tuple[Any, ...]:
    """(status, error_message, size) of a file_index row; () if there is none."""
    found = (
        db.cursor()
        .execute("SELECT status, error_message, size FROM file_index WHERE file_path = ?", [path])
        .fetchall()
    )
    return found[0] if found else ()


@pytest.fixture
def loader(tmp_path: Path) -> Iterator[Loader]:
    (tmp_path / "storage").mkdir()
    with Database(tmp_path / "index.duckdb") as db:
        loader = Loader(db, FileTracker(db), tmp_path / "storage")
        yield loader
        loader.close()


def _put(root: Path | str, rel: str, data: bytes | str) -> str:
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _part(pid: str, **fields: Any) -> bytes:
    doc = {"id": pid, "sessionID": "ses_f", "messageID": "msg_f", "type": "text", **fields}
    return orjson.dumps(doc)


# -- huge files ------------------------------------------------------------------------------


def write_tool_part(path: Path, size: int) -> None:
    """A valid tool part of exactly ``size`` bytes, nearly all of it the tool's output."""
    head = (
        f'{{"id": "{path.stem}", "sessionID": "ses_f", "messageID": "{path.parent.name}", '
        '"type": "tool", "callID": "call_1", "tool": "bash", "state": {"status": "completed", '
        '"input": {"command": "yes"}, "output": "'
    ).encode()
    tail = b'", "title": "yes", "metadata": {}, "time": {"start": 1, "end": 2}}}'
    left = size - len(head) - len(tail)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(head)
        unit = b"y\\n"  # JSON for "y" and a newline
        lines, rest = divmod(left, len(unit))
        for start in range(0, lines, MiB):
            f.write(unit * min(MiB, lines - start))
        f.write(b"y" * rest + tail)


@pytest.fixture(scope="module")
def huge_part(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 100 MB part file (valid JSON: a tool output of 100 MB), written once per module and
    hard-linked into the tests' trees (each test unlinks its link: no 100 MB left in /tmp)."""
    path = tmp_path_factory.mktemp("huge") / "msg_f" / "prt_huge.json"
    write_tool_part(path, 100 * MiB)
    assert orjson.loads(path.read_bytes())["state"]["output"].startswith("y\ny\n")
    yield path
    path.unlink()


def _link(src: Path, root: Path, rel: str) -> str:
    """Put ``src`` into a storage tree without copying 100 MB (a hard link)."""
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)
    return str(dst)


async def test_100_mb_file_is_an_error_the_rest_is_indexed_and_retried_when_it_changes(
    storage_tree: TreeFactory, make_settings: SettingsFactory, huge_part: Path
) -> None:
    """A 100 MB part is refused with a clear message and not read; everything else is
    indexed; once the agent rewrites it to a normal size it is indexed."""
    tree = storage_tree(sessions=1)
    msg = next(d.name for d in (tree.root / "part").iterdir())
    big = _link(huge_part, tree.root, f"part/{msg}/prt_huge.json")
    settings = make_settings()
    assert settings.max_file_bytes == 64 * MiB
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        assert _entry(svc.db, big) == (
            "error",
            "file too large: 104857600 bytes > max_file_bytes 67108864",
            104857600,
        )
        counts = await svc.file_counts()
        assert sum(c.get("error", 0) for c in counts.values()) == 1
        assert (
            sum(c.get("indexed", 0) for c in counts.values()) == len(indexable_files(tree.root)) - 1
        )
        assert svc.health() == (True, "running")

        os.unlink(big)  # the agent rewrites it in place (a new inode: the fixture stays intact)
        write_tool_part(Path(big), 10_000)
        await svc.wait_until_synced()
        assert _entry(svc.db, big) == ("indexed", None, 10_000)
        rows = (
            svc.db.cursor()
            .execute("SELECT tool, length(raw::VARCHAR) FROM parts WHERE id = 'prt_huge'")
            .fetchall()
        )
        assert rows == [("bash", 10_000)]
    assert_index_matches_tree(tree.root, settings.db_path)


_RSS_PROBE = """
import json, resource, sys
from pathlib import Path
from indexer_service.store.database import Database
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.sources.json_tree.file_index import FileTracker

root, db_path, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
with Database(db_path) as db:
    loader = Loader(db, FileTracker(db), root, max_file_bytes=limit)
    warm = loader.write(loader.prepare([str(root / "part/msg_f/prt_small.json")]))
    base = peak()
    huge = loader.write(loader.prepare([str(root / "part/msg_f/prt_huge.json")]))
    after_huge = peak()
    at_limit = loader.write(loader.prepare([str(root / "part/msg_f/prt_limit.json")]))
    after_limit = peak()
    loader.close()
print(json.dumps({
    "base": base, "after_huge": after_huge, "after_limit": after_limit,
    "results": [[r.indexed, r.errors] for r in (warm, huge, at_limit)],
}))
"""


def test_memory_stays_bounded_by_the_limit_not_the_file(tmp_path: Path, huge_part: Path) -> None:
    """Peak RSS (in a fresh process): a 100 MB file over the limit costs nothing, since it is
    not read; a file at the limit costs a small multiple of the limit."""
    root = tmp_path / "storage"
    limit = 16 * MiB
    _link(huge_part, root, "part/msg_f/prt_huge.json")
    write_tool_part(root / "part/msg_f/prt_limit.json", limit)
    _put(root, "part/msg_f/prt_small.json", _part("prt_small"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, str(root), str(tmp_path / "rss.duckdb"), str(limit)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        os.unlink(root / "part/msg_f/prt_huge.json")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["results"] == [[1, 0], [0, 1], [1, 0]]
    assert got["after_huge"] - got["base"] < 16 * MiB  # 100 MB on disk, none of it read
    assert got["after_limit"] - got["base"] < 10 * limit  # measured: 5-6x the file


def test_file_over_2_gib_is_an_error_not_a_failed_batch(loader: Loader) -> None:
    """A (sparse) 3 GiB file, beyond file_index's 32-bit size column, is an error like any
    other too-large file, and its neighbour is indexed."""
    huge = _put(loader.root, "part/msg_f/prt_3g.json", b"")
    os.truncate(huge, 3 * 2**30)
    fine = _put(loader.root, "part/msg_f/prt_fine.json", _part("prt_fine"))
    result = load_batch(loader, [huge, fine])
    assert (result.errors, result.indexed) == (1, 1)
    assert _entry(loader.db, huge) == (
        "error",
        "file too large: 3221225472 bytes > max_file_bytes 67108864",
        2**31 - 1,  # the column's maximum
    )


# -- deeply nested JSON ----------------------------------------------------------------------

DEPTH = 100_000


def test_100000_levels_of_nesting_index_or_fail_cleanly(loader: Loader) -> None:
    """DuckDB's parser (yyjson) takes 100,000 levels: a part whose tool input or metadata
    nests that deep is indexed. Where orjson is needed (array files, and saying what is wrong
    with a file) it stops at 1,024 levels: those files are errors that say so. One batch,
    no crash, and the good file in it is indexed."""
    arrays = "[" * DEPTH + "1" + "]" * DEPTH
    objects = '{"a": ' * DEPTH + "1" + "}" * DEPTH
    root = loader.root
    files = {
        "input": _put(root, "part/msg_f/prt_in.json", '{"id": "prt_in", "type": "tool", "state": {"input": ' + arrays + "}}"),
        "metadata": _put(root, "part/msg_f/prt_meta.json", '{"id": "prt_meta", "metadata": ' + objects + "}"),
        "top_array": _put(root, "part/msg_f/prt_arr.json", arrays),
        "top_object": _put(root, "part/msg_f/prt_obj.json", objects),
        "unclosed": _put(root, "part/msg_f/prt_open.json", '{"a": ' * DEPTH),
        "todo": _put(root, "todo/ses_f.json", '[{"id": "1", "content": ' + arrays + "}]"),
        "good": _put(root, "part/msg_f/prt_good.json", _part("prt_good")),
    }  # fmt: skip
    result = load_batch(loader, list(files.values()))
    assert (result.indexed, result.errors, result.requeue) == (3, 4, [])
    db = loader.db
    nested = "JSON nested deeper than 1024 levels at byte "
    assert _entry(db, files["top_array"])[:2] == ("error", nested + "1025")
    for name in ("top_object", "unclosed", "todo"):
        status, message, _ = _entry(db, files[name])
        assert status == "error" and message.startswith(nested), (name, message)
    for name in ("input", "metadata", "good"):
        assert _entry(db, files[name])[0] == "indexed", name
    rows = (
        db.cursor()
        .execute(
            "SELECT id, length(tool_input::VARCHAR), length(raw::VARCHAR) FROM parts ORDER BY id"
        )
        .fetchall()
    )
    sizes = {Path(p).stem: os.path.getsize(p) for p in files.values()}
    assert rows == [
        ("prt_good", None, sizes["prt_good"]),
        ("prt_in", 2 * DEPTH + 1, sizes["prt_in"]),
        ("prt_meta", None, sizes["prt_meta"]),
    ]
    views = (
        db.cursor().execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    )
    assert views
    for (view,) in views:  # the analytics views read raw JSON: none of them chokes on it
        db.cursor().execute(f"SELECT count(*) FROM {view}").fetchall()


# -- settings --------------------------------------------------------------------------------


def test_max_file_bytes_from_env_flag_and_validation() -> None:
    """INDEXER_MAX_FILE_BYTES and ``run --max-file-bytes`` set the limit; out-of-range values
    fail at start-up naming the setting."""
    assert Settings.from_env({"INDEXER_MAX_FILE_BYTES": "1000"}).max_file_bytes == 1000
    args = build_parser().parse_args(["run", "--max-file-bytes", "2048"])
    assert _settings(args).max_file_bytes == 2048
    for bad in (0, 2**31):
        with pytest.raises(ConfigError, match="max_file_bytes"):
            Settings(max_file_bytes=bad)


# -- a full disk ------------------------------------------------------------------------------


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def _assert_recovered(root: Path, db_path: Path, logs: Sequence[Mapping[str, Any]]) -> None:
    """What a user checks after the disk was full: the index equals the tree, no file was
    blamed, and the logs said what happened, naming the database."""
    assert_index_matches_tree(root, db_path)
    assert {status for *_, status in indexed_files(db_path).values()} == {"indexed"}
    assert not _events(logs, "file_error")
    failed = _events(logs, "database_write_failed")
    assert failed and all(e["log_level"] == "error" for e in failed)
    assert all(e["db"] == str(db_path) and "No space left on device" in e["error"] for e in failed)
    assert _events(logs, "database_write_recovered")


class InjectedDiskFull:
    """Makes the service's database fail as DuckDB 2.0.1 does on a full disk (the messages are
    the ones seen on a real tmpfs) until `free()`: ``wal`` fails each commit; ``checkpoint``
    fails a commit's checkpoint fatally, and then DuckDB refuses every statement until the
    database is opened again; ``reopen_fails`` also fails to open it while the disk is full."""

    def __init__(self, db: Database, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full, self.invalid, self.failures, self.opens = True, False, 0, 0
        wal = f'Could not write file "{db.path}.wal": No space left on device'
        checkpoint = f'Could not write file "{db.path}": No space left on device'
        real_transaction, real_cursor, real_open = db.transaction, db.cursor, db.open

        @contextmanager
        def transaction() -> Iterator[duckdb.DuckDBPyConnection]:
            with real_transaction() as cur:
                yield cur
                if self.full:  # at commit: the transaction is rolled back
                    self.failures += 1
                    if mode == "wal":  # the connection stays usable
                        raise duckdb.TransactionException(f"Failed to commit: {wal}")
                    self.invalid = True
                    raise duckdb.FatalException(f"Failed to create checkpoint: {checkpoint}")

        def cursor() -> duckdb.DuckDBPyConnection:
            if self.invalid:
                raise duckdb.FatalException(
                    "Failed: database has been invalidated because of a previous fatal error. "
                    "The database must be restarted prior to being used again.\n"
                    f'Original error: "Failed to create checkpoint: {checkpoint}"'
                )
            return real_cursor()

        def open_() -> Database:
            self.invalid = False
            self.opens += 1
            if mode == "reopen_fails" and self.full and self.opens > 1:
                raise duckdb.IOException(checkpoint)  # the database stays closed
            return real_open()

        monkeypatch.setattr(db, "transaction", transaction)
        monkeypatch.setattr(db, "cursor", cursor)
        monkeypatch.setattr(db, "open", open_)

    def free(self) -> None:
        self.full = False


@pytest.mark.parametrize("mode", ["wal", "checkpoint", "reopen_fails"])
async def test_disk_full_injected_is_reported_then_resumed(
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    log_events: LogEvents,
    mode: str,
) -> None:
    """While every write fails as on a full disk, health says so and names the database, and
    no file is marked as an error; once space is back the database is reopened if DuckDB
    invalidated it, and the index equals the tree."""
    monkeypatch.setattr(WriteRetry, "backoff", Backoff(0.5, 0.05))
    tree = storage_tree(sessions=1)
    settings = make_settings()
    svc = IndexerService(settings)
    disk = InjectedDiskFull(svc.db, mode, monkeypatch)
    logs = log_events.entries
    async with svc:
        await log_events.wait_for("database_write_failed", 3)
        healthy, reason = svc.health()
        assert not healthy and disk.failures >= 1
        assert reason.startswith(f"database {settings.db_path}: writes failing for ")
        assert reason.endswith("No space left on device")
        assert svc.stats()["database"]["state"] == "failing"
        assert svc.stats()["workers"]["files_errors"] == 0
        disk.free()
        await svc.wait_until_synced()
        assert svc.health() == (True, "running")
        stats = svc.stats()["database"]
        assert (stats["state"], stats["error"]) == ("ok", None)
        assert stats["failed_writes"] >= 3 and stats["recoveries"] >= 1
        assert (stats["reopens"] >= 1) == (mode != "wal") == (disk.opens > 1)
    _assert_recovered(tree.root, settings.db_path, logs)
    assert bool(_events(logs, "database_reopened")) == (mode != "wal")
    assert bool(_events(logs, "database_reopen_failed")) == (mode == "reopen_fails")


@pytest.mark.parametrize("mode", ["wal", "checkpoint", "reopen_fails"])
async def test_writes_failing_past_write_failure_timeout_stop_the_service(
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """With ``write_failure_timeout`` set, writes that keep failing that long end the service
    through its clean shutdown, and the host gets one `WriteFailedError` naming the database,
    DuckDB's error and what to do; no file is blamed, and a start with space back catches up."""
    monkeypatch.setattr(WriteRetry, "backoff", Backoff(0.5, 0.05))
    tree = storage_tree(sessions=1)
    settings = make_settings(write_failure_timeout=0.3)
    svc = IndexerService(settings)
    InjectedDiskFull(svc.db, mode, monkeypatch)
    with capture_logs() as logs, pytest.raises(WriteFailedError) as failed, anyio.fail_after(60):
        async with svc:
            await svc.wait_until_synced()
    message = str(failed.value)
    assert message.startswith(f"database {settings.db_path}: writes failed for ")
    assert "(write_failure_timeout), giving up: " in message
    assert "No space left on device; fix that and run again" in message
    assert failed.value.seconds >= 0.3 and "No space left on device" in failed.value.error
    assert len(_events(logs, "database_write_gave_up")) == 1
    assert _events(logs, "database_write_failed")
    assert not _events(logs, "batch_failed") and not _events(logs, "file_error")
    assert logs[-1]["event"] == "service_stopped"
    async with IndexerService(settings) as svc:  # the disk has room again
        await svc.wait_until_synced()
    assert_index_matches_tree(tree.root, settings.db_path)


async def test_write_retry_gives_up_only_on_failures_that_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the retry's own clock (each failed write here takes 4 s): failures that stop before
    ``give_up_after`` are retried and forgotten; failures lasting past it raise
    `WriteFailedError`, logged once however many workers give up."""
    monkeypatch.setattr(WriteRetry, "backoff", Backoff(0.001, 0.001))
    now = [0.0]
    with Database(tmp_path / "g.duckdb") as db:
        retry = WriteRetry(db, clock=lambda: now[0], give_up_after=10.0)
        outcomes = iter([False, False, False, True])  # 8 s of failures, then a write works

        async def load() -> str:
            now[0] += 4
            if next(outcomes, False):
                return "written"
            raise duckdb.TransactionException("Failed to commit: No space left on device")

        with capture_logs() as logs:
            assert await retry.run(load) == "written"
            with pytest.raises(WriteFailedError) as failed:
                await retry.run(load)  # 0, 4, 8, then 12 s of failures
            with pytest.raises(WriteFailedError):
                await retry.run(load)  # a second worker, still failing
        assert failed.value.seconds == 12
        assert failed.value.error == "Failed to commit: No space left on device"
        assert isinstance(failed.value.__cause__, duckdb.TransactionException)
        assert len(_events(logs, "database_write_failed")) == 3 + 3
        assert len(_events(logs, "database_write_gave_up")) == 1


def test_index_exits_with_one_line_when_writes_keep_failing(
    storage_tree: TreeFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`index` on a disk that stays full ends once writes have failed for
    ``--write-failure-timeout`` seconds: exit 1, and one line (besides the JSON logs) naming
    the database and DuckDB's error."""
    monkeypatch.setattr(WriteRetry, "backoff", Backoff(0.5, 0.05))
    tree = storage_tree(sessions=1)
    db_path = tmp_path / "full.duckdb"

    def full_disk(path: Path, **options: Any) -> Database:
        db = Database(path, **options)
        InjectedDiskFull(db, "wal", monkeypatch)
        return db

    monkeypatch.setattr(service_module, "Database", full_disk)
    argv = ["index", "--storage", str(tree.root), "--db", str(db_path), "--log-format", "json"]
    assert main([*argv, "--write-failure-timeout", "0.3"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    said = [line for line in lines if not line.startswith("{")]
    assert said == [lines[-1]]
    assert said[0].startswith(f"indexer-service: error: database {db_path}: writes failed for ")
    assert f'Could not write file "{db_path}.wal": No space left on device' in said[0]
    assert captured.out == ""  # no summary


async def test_workers_failing_together_reopen_the_database_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches that hit the same invalidated database reopen it once, then both load; an
    error that is not the database's (a bug) is raised, not retried."""
    monkeypatch.setattr(WriteRetry, "backoff", Backoff(0.5, 0.01))
    with Database(tmp_path / "r.duckdb") as db:
        recovery = WriteRetry(db, limiter=anyio.CapacityLimiter(1))
        calls: list[str] = []

        async def load(name: str) -> str:
            calls.append(name)
            if calls.count(name) == 1:
                raise duckdb.FatalException("database has been invalidated")
            return name

        results: list[str] = []

        async def worker(name: str) -> None:
            results.append(await recovery.run(lambda: load(name), files=1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "a")
            tg.start_soon(worker, "b")
        assert sorted(results) == ["a", "b"] and len(calls) == 4
        assert recovery.get_stats() == {
            "state": "ok", "error": None, "failing_since": None,
            "failed_writes": 2, "reopens": 1, "recoveries": 1,
        }  # fmt: skip
        assert db.cursor().execute("SELECT 42").fetchall() == [(42,)]

        def broken_reopen() -> None:
            raise RuntimeError("bug")

        async def invalidated() -> None:
            raise duckdb.FatalException("database has been invalidated")

        monkeypatch.setattr(db, "reopen", broken_reopen)
        with pytest.raises(RuntimeError, match="bug"):
            await recovery.run(invalidated)
        with pytest.raises(ValueError, match="not the database"):
            await recovery.run(lambda: _raise(ValueError("not the database")))


async def _raise(exc: Exception) -> None:
    raise exc


def test_reopen_while_another_thread_runs_a_query(tmp_path: Path) -> None:
    """A reopen while a reader's statement runs on another thread (the reconciler, an API
    query) neither crashes nor hangs: the close waits for the statement to end (DuckDB 2
    would refuse it), and the database works after."""
    with Database(tmp_path / "busy.duckdb") as db:
        cur = db.cursor()
        cur.execute("SET enable_progress_bar = true").fetchall()  # query_progress() >= 0 ...
        cur.execute("SET enable_progress_bar_print = false").fetchall()
        outcome: list[object] = []

        def query() -> None:
            try:
                outcome.append(cur.execute("SELECT sum(range) FROM range(300000000)").fetchall())
            except duckdb.Error as exc:  # closed under it
                outcome.append(exc)

        thread = threading.Thread(target=query)
        thread.start()
        deadline = time.monotonic() + 30
        while cur.query_progress() < 0 and not outcome:  # ... once the statement runs
            assert time.monotonic() < deadline
        db.reopen()
        thread.join(30)
        assert outcome and not thread.is_alive()
        assert db.cursor().execute("SELECT count(*) FROM file_index").fetchall() == [(0,)]


async def test_disk_full_on_a_real_tmpfs_is_reported_then_resumed(
    small_disk: Path,
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    log_events: LogEvents,
) -> None:
    """DuckDB on a real full disk, while the agent keeps writing: commits fail, a checkpoint
    invalidates the database, a stop cannot checkpoint. Health and the logs say so; after
    space is back the service reopens the database and, across a restart, nothing is lost."""
    monkeypatch.setattr(WriteRetry, "backoff", Backoff(0.5, 0.1))
    tree = storage_tree(sessions=2)
    settings = make_settings(db_path=small_disk / "index.duckdb", shutdown_timeout=1.0)
    writer = LiveWriter(tree.root, seed=5)
    logs = log_events.entries
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        session = writer.new_session()
        writer.write_step(session)
        await svc.wait_until_synced()  # in the WAL: the backfill's was checkpointed
        failed = log_events.counts["database_write_failed"]
        filler = fill(small_disk)
        for _ in range(3):
            writer.write_step(session)
        await log_events.wait_for("database_write_failed", failed + 1)
        assert "No space left on device" in svc.health()[1]
        assert str(settings.db_path) in svc.health()[1]
        # DuckDB checkpoints when its WAL grows large; on a full disk that invalidates it
        with pytest.raises(duckdb.Error, match="No space left on device"):
            await anyio.to_thread.run_sync(lambda: svc.db.cursor().execute("CHECKPOINT"))
        with pytest.raises(duckdb.Error, match="invalidated"):
            await anyio.to_thread.run_sync(
                lambda: svc.db.cursor().execute("SELECT count(*) FROM file_index")
            )
        filler.unlink()
        await svc.wait_until_synced()
        assert svc.health() == (True, "running")
        assert svc.stats()["database"]["reopens"] >= 1
        # full again, and stopped before space comes back: the stop cannot checkpoint
        failed = log_events.counts["database_write_failed"]
        filler = fill(small_disk)
        for _ in range(2):
            writer.write_step(session)
        await log_events.wait_for("database_write_failed", failed + 1)
    assert _events(logs, "checkpoint_failed")
    filler.unlink()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
    _assert_recovered(tree.root, settings.db_path, logs)
    assert _events(logs, "database_reopened")


# -- property: any JSON of the right top-level shape, in every file type ----------------------

_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond BIGINT too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_KEYS = st.sampled_from(["id", "time", "tokens", "created", "cache", "x", "ключ", "🙂", ""])
ANY_JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=5,
)
RIGHT = {
    "VARCHAR": st.text(max_size=24),
    "BIGINT": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "DOUBLE": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    "BOOLEAN": st.booleans(),
    "JSON": ANY_JSON,
}


@st.composite
def shaped(draw: st.DrawFn, struct: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An object with each field the extractor knows absent, of its type, or any JSON at all
    (a string for a timestamp, a list for the tokens...), plus unknown keys; and whether every
    known field present has its type."""
    doc: dict[str, Any] = {}
    well_typed = True
    for name, typ in struct.items():
        how = draw(st.sampled_from(("absent", "typed", "typed", "anything")))
        if how == "absent":
            continue
        if how == "anything":
            doc[name] = draw(ANY_JSON)
            well_typed = False
        elif isinstance(typ, dict):
            doc[name], ok = draw(shaped(typ))
            well_typed = well_typed and ok
        else:
            doc[name] = draw(RIGHT[typ])
    extra = draw(st.dictionaries(st.text(max_size=8), ANY_JSON, max_size=1))
    doc.update({k: v for k, v in extra.items() if k not in struct})
    return doc, well_typed


@st.composite
def record_file(draw: st.DrawFn, file_type: str) -> tuple[object, bool]:
    """The content of one file of ``file_type`` (id written as ``"{key}"``), and whether it
    must be indexed (every known field of its type, the id matching the file name)."""
    spec = SPECS[file_type]
    if spec.array:
        items, must = [], True
        for _ in range(draw(st.integers(0, 3))):
            item, ok = draw(shaped(dict(spec.struct)))
            if spec.item_key and draw(st.booleans()):
                item[spec.item_key] = draw(st.text(max_size=8))
            must = (
                must and ok and (spec.item_key is None or isinstance(item.get(spec.item_key), str))
            )
            items.append(item)
        return items, must
    doc, ok = draw(shaped({k: v for k, v in spec.struct.items() if k != "id"}))
    match = draw(st.sampled_from(("key", "key", "key", "absent", "anything")))
    if match == "key":
        doc = {"id": "{key}", **doc}
    elif match == "anything":
        doc = {"id": draw(ANY_JSON), **doc}
    return doc, ok and match == "key"


_RELATIVE = {
    "project": "project/{key}.json",
    "session": "session/proj/{key}.json",
    "message": "message/ses_p/{key}.json",
    "part": "part/msg_p/{key}.json",
    "todo": "todo/{key}.json",
    "session_diff": "session_diff/{key}.json",
}


def _with_key(doc: object, key: str) -> object:
    if isinstance(doc, dict):
        return {k: (key if v == "{key}" and k == "id" else v) for k, v in doc.items()}
    return doc


def _expected_rows(doc: object, file_type: str) -> int:
    if not isinstance(doc, list):
        return 1
    item_key = SPECS[file_type].item_key
    return len({item[item_key] for item in doc}) if item_key else len(doc)


@pytest.fixture(scope="module")
def prop_loader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loader]:
    """One database and loader for all generated examples (each example uses new file names)."""
    base = tmp_path_factory.mktemp("prop")
    with Database(base / "index.duckdb") as db:
        loader = Loader(db, FileTracker(db), base / "storage")
        yield loader
        loader.close()


_SERIAL = itertools.count()
_FILES = st.tuples(*(st.lists(record_file(t), min_size=1, max_size=2) for t in TABLES))


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(files=_FILES, ascii_only=st.booleans(), indent=st.sampled_from([None, 2]))
def test_any_json_of_the_right_shape_is_indexed_or_a_clear_error(
    prop_loader: Loader,
    files: tuple[list[tuple[object, bool]], ...],
    ascii_only: bool,
    indent: int | None,
) -> None:
    """Random objects (wrong types for known fields, huge ints, unicode, nulls) of every file
    type, loaded in one batch with a good file: each file is indexed with its rows, or has
    status 'error' with a message; no exception, and the good file is always indexed."""
    root = Path(prop_loader.root)
    batch: list[tuple[str, str, object, bool]] = []
    for file_type, docs in zip(TABLES, files, strict=True):
        for doc, must in docs:
            key = f"k{next(_SERIAL)}"
            file = root / _RELATIVE[file_type].format(key=key)
            file.parent.mkdir(parents=True, exist_ok=True)
            doc = _with_key(doc, key)
            file.write_bytes(json.dumps(doc, ensure_ascii=ascii_only, indent=indent).encode())
            batch.append((str(file), file_type, doc, must))
    good = root / "part" / "msg_p" / f"prt_good{next(_SERIAL)}.json"
    good.write_text(json.dumps({"id": good.stem, "type": "text", "text": "fine"}))

    result = load_batch(prop_loader, [p for p, *_ in batch] + [str(good)])

    assert (result.indexed + result.errors, result.requeue) == (len(batch) + 1, [])
    db = prop_loader.db
    assert _entry(db, str(good))[:2] == ("indexed", None)
    for path, file_type, doc, must in batch:
        status, message, _size = _entry(db, path)
        n = (
            db.cursor()
            .execute(f"SELECT count(*) FROM {TABLES[file_type]} WHERE file_path = ?", [path])
            .fetchall()[0][0]
        )
        if status == "error":
            assert message and n == 0, (path, message)
        else:
            assert status == "indexed" and n == _expected_rows(doc, file_type), (path, doc)
        assert status == "indexed" or not must, (message, doc)


async def test_a_cancelled_host_returns_in_bounded_time_while_writes_fail(
    small_disk: Path,
    storage_tree: TreeFactory,
    make_settings: SettingsFactory,
    log_events: LogEvents,
) -> None:
    """The disk is full and every write fails: cancelling the host ends the service without
    waiting out its shutdown timeout (the failing batches are given up, not retried), and
    what was not written is found again by the next start."""
    tree = storage_tree(sessions=2)
    settings = make_settings(db_path=small_disk / "index.duckdb", shutdown_timeout=1.0)
    writer = LiveWriter(tree.root, seed=7)
    with anyio.fail_after(15):  # a hang fails here, not after the suite's timeout
        with anyio.CancelScope() as host:
            async with IndexerService(settings) as svc:
                await svc.wait_until_synced()
                filler = fill(small_disk)
                session = writer.new_session()
                for _ in range(3):
                    writer.write_step(session)
                await log_events.wait_for("database_write_failed")
                host.cancel()
                await anyio.sleep_forever()
    assert _events(log_events.entries, "database_write_abandoned")
    assert not _events(log_events.entries, "shutdown_timeout")
    filler.unlink()
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
    assert_index_matches_tree(tree.root, settings.db_path)


async def test_a_cancelled_host_returns_in_bounded_time_while_a_write_hangs(
    storage_tree: TreeFactory, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write stuck inside DuckDB (a statement that does not end) is interrupted once the
    shutdown timeout is spent, and rolls back; the next start indexes what it held."""
    tree = storage_tree(sessions=1)
    settings = make_settings(shutdown_timeout=0.5)
    hang, hanging = threading.Event(), threading.Event()
    write = Loader.write

    def stuck_write(self: Loader, prepared: Any) -> Any:
        if hang.is_set():
            hanging.set()
            self.db.cursor().execute("SELECT sum(range) FROM range(1000000000000000)").fetchall()
        return write(self, prepared)

    monkeypatch.setattr(Loader, "write", stuck_write)
    with capture_logs() as logs:
        with anyio.fail_after(30):  # a hang fails here, not after the suite's timeout
            with anyio.CancelScope() as host:
                async with IndexerService(settings) as svc:
                    await svc.wait_until_synced()
                    hang.set()
                    writer = LiveWriter(tree.root, seed=3)
                    writer.write_step(writer.new_session())
                    await anyio.to_thread.run_sync(hanging.wait)
                    host.cancel()
                    await anyio.sleep_forever()
    assert _events(logs, "shutdown_timeout")
    monkeypatch.setattr(Loader, "write", write)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
    assert_index_matches_tree(tree.root, settings.db_path)


async def test_the_index_keeps_to_its_memory_limit(
    storage_tree: TreeFactory, make_settings: SettingsFactory
) -> None:
    """``memory_limit_mb`` is DuckDB's limit for the index; the WAL is folded in at 32 MB
    whatever the limit (data not yet checkpointed stays in memory)."""
    tree = storage_tree(sessions=1)
    settings = make_settings(memory_limit_mb=256)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        cur = svc.db.cursor()
        limit, threshold = cur.execute(
            "SELECT current_setting('memory_limit'), current_setting('checkpoint_threshold')"
        ).fetchone() or ("", "")
        assert (limit, threshold) == ("244.1 MiB", "30.5 MiB")  # 256 MB, 32 MB in MiB
    assert_index_matches_tree(tree.root, settings.db_path)
