"""``indexer-service demo``: the real service on a generated OpenCode store that an agent keeps
writing to.

A temporary directory gets a synthetic ``opencode.db`` (`synthetic.generate_db`; a legacy JSON
tree with ``legacy_tree``), a few records in it malformed, and a DuckDB file. The service
backfills it, then an `agent.Agent` writes like OpenCode at work (new sessions, steps with tool
calls, streamed text, deletions, torn records) while a status line shows what the service does.
The CLI installs the signal handlers and prints ``report daily`` and ``status`` once `Demo.run`
returns.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import structlog

from indexer_service.demo.agent import REFRESH_S, Agent, Meter, StatusLine
from indexer_service.demo.synthetic import (
    LiveDbWriter,
    Malformed,
    TreeSpec,
    TreeSummary,
    corrupt,
    generate_db,
    generate_tree,
)
from indexer_service.limits import check
from indexer_service.service import IndexerService
from indexer_service.settings import Settings, env_values

__all__ = ["Demo", "DemoOptions"]

log = structlog.get_logger(__name__)

_HOUR_MS = 3_600_000
_TORN = (Malformed.TRUNCATED, Malformed.NUL_FILLED, Malformed.MISSING_ID)  # in the tree
_TORN_ROWS = (Malformed.TRUNCATED, Malformed.NUL_FILLED, Malformed.INVALID_UTF8)  # in the db


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
    legacy_tree: bool = False
    """Generate a legacy JSON tree (OpenCode 1.0-1.1) instead of an ``opencode.db``."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sessions", "rate", "duration", "seed"):  # the ranges of limits.LIMITS
            check(f"demo_{name}", getattr(self, name))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DemoOptions:
        """Options from ``INDEXER_DEMO_<FIELD>`` variables (``INDEXER_DEMO_DURATION=5``), then
        keyword overrides that are not None."""
        values = env_values(cls, "INDEXER_DEMO_", env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class Demo:
    """One demo in a temporary directory, removed on exit unless ``options.keep``::

    with Demo(options, settings) as demo:
        anyio.run(demo.run)
    """

    dir: Path
    """The temporary directory (set on entering the ``with`` block)."""
    store: Path
    """The generated store in it: ``opencode.db``, or the legacy ``storage`` tree."""

    def __init__(self, options: DemoOptions, settings: Settings) -> None:
        self.options = options
        self._base = settings
        self._out = sys.stdout
        self._tty = self._out.isatty()
        self.settings = settings

    def __enter__(self) -> Self:
        self.dir = Path(tempfile.mkdtemp(prefix="indexer-demo-"))
        tree = self.options.legacy_tree
        self.store = self.dir / ("storage" if tree else "opencode.db")
        self.settings = dataclasses.replace(
            self._base,
            storage_path=self.store if tree else None,
            opencode_db=None if tree else self.store,
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
        self._say(f"\nkept {self.dir} ({self.store.name} and index.duckdb); query it with:")
        self._say(f"  indexer-service report sessions --db {db}")
        self._say(f'  indexer-service query --db {db} "SELECT count(*) FROM parts"')

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    async def run(self, stop: anyio.CancelScope | None = None) -> None:
        """Generate the tree, backfill it, then write live until ``options.duration`` is over or
        ``stop`` is cancelled (Ctrl-C); either way the index then catches up with the tree and
        the service shuts down in order. ``stop`` covers only the demo's own work."""
        opts, store, db = self.options, self.store, self.settings.db_path
        ends = f"for {opts.duration:g} s (Ctrl-C stops sooner)" if opts.duration else "until Ctrl-C"
        what = "legacy OpenCode tree" if opts.legacy_tree else "OpenCode database"
        self._say(
            f"indexer-service demo: the service on a generated {what}, then an agent "
            f"writing to it {ends}"
        )
        started = time.monotonic()
        tree = await anyio.to_thread.run_sync(self._generate)
        label = "tree:" if opts.legacy_tree else "opencode:"
        self._say(
            f"{label:<10} {store}: {opts.sessions} sessions, {tree.files:,} {self._noun} "
            f"({tree.bytes / 1e6:,.1f} MB, {len(_TORN)} malformed) in {time.monotonic() - started:.1f} s"
        )
        self._say(f"database:  {db}")
        async with IndexerService(self.settings) as svc:
            with stop or anyio.CancelScope():
                await self._backfill(svc)
                self._say(f"try:       indexer-service status --db {db}   (from another terminal)")
                await self._live(svc, list(tree.session_ids))

    @property
    def _noun(self) -> str:
        return "files" if self.options.legacy_tree else "records"

    def _generate(self) -> TreeSummary:
        opts, store = self.options, self.store
        # the history's sessions end about when the demo starts, so the daily report shows
        # dates near today (about one hour of history per session)
        base = int(time.time() * 1000) - 2 * _HOUR_MS * opts.sessions
        spec = TreeSpec(sessions=opts.sessions, seed=opts.seed, base_time_ms=base)
        if not opts.legacy_tree:
            summary = generate_db(store, spec)
            with LiveDbWriter(store, seed=opts.seed) as writer:
                with closing(sqlite3.connect(store)) as con:
                    parts = [r[0] for r in con.execute("SELECT id FROM part ORDER BY id")]
                torn = random.Random(opts.seed).sample(parts, min(len(parts), len(_TORN_ROWS)))
                for i, (part, kind) in enumerate(zip(torn, _TORN_ROWS, strict=False)):
                    writer.corrupt_part(part, kind, seed=opts.seed + i)
            return summary
        tree = generate_tree(store, spec)
        files = sorted((store / "part").rglob("*.json"))
        torn_files = random.Random(opts.seed).sample(files, min(len(files), len(_TORN)))
        for i, (path, kind) in enumerate(zip(torn_files, _TORN, strict=False)):
            corrupt(path, kind, seed=opts.seed + i)
        return tree

    async def _backfill(self, svc: IndexerService) -> None:
        started = time.monotonic()
        line = StatusLine(self._out, self._tty)

        def progress() -> str:
            bf = svc.stats()["backfill"]
            if not bf["total"]:
                return f"backfill:  {bf['done']:,} {self._noun} indexed so far"
            rate = bf["done"] / max(time.monotonic() - started, 1e-6)
            return f"backfill:  {bf['done']:,}/{bf['total']:,} {self._noun}, {rate:,.0f}/s"

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._refresh, line, progress)
            await svc.wait_until_synced()
            tg.cancel_scope.cancel()
        seconds = time.monotonic() - started
        done = svc.stats()["backfill"]["done"]
        counts = await svc.file_counts()
        errors = sum(by.get("error", 0) for by in counts.values())
        line.end(
            f"backfill:  {done:,} {self._noun} in {seconds:.1f} s ({done / seconds:,.0f} "
            f"{self._noun}/s), {errors} errors (malformed {self._noun}, kept as status=error)"
        )
        log.info("demo_backfill_done", files=done, seconds=round(seconds, 3))

    async def _live(self, svc: IndexerService, old_sessions: list[str]) -> None:
        opts = self.options
        # the agent's writer opens the store (a database connection): off the event loop
        agent = await anyio.to_thread.run_sync(
            Agent, self.store, old_sessions, opts.rate, opts.seed
        )
        meter, line = Meter(svc, self._noun), StatusLine(self._out, self._tty)
        self._say(
            f"live:      the agent writes ~{opts.rate:g} {self._noun}/s: new sessions, tool "
            f"calls, streamed text, deletions, torn {self._noun}\n"
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
                f"{c['writes']:,} {self._noun} ({c['streamed']:,} streamed rewrites) in "
                f"{c['sessions']} new session{'s' if c['sessions'] != 1 else ''}, deleted "
                f"{c['deleted']:,} {self._noun}, left {c['corrupted']} malformed"
            )
            log.info("demo_stopped", reason=reason, **c)

    @staticmethod
    async def _refresh(line: StatusLine, text: Callable[[], str]) -> None:
        while True:
            line.show(text())
            await anyio.sleep(REFRESH_S)
