"""Shared fixtures: generated storage trees, database paths, settings, and tree/index checks."""

from __future__ import annotations

import errno
import inspect
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

import anyio
import pytest
import structlog
from blockbuster import BlockBuster
from structlog.typing import EventDict

import indexer_service
from indexer_service.demo.synthetic import TreeSpec, TreeSummary, generate_tree
from indexer_service.model import BatchResult
from indexer_service.service import IndexerService
from indexer_service.settings import Settings
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.layout import classify
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.stats import ServiceStats
from indexer_service.store.database import Database

# -- event loops: every coroutine test runs on anyio's asyncio and trio backends -------------
# A test, or a module through `pytestmark`, marked `asyncio_only` runs on asyncio alone: what
# serves the HTTP API (aiohttp needs asyncio), and the slowest tests, whose code the rest of
# their module also runs on trio.

BACKENDS = ("asyncio", "trio")


def _is_coroutine_test(obj: object) -> bool:
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)  # hypothesis wraps it
    return inspect.iscoroutinefunction(inner)


def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> None:
    """Hand every coroutine test to anyio's plugin (mark ``anyio``, which runs it once per
    `anyio_backend`); an ``asyncio_only`` one gets asyncio as its only backend, unless the
    test names its backends itself (``parametrize("anyio_backend", ...)``)."""
    if not (collector.istestfunction(obj, name) and _is_coroutine_test(obj)):
        return
    own = getattr(obj, "pytestmark", [])
    if not any(m.name == "anyio" for m in own):
        pytest.mark.anyio(obj)
        pytest.mark.usefixtures("anyio_backend")(obj)
    only_asyncio = collector.get_closest_marker("asyncio_only") or any(
        m.name == "asyncio_only" for m in own
    )
    pinned = any(m.name == "parametrize" and m.args[0] == "anyio_backend" for m in own)
    if only_asyncio and not pinned:
        pytest.mark.parametrize("anyio_backend", ["asyncio"])(obj)


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend a coroutine test runs on (a parametrize on the test overrides it)."""
    backend: str = request.param
    return backend


# -- end of event loops --------------------------------------------------------------------


def indexable_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` the service must index: path -> (mtime_ns, size)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if classify(str(root), path) is not None:
                st = os.stat(path)
                out[path] = (st.st_mtime_ns, st.st_size)
    return out


def indexed_files(db_path: Path) -> dict[str, tuple[int, int, str]]:
    """file_index as path -> (mtime_ns, size, status), read from a closed database file."""
    with Database(db_path, read_only=True) as db:
        rows = db.cursor().execute("SELECT file_path, mtime_ns, size, status FROM file_index")
        return {p: (m, s, st) for p, m, s, st in rows.fetchall()}


def assert_index_matches_tree(root: Path, db_path: Path) -> None:
    """The database describes exactly the files on disk, each at its current version."""
    on_disk = indexable_files(root)
    in_db = indexed_files(db_path)
    assert set(in_db) == set(on_disk), (
        f"missing {len(set(on_disk) - set(in_db))}, extra {len(set(in_db) - set(on_disk))}"
    )
    stale = [p for p, (m, s) in on_disk.items() if in_db[p][:2] != (m, s)]
    assert not stale, f"{len(stale)} stale rows, e.g. {stale[:3]}"


def load_batch(loader: Loader, paths: Sequence[str]) -> BatchResult:
    """Read, extract and write one batch, as a worker does (`prepare`, then `write`)."""
    return loader.write(loader.prepare(paths))


TreeFactory = Callable[..., TreeSummary]


def unstarted_stats(db_path: Path) -> ServiceStats:
    """The `stats()` of a service on a legacy tree beside ``db_path`` that has not started: the
    real snapshot, for fakes of a running service to set values in."""
    return IndexerService(Settings(storage_path=db_path.parent, db_path=db_path)).stats()


class FakeClock:
    """A clock (monotonic or epoch seconds) that moves only when told to; `sleep` waits on it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._moved: anyio.Event | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on (from the event loop's thread); wakes every `sleep` now due."""
        self.now += seconds
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced ``seconds`` past now (never by itself)."""
        until = self.now + seconds
        while self.now < until:
            if self._moved is None:
                self._moved = anyio.Event()
            await self._moved.wait()


class LogEvents:
    """A structlog processor that counts events by name as the service logs them (dropping
    them) and lets a test await a count: an event to wait on instead of a sleep."""

    def __init__(self) -> None:
        self.entries: list[EventDict] = []
        """Every event logged, as `structlog.testing.capture_logs` keeps them."""
        self.counts: Counter[str] = Counter()
        self._loop_thread = threading.get_ident()
        self._logged: anyio.Event | None = None  # created by a waiter, on the loop

    def __call__(self, _logger: object, level: str, event: EventDict) -> NoReturn:
        self.entries.append({**event, "log_level": level})
        self.counts[event["event"]] += 1
        if self._logged is not None and threading.get_ident() == self._loop_thread:
            self._logged.set()  # (an anyio event is set from its loop's thread only)
            self._logged = None
        raise structlog.DropEvent

    async def wait_for(self, name: str, count: int = 1) -> None:
        """Return once ``name`` has been logged ``count`` times in all (on the event loop)."""
        while self.counts[name] < count:
            if self._logged is None:
                self._logged = anyio.Event()
            await self._logged.wait()


async def eventually(
    svc: IndexerService, cond: Callable[[], bool], events: LogEvents, timeout: float = 20
) -> None:
    """Wait for a condition on the database, checked once the pipeline is idle and again
    after each batch written (the watcher reports changes some milliseconds after them)."""
    with anyio.fail_after(timeout):
        while True:
            written = events.counts["batch_indexed"]
            await svc.drain()
            if await anyio.to_thread.run_sync(cond):
                return
            await events.wait_for("batch_indexed", written + 1)


@pytest.fixture
def log_events() -> LogEvents:
    """`LogEvents` installed as structlog's only processor for this test."""
    events = LogEvents()
    structlog.reset_defaults()  # every level, whatever an earlier test configured
    structlog.configure(processors=[events])
    return events


@contextmanager
def held_by_another_process(db_path: Path) -> Iterator[int]:
    """Hold ``db_path`` open read-write in a child process (as a running service would, but
    serving nothing); yields the child's PID."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(db_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        yield holder.pid
    finally:
        holder.communicate("", timeout=30)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that runs the CLI in process configures structlog globally (a level filter that
    would hide info events from the next test's `capture_logs`): give the defaults back."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _ephemeral_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services started by tests (in process or as subprocesses) listen on a free port."""
    monkeypatch.setenv("INDEXER_HTTP_PORT", "0")


@pytest.fixture
def storage_tree(tmp_path: Path) -> TreeFactory:
    """Build a synthetic OpenCode storage tree under tmp_path (``storage/``)."""

    def make(sessions: int = 3, seed: int = 0, **spec: object) -> TreeSummary:
        return generate_tree(tmp_path / "storage", TreeSpec(sessions=sessions, seed=seed, **spec))  # type: ignore[arg-type]

    return make


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "index.duckdb"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    """An open, migrated, empty database at ``db_path``; closed after the test."""
    with Database(db_path) as database:
        yield database


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """An empty storage root, ``tmp_path/storage``."""
    root = tmp_path / "storage"
    root.mkdir()
    return root


@pytest.fixture
def loader(db: Database, storage: Path) -> Iterator[Loader]:
    """A `Loader` of ``storage`` into ``db``."""
    loader = Loader(db, FileTracker(db), storage)
    yield loader
    loader.close()


@pytest.fixture
def make_settings(tmp_path: Path, db_path: Path) -> Callable[..., Settings]:
    """Settings for a service on tmp_path's storage tree and database."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "storage_path": tmp_path / "storage",
            "db_path": db_path,
            "workers": 2,
            "reconcile_interval": 3600.0,
            "http_port": 0,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


RunningService = Callable[..., AbstractAsyncContextManager[IndexerService]]


@pytest.fixture
def running_service(
    storage_tree: TreeFactory, make_settings: Callable[..., Settings]
) -> RunningService:
    """``async with running_service(sessions=1, **settings) as svc``: a service on a generated
    tree (``svc.settings.storage_path``), backfilled before the block runs, stopped after it.
    (A context manager, not a yielding fixture: the service's task group must be entered and
    left by the test's own task.)"""

    @asynccontextmanager
    async def start(sessions: int = 1, **overrides: object) -> AsyncIterator[IndexerService]:
        storage_tree(sessions=sessions)
        async with IndexerService(make_settings(**overrides)) as svc:
            await svc.wait_until_synced()
            yield svc

    return start


# -- no blocking call on the event loop ------------------------------------------------------
# blockbuster patches the blocking functions (file and socket I/O, sqlite3, time.sleep, a lock
# held elsewhere) to raise when called on the thread of a running asyncio loop, here when
# the package's code is on the stack. It sees the asyncio loop only: under trio it does nothing.

_TESTS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE = os.path.dirname(os.path.abspath(indexer_service.__file__)) + os.sep
_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def _called_from_a_test_body() -> bool:
    """Whether the innermost coroutine of the tests or the package on the stack is a test's:
    the test itself made a blocking call on the loop (often through one of the package's
    synchronous functions, e.g. to write the files OpenCode would), not the package."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_flags & _ASYNC_CODE:
            if frame.f_code.co_filename.startswith(_TESTS):
                return True
            if frame.f_code.co_filename.startswith(_PACKAGE):
                return False
        frame = frame.f_back
    return False


def _or_from_a_test_body(can_block: Callable[..., bool]) -> Callable[..., bool]:
    def check(*args: object, **kwargs: object) -> bool:
        return can_block(*args, **kwargs) or _called_from_a_test_body()

    return check


def _absolute(path: object, *_args: object, **_kwargs: object) -> bool:
    """``os.path.abspath`` of an absolute path only normalizes it: no system call."""
    return isinstance(path, str | os.PathLike) and os.path.isabs(path)


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    """Fail a test in which the package makes a blocking call on the event loop's thread."""
    buster = BlockBuster(["indexer_service"])
    buster.functions["os.path.abspath"].can_block_predicate = _absolute
    for function in buster.functions.values():
        function.can_block_predicate = _or_from_a_test_body(function.can_block_predicate)
    buster.activate()
    try:
        yield
    finally:
        buster.deactivate()


# -- a small disk to fill (issue #10) ---------------------------------------------------------

MiB = 2**20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (needs root: skipped otherwise; the injected test covers the logic)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small disk to fill")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root only): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; delete it to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (b"\0" * MiB, b"\0" * 4096):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler
