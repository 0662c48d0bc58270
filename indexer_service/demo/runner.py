"""``indexer-service demo``: the real service on a generated tree that an agent keeps writing to.

A temporary directory gets a synthetic OpenCode storage tree (`synthetic.generate_tree`, with a
few malformed files) and a DuckDB file. The service backfills the tree, then an `Agent` writes
like OpenCode at work (new sessions, steps with tool calls, streamed text, deletions, torn
files) while a status line shows what the service does. The CLI installs the signal handlers
and prints ``report daily`` and ``status`` once `Demo.run` returns.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

import anyio
import structlog

from indexer_service.demo.synthetic import (
    LiveWriter,
    Malformed,
    TreeSpec,
    TreeSummary,
    corrupt,
    generate_tree,
)
from indexer_service.http.metrics import histogram_quantile
from indexer_service.service import IndexerService
from indexer_service.settings import Settings, at_least, env_values, positive

__all__ = ["Agent", "Demo", "DemoOptions", "StatusLine"]

log = structlog.get_logger(__name__)

_HOUR_MS = 3_600_000
_REFRESH_S = 0.5
_TORN = (Malformed.TRUNCATED, Malformed.NUL_FILLED, Malformed.MISSING_ID)  # in the tree


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does; `from_env` reads ``INDEXER_DEMO_<NAME>`` variables."""

    sessions: int = 20
    """Top-level sessions in the generated tree (about 350 files each)."""
    rate: float = 100.0
    """Files the agent writes per second, rewrites included."""
    duration: float = 60.0
    """Seconds of live writing; 0 runs until interrupted."""
    keep: bool = False
    """Keep the temporary directory at the end."""
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("demo sessions", self.sessions, 1)
        positive("demo rate", self.rate, " files/s")
        at_least("demo duration", self.duration, 0, "0 s")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DemoOptions:
        """Options from ``INDEXER_DEMO_<FIELD>`` variables (``INDEXER_DEMO_DURATION=5``), then
        keyword overrides that are not None."""
        values = env_values(cls, "INDEXER_DEMO_", env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class StatusLine:
    """A status that changes: redrawn in place on a terminal, else printed every ``every`` s."""

    def __init__(
        self,
        out: TextIO,
        tty: bool,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out, self._tty, self._every, self._clock = out, tty, every, clock
        self._last = clock()

    def show(self, text: str) -> None:
        if self._tty:
            self._write(f"\r{text}\x1b[K")
        elif self._clock() - self._last >= self._every:
            self._last = self._clock()
            self._write(text + "\n")

    def end(self, text: str) -> None:
        """The final state, always shown, on a line of its own."""
        self._write(f"\r{text}\x1b[K\n" if self._tty else text + "\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class Agent:
    """A `LiveWriter` driven like an OpenCode agent at work, at ``rate`` files/s.

    `act` does one thing and runs in a worker thread: it sleeps between file writes to keep the
    rate, so a streamed text part is rewritten over time as it is in OpenCode.
    """

    def __init__(self, root: Path, old_sessions: list[str], rate: float, seed: int = 0) -> None:
        self._writer = LiveWriter(
            root, seed=seed, base_time_ms=int(time.time() * 1000), on_write=self._pace
        )
        self._r = random.Random(seed)
        self._old = list(old_sessions)  # sessions of the generated tree, to delete
        self._session: str | None = None
        self._rate = rate
        self._due = time.monotonic()
        self._stop = threading.Event()
        self.counts: Counter[str] = Counter()
        """writes, streamed (rewrites among them), sessions, deleted, corrupted."""

    async def run(self) -> None:
        """Act until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._release_on_cancel)
            self._due = time.monotonic()
            while True:
                await anyio.to_thread.run_sync(self.act)

    async def _release_on_cancel(self) -> None:
        # a thread cannot be cancelled: end its pacing waits so the step in progress finishes now
        try:
            await anyio.sleep_forever()
        finally:
            self._stop.set()

    def _pace(self, _path: Path) -> None:
        self.counts["writes"] += 1
        # at most 1 s of catching up after a slow write
        self._due = max(self._due, time.monotonic() - 1.0) + 1.0 / self._rate
        self._stop.wait(self._due - time.monotonic())

    def act(self) -> None:
        """One step of the session at work, or a new session; sometimes streamed text, a deleted
        old session, or a torn file left behind."""
        r, w = self._r, self._writer
        if self._session is None or r.random() < 0.04:
            self._session = w.new_session()
            self.counts["sessions"] += 1
            return
        written = w.write_step(self._session)
        if w.last_text_part is not None and r.random() < 0.5:
            self.counts["streamed"] += len(w.stream_text(w.last_text_part, r.randint(5, 30)))
        dice = r.random()
        if dice < 0.015 and self._old:
            self.counts["deleted"] += len(w.delete_session(self._old.pop()))
        elif dice < 0.04:
            # a part of this step (step-start at least), not the text part that may be streamed
            parts = [p for p in written if p.parent.parent.name == "part" and p != w.last_text_part]
            corrupt(r.choice(parts), r.choice(list(Malformed)), seed=r.randrange(1 << 30))
            self.counts["corrupted"] += 1


class _Meter:
    """The live line's figures from the service's stats and latency histogram."""

    def __init__(self, svc: IndexerService) -> None:
        self._svc = svc
        self._started = time.monotonic()
        self._latency0 = svc.metrics.latency_buckets()
        self._done: deque[tuple[float, int]] = deque(maxlen=int(5 / _REFRESH_S))  # ~5 s window

    def line(self) -> str:
        stats = self._svc.stats()
        now, workers = time.monotonic(), stats["workers"]
        done = sum(workers[k] for k in ("files_indexed", "files_errors", "files_deleted"))
        self._done.append((now, done))
        t0, done0 = self._done[0]
        rate = (done - done0) / (now - t0) if now > t0 else 0.0
        latency = [
            (bound, n - n0)
            for (bound, n), (_, n0) in zip(
                self._svc.metrics.latency_buckets(), self._latency0, strict=True
            )
        ]
        p95 = histogram_quantile(0.95, latency)
        files: dict[str, dict[str, int]] = stats["files"]
        acc = stats["accumulator"]
        return (  # under 80 columns: a wrapped line cannot be redrawn in place
            f"[{now - self._started:3.0f}s] "
            f"{sum(by.get('indexed', 0) for by in files.values()):,} files indexed  "
            f"{rate:,.0f} files/s  "
            f"p95 {'-' if p95 is None else f'{p95 * 1000:,.0f} ms'}  "
            f"{acc['pending'] + acc['ready']:,} pending  "
            f"{sum(by.get('error', 0) for by in files.values()):,} errors"
        )


class Demo:
    """One demo in a temporary directory, removed on exit unless ``options.keep``::

    with Demo(options, settings) as demo:
        anyio.run(demo.run)
    """

    dir: Path
    """The temporary directory (set on entering the ``with`` block)."""
    storage: Path
    """The generated storage tree in it."""

    def __init__(self, options: DemoOptions, settings: Settings) -> None:
        self.options = options
        self._base = settings
        self._out = sys.stdout
        self._tty = self._out.isatty()
        self.settings = settings

    def __enter__(self) -> Self:
        self.dir = Path(tempfile.mkdtemp(prefix="indexer-demo-"))
        self.storage = self.dir / "storage"
        self.settings = dataclasses.replace(
            self._base,
            storage_path=self.storage,
            db_path=self.dir / "index.duckdb",
            http_port=0,  # never the port of a real service running on this machine
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.options.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._say(f"\nremoved {self.dir}")
            return
        db = self.settings.db_path
        self._say(f"\nkept {self.dir} (storage/ and index.duckdb); query it with:")
        self._say(f"  indexer-service report sessions --db {db}")
        self._say(f'  indexer-service query --db {db} "SELECT count(*) FROM parts"')

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    async def run(self, stop: anyio.CancelScope | None = None) -> None:
        """Generate the tree, backfill it, then write live until ``options.duration`` is over or
        ``stop`` is cancelled (Ctrl-C); either way the index then catches up with the tree and
        the service shuts down in order. ``stop`` covers only the demo's own work."""
        opts, storage, db = self.options, self.storage, self.settings.db_path
        ends = f"for {opts.duration:g} s (Ctrl-C stops sooner)" if opts.duration else "until Ctrl-C"
        self._say(
            "indexer-service demo: the service on a generated OpenCode tree, then an agent "
            f"writing to it {ends}"
        )
        started = time.monotonic()
        tree = await anyio.to_thread.run_sync(self._generate)
        self._say(
            f"tree:      {storage}: {opts.sessions} sessions, {tree.files:,} files "
            f"({tree.bytes / 1e6:,.1f} MB, {len(_TORN)} malformed) in {time.monotonic() - started:.1f} s"
        )
        self._say(f"database:  {db}")
        async with IndexerService(self.settings) as svc:
            with stop or anyio.CancelScope():
                await self._backfill(svc)
                self._say(f"try:       indexer-service status --db {db}   (from another terminal)")
                await self._live(svc, list(tree.session_ids))

    def _generate(self) -> TreeSummary:
        opts, storage = self.options, self.storage
        # the tree's sessions end about when the demo starts, so the daily report shows dates
        # near today (about one hour of history per session)
        base = int(time.time() * 1000) - 2 * _HOUR_MS * opts.sessions
        spec = TreeSpec(sessions=opts.sessions, seed=opts.seed, base_time_ms=base)
        tree = generate_tree(storage, spec)
        parts = sorted((storage / "part").rglob("*.json"))
        torn = random.Random(opts.seed).sample(parts, min(len(parts), len(_TORN)))
        for i, (path, kind) in enumerate(zip(torn, _TORN, strict=False)):
            corrupt(path, kind, seed=opts.seed + i)
        return tree

    async def _backfill(self, svc: IndexerService) -> None:
        started = time.monotonic()
        line = StatusLine(self._out, self._tty)

        def progress() -> str:
            bf = svc.stats()["backfill"]
            if not bf["total"]:
                return f"backfill:  listing the tree, {bf['done']:,} files indexed so far"
            rate = bf["done"] / max(time.monotonic() - started, 1e-6)
            return f"backfill:  {bf['done']:,}/{bf['total']:,} files, {rate:,.0f} files/s"

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._refresh, line, progress)
            await svc.wait_until_synced()
            tg.cancel_scope.cancel()
        seconds = time.monotonic() - started
        done = svc.stats()["backfill"]["done"]
        counts = await svc.file_counts()
        errors = sum(by.get("error", 0) for by in counts.values())
        line.end(
            f"backfill:  {done:,} files in {seconds:.1f} s ({done / seconds:,.0f} files/s), "
            f"{errors} errors (malformed files, kept as status=error)"
        )
        log.info("demo_backfill_done", files=done, seconds=round(seconds, 3))

    async def _live(self, svc: IndexerService, old_sessions: list[str]) -> None:
        opts = self.options
        agent = Agent(self.storage, old_sessions, opts.rate, opts.seed)
        meter, line = _Meter(svc), StatusLine(self._out, self._tty)
        self._say(
            f"live:      the agent writes ~{opts.rate:g} files/s: new sessions, tool calls, "
            "streamed text, deletions, torn files\n"
            "           (p95: event-to-index latency; the rewrites of a file within one batch "
            "window are indexed once)"
        )
        started, reason = time.monotonic(), "interrupted"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.run)
                tg.start_soon(self._refresh, line, meter.line)
                if opts.duration:
                    await anyio.sleep(opts.duration)
                    reason = "time is up"
                    tg.cancel_scope.cancel()
        finally:
            # on Ctrl-C too: what the agent wrote is indexed before the reports
            with anyio.move_on_after(svc.settings.shutdown_timeout, shield=True):
                await svc.wait_until_synced()
                await svc.file_counts()
            line.end(meter.line())
            c = agent.counts
            self._say(
                f"stopped:   {reason} after {time.monotonic() - started:.0f} s; the agent wrote "
                f"{c['writes']:,} files ({c['streamed']:,} streamed rewrites) in "
                f"{c['sessions']} new session{'s' if c['sessions'] != 1 else ''}, deleted "
                f"{c['deleted']:,} files, left {c['corrupted']} malformed"
            )
            log.info("demo_stopped", reason=reason, **c)

    @staticmethod
    async def _refresh(line: StatusLine, text: Callable[[], str]) -> None:
        while True:
            line.show(text())
            await anyio.sleep(_REFRESH_S)
