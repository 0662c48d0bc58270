"""What the demo shows while it runs: an `Agent` writing like OpenCode at work, and the status
line (`StatusLine`, `Meter`) that says what the service does meanwhile."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import anyio

from indexer_service.demo.synthetic import LiveDbWriter, LiveWriter
from indexer_service.http.metrics import histogram_quantile
from indexer_service.service import IndexerService

__all__ = ["Agent", "Meter", "StatusLine"]

REFRESH_S = 0.5


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
    """An OpenCode agent at work on ``store`` (an ``opencode.db``: `LiveDbWriter`; a legacy
    tree: `LiveWriter`), at ``rate`` writes/s.

    `act` does one thing and runs in a worker thread: it sleeps between writes to keep the
    rate, so a streamed text part is rewritten over time as it is in OpenCode.
    """

    def __init__(self, store: Path, old_sessions: list[str], rate: float, seed: int = 0) -> None:
        now = int(time.time() * 1000)
        self._writer: Any = (
            LiveDbWriter(store, seed=seed, base_time_ms=now, on_write=self._pace)
            if store.suffix == ".db"
            else LiveWriter(store, seed=seed, base_time_ms=now, on_write=self._pace)
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

    def _pace(self, _written: object) -> None:
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
            parts = w.step_parts(written)
            w.corrupt_part(r.choice(parts), r.choice(w.damage_kinds), seed=r.randrange(1 << 30))
            self.counts["corrupted"] += 1


class Meter:
    """The live line's figures from the service's stats and latency histogram."""

    def __init__(self, svc: IndexerService, noun: str = "files") -> None:
        self._svc = svc
        self._noun = noun
        self._started = time.monotonic()
        self._latency0 = svc.metrics.latency_buckets()
        self._done: deque[tuple[float, int]] = deque(maxlen=int(5 / REFRESH_S))  # ~5 s window

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
            f"{sum(by.get('indexed', 0) for by in files.values()):,} {self._noun} indexed  "
            f"{rate:,.0f} {self._noun}/s  "
            f"p95 {'-' if p95 is None else f'{p95 * 1000:,.0f} ms'}  "
            f"{acc['pending'] + acc['ready']:,} pending  "
            f"{sum(by.get('error', 0) for by in files.values()):,} errors"
        )
