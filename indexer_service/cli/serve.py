"""``indexer-service run`` and ``index``: the service in the foreground until a signal, or one
sync with a summary. SIGINT and SIGTERM are handled here and only here."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import structlog

from indexer_service.settings import Settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "index",
    "run",
    "until_signal",
]

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


CLOSE_GRACE_S = 10.0
"""After a signal the process ends within ``shutdown_timeout`` (the writes) plus this (the
checkpoint and close). Past it, something is stuck where nothing can interrupt it (a write
the OS does not return from: a hung disk or network mount), and the process exits anyway."""


async def _signals(
    service_scope: anyio.CancelScope,
    caught: list[signal.Signals],
    deadline: _Deadline,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            sig = signal.Signals(signum)
            if service_scope.cancel_called:
                # DuckDB's WAL makes every committed batch durable; what was in flight is
                # found again by the next start's reconciliation.
                print(f"indexer-service: {sig.name} again, exiting now", file=sys.stderr)
                os._exit(128 + sig.value)
            caught.append(sig)
            log.info("shutdown_requested", signal=sig.name)
            deadline.start(sig)
            service_scope.cancel()


class _Deadline:
    """Ends the process ``seconds`` after `start` (a signal) unless `cancel` comes first: a
    timer thread, so that nothing stuck on the event loop or in a worker thread can hold it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def start(self, sig: signal.Signals) -> None:
        if self.seconds is None or not math.isfinite(self.seconds) or self._timer is not None:
            return
        self._timer = threading.Timer(self.seconds, self._exit, (sig,))
        self._timer.daemon = True
        self._timer.start()

    def _exit(self, sig: signal.Signals) -> None:
        log.error("shutdown_forced", signal=sig.name, seconds=self.seconds)
        print(
            f"indexer-service: the shutdown did not end within {self.seconds:g} s "
            f"(shutdown_timeout + {CLOSE_GRACE_S:g} s to close): exiting now; every committed "
            "batch is kept and the next start finds the rest",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + sig.value)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def until_signal(
    body: Callable[[anyio.CancelScope], Awaitable[None]],
    *,
    exit_after_s: float | None = None,
) -> signal.Signals | None:
    """Run ``body(stop)``, where SIGINT or SIGTERM cancels ``stop`` (see `_signals`); the body
    chooses what the scope covers, and so what still runs after a signal. Returns the signal
    that cancelled ``stop``, if one did. A second signal ends the process at once, and so does
    ``exit_after_s`` passing after the first one, with the exit code 128 + the signal."""
    caught: list[signal.Signals] = []
    deadline = _Deadline(exit_after_s)
    try:
        async with anyio.create_task_group() as tg:
            stop = anyio.CancelScope()
            await tg.start(_signals, stop, caught, deadline)  # handled from the body's first line
            await body(stop)
            tg.cancel_scope.cancel()
    finally:
        deadline.cancel()
    return caught[0] if caught else None


def _exit_after(settings: Settings) -> float:
    return settings.shutdown_timeout + CLOSE_GRACE_S


async def run(settings: Settings) -> int:
    """Index, then follow changes until SIGINT or SIGTERM."""
    from indexer_service.service import IndexerService  # not loaded for the read commands

    async def serve(stop: anyio.CancelScope) -> None:
        with stop:
            async with IndexerService(settings) as svc, anyio.create_task_group() as tg:
                if sys.stderr.isatty():
                    tg.start_soon(_progress, svc)
                await svc.wait_until_synced()
                log.info("backfill_done", **svc.stats()["backfill"])
                await anyio.sleep_forever()

    await until_signal(serve, exit_after_s=_exit_after(settings))
    return EXIT_OK


async def _progress(svc: Any) -> None:
    """A one-line backfill progress display on a TTY."""
    started = time.monotonic()
    while True:
        await anyio.sleep(0.5)
        bf = svc.stats()["backfill"]
        done, total = bf["done"], max(bf["total"], 1)
        rate = done / max(time.monotonic() - started, 1e-6)
        eta = (total - done) / rate if rate > 0 else 0
        sys.stderr.write(
            f"\rbackfill {done:,}/{bf['total']:,} files  {rate:,.0f} files/s  ETA {eta:,.0f}s  "
        )
        sys.stderr.flush()
        if bf["finished"]:
            sys.stderr.write("\n")
            return


async def index(settings: Settings, as_json: bool) -> int:
    """Bring the database in line with the stores once, print a summary, return the exit code.
    SIGINT or SIGTERM stops it through the service's bounded shutdown, as for `run`; the exit
    code then says so (128 + the signal's number) and the next ``index`` resumes. It ships
    nothing, even with ``ship_to`` set: the next ``run`` ships what it indexed."""
    from indexer_service.service import IndexerService

    started = time.monotonic()
    # one pass and out: the team database is `run`'s (a sink cut off at exit would ship part)
    svc_settings = dataclasses.replace(settings, watch=False, ship_to=None)
    synced: dict[str, Any] = {}

    async def sync(stop: anyio.CancelScope) -> None:
        with stop:
            async with IndexerService(svc_settings, periodic_reconcile=False) as svc:
                await svc.wait_until_synced()
                counts = await svc.file_counts()
                synced.update(counts=counts, stats=svc.stats())

    caught = await until_signal(sync, exit_after_s=_exit_after(settings))
    if caught is not None and not synced:  # a signal ended `sync` (an error would be raised)
        print(
            f"indexer-service: interrupted by {caught.name} before the sync finished; what was "
            "written is kept and the next `index` resumes from there",
            file=sys.stderr,
        )
        return 128 + caught.value
    counts, stats = synced["counts"], synced["stats"]
    elapsed = time.monotonic() - started
    processed = stats["workers"].get("files_indexed", 0) + stats["workers"].get("files_errors", 0)
    summary = {
        "storage": stats["storage_path"],
        "opencode_db": list(stats["databases"]),
        "db": str(settings.db_path),
        "files": counts,
        "processed": processed,
        "seconds": round(elapsed, 3),
        "files_per_s": round(processed / elapsed, 1) if elapsed > 0 else 0.0,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return EXIT_OK


def _print_summary(summary: dict[str, Any]) -> None:
    files: dict[str, dict[str, int]] = summary["files"]
    statuses = sorted({s for by in files.values() for s in by})
    print(f"{'type':<14}" + "".join(f"{s:>12}" for s in statuses))
    for ftype, by in sorted(files.items()):
        print(f"{ftype:<14}" + "".join(f"{by.get(s, 0):>12,}" for s in statuses))
    print(
        f"processed {summary['processed']:,} files in {summary['seconds']:.1f}s "
        f"({summary['files_per_s']:,.0f} files/s)"
    )
