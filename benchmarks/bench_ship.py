"""The PostgreSQL sink: first shipment of a large index, live lag, catch-up after an outage.

    python -m benchmarks.bench_ship [--parts 1000000] [--only first|live] [--runs 3] [--rate 1000]

The index is built once per size by the real service from the lean generated opencode.db
(``bench_sqlite``'s, cached under /tmp/indexer-bench) and copied for each run. PostgreSQL is the
tests' server (the ``pgserver`` wheel's binaries) with its durable defaults (fsync on),
on this machine. Each measurement runs in a child process (its peak RSS is its own):

* first: a sink alone on the whole index, from its start to every row on the server: rows/s,
  and the RSS the sink added (the peak minus the RSS of the open index before it started);
* live: the service following a copy of the opencode.db while a writer commits like opencode
  at ``--rate`` commits/s, shipping as it goes: lag from a change's commit in the index to its
  commit on the server (p50/p95/max over the last 4,096 changes), and rows equal at the end;
* catchup (with live): the server stopped while ``--changes`` parts are rewritten in the
  opencode.db and indexed, then started: changes behind, seconds and rows/s to catch up
  (from the server's start, the sink's reconnect backoff included), and the team database
  equal to the index.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg

from benchmarks.bench_sqlite import _writer, backfill
from benchmarks.sqlite_data import copy_db, in_child, lean_database
from indexer_service import IndexerService, Settings
from indexer_service.ship.sink import Sink
from indexer_service.store.database import Database

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg_server import PgServer

from indexer_service.ship.tables import SHIPPED_TABLES

_SUMMARY = {
    t.name: f"count(*), count(DISTINCT {t.group}), "
    + ("sum(coalesce(tokens_output, 0))" if "tokens_output" in t.columns else "0")
    for t in SHIPPED_TABLES
}
"""Per table: rows, groups and output tokens, compared between the index and the server (the
tests compare every column; at a million rows that would be the benchmark)."""


def local_summary(index: Path) -> dict[str, tuple[int, ...]]:
    with Database(index, read_only=True) as db:
        cur = db.cursor()
        return {
            t: tuple(int(v) for v in cur.execute(f"SELECT {sql} FROM {t}").fetchall()[0])
            for t, sql in _SUMMARY.items()
        }


def team_summary(url: str, machine_id: str) -> dict[str, tuple[int, ...]]:
    with psycopg.connect(url) as pg:
        return {
            t: tuple(
                int(v)
                for v in pg.execute(
                    f"SELECT {sql} FROM {t} WHERE machine_id = %s", [machine_id]
                ).fetchall()[0]
            )
            for t, sql in _SUMMARY.items()
        }


def built_index(parts: int) -> Path:
    """An index of the lean database of ``parts`` parts, written by the current code."""
    opencode = lean_database(parts)
    folder = opencode.parent.with_name(f"ship-{parts}")
    index, done = folder / "index.duckdb", folder / "index.complete"
    if not done.exists():
        folder.mkdir(exist_ok=True)
        print(f"building the index of {opencode} (once)", flush=True)
        backfill(opencode, index)
        done.touch()
    return index


def _copy(index: Path, name: str) -> Path:
    target = index.with_name(name)
    for suffix in ("", ".wal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(index, target)
    return target


def _new_database(server: PgServer) -> str:
    name = f"b_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.url(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return server.url(name)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def first(index: Path, url: str) -> dict[str, Any]:
    """A sink alone shipping the whole index (in this child process)."""

    async def run() -> dict[str, Any]:
        with Database(index) as db:
            before = _rss_mb()
            sink = Sink(db, url, machine_id="bench")
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sink.run)
                target = db.changes.committed()
                await sink.wait_shipped(target)
                seconds = time.perf_counter() - started
                tg.cancel_scope.cancel()
            stats = sink.get_stats()
        return {
            "rows": stats["rows_shipped"],
            "windows": stats["windows"],
            "seconds": round(seconds, 2),
            "rows_per_s": round(stats["rows_shipped"] / seconds),
            "rss_before_mb": round(before),
        }

    return anyio.run(run)


def _rewrite_parts(opencode: Path, changes: int) -> None:
    """Rewrite ``changes`` parts of ``opencode`` in one transaction (a new field, a new
    ``time_updated``), as many changes as opencode would make in hours."""
    now_ms = int(time.time() * 1000)
    with sqlite3.connect(opencode) as con:
        con.execute(
            "UPDATE part SET data = json_set(data, '$.benchRewrite', ?), time_updated = ? "
            "WHERE rowid IN (SELECT rowid FROM part ORDER BY rowid LIMIT ?)",
            [now_ms, now_ms, changes],
        )


def live_and_catchup(
    opencode: Path, server: PgServer, url: str, rate: float, seconds: float, changes: int
) -> dict[str, Any]:
    """The service following a copy of ``opencode`` and shipping: live lag while a writer
    commits at ``rate``; then the server stopped while ``changes`` parts are rewritten and
    indexed, started again, and the catch-up timed (in this child process)."""
    copy, out = opencode.with_name("ship-live.db"), opencode.with_name("ship-commits.json")
    index = opencode.with_name("ship-live.duckdb")
    for f in (index, index.with_name(index.name + ".wal")):
        f.unlink(missing_ok=True)
    copy_db(opencode, copy)
    ctx = multiprocessing.get_context("spawn")
    settings = Settings.from_env(
        opencode_db=copy, db_path=index, http_enabled=False, ship_to=url, machine_id="bench"
    )

    def write(rate: float, seconds: float) -> None:
        proc = ctx.Process(target=_writer, args=(str(copy), rate, seconds, str(out)))
        proc.start()
        proc.join()

    async def run() -> dict[str, Any]:
        async with IndexerService(settings) as svc:
            await svc.wait_until_synced()
            await svc.wait_until_shipped()
            await anyio.to_thread.run_sync(write, rate, seconds)
            await svc.wait_until_synced()
            await svc.wait_until_shipped()
            sink = svc.stats()["sink"]
            live = {"rate": rate, "seconds": seconds, "lag_ms": dict(sink["lag_ms"])}
            live["equal"] = team_summary(url, "bench") == await _summary(svc)
            server.stop()
            before = sink["rows_shipped"]
            await anyio.to_thread.run_sync(_rewrite_parts, copy, changes)
            await svc.wait_until_synced()
            behind = svc.stats()["sink"]
            server.start()
            started = time.perf_counter()
            await svc.wait_until_shipped()
            took = time.perf_counter() - started
            rows = svc.stats()["sink"]["rows_shipped"] - before
            catchup = {
                "behind_changes": behind["behind_changes"],
                "behind_state": behind["state"],
                "rows": rows,
                "seconds": round(took, 2),  # from the start, the backoff's wait (<= 10 s) too
                "rows_per_s": round(rows / took),
                "equal": team_summary(url, "bench") == await _summary(svc),
            }
        return {"live": live, "catchup": catchup}

    try:
        return anyio.run(run)
    finally:
        for f in (copy, out, index, index.with_name(index.name + ".wal")):
            f.unlink(missing_ok=True)


async def _summary(svc: IndexerService) -> dict[str, tuple[int, ...]]:
    def read() -> dict[str, tuple[int, ...]]:
        cur = svc.db.own_cursor()
        try:
            return {
                t: tuple(int(v) for v in cur.execute(f"SELECT {sql} FROM {t}").fetchall()[0])
                for t, sql in _SUMMARY.items()
            }
        finally:
            cur.close()

    return await anyio.to_thread.run_sync(read)


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="first-shipment runs (best and median)")
    ap.add_argument("--only", choices=["first", "live"], action="append")
    ap.add_argument("--live-parts", type=int, default=100_000, help="database of the live run")
    ap.add_argument("--rate", type=float, default=1_000.0, help="commits/s of the live writer")
    ap.add_argument("--seconds", type=float, default=20.0, help="live writing time")
    ap.add_argument(
        "--changes", type=int, default=100_000, help="parts rewritten while the server is down"
    )
    args = ap.parse_args()
    index = built_index(args.parts)
    wanted = args.only or ["first", "live"]
    results: dict[str, Any] = {}
    server = PgServer(durable=True)
    server.start()
    try:
        if "first" in wanted:
            runs = []
            for _ in range(args.runs):
                url = _new_database(server)
                copy = _copy(index, "first.duckdb")
                run = in_child(first, copy, url)
                run["rss_added_mb"] = round(run["peak_rss_mb"] - run["rss_before_mb"])
                run["equal"] = team_summary(url, "bench") == local_summary(copy)
                print(f"first shipment run: {run}", flush=True)
                runs.append(run)
            rates = [r["rows_per_s"] for r in runs]
            results["first"] = {
                "rows": runs[0]["rows"],
                "rows_per_s": {"best": max(rates), "median": statistics.median(rates)},
                "rss_added_mb": max(r["rss_added_mb"] for r in runs),
                "equal": all(r["equal"] for r in runs),
            }
        if "live" in wanted:
            url = _new_database(server)
            opencode = lean_database(args.live_parts)
            results.update(
                in_child(
                    live_and_catchup, opencode, server, url, args.rate, args.seconds, args.changes
                )
            )
    finally:
        server.remove()
    for name, value in results.items():
        print(f"{name}: {value}", flush=True)
    return results


if __name__ == "__main__":
    main()
