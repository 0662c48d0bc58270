"""The PostgreSQL sink: first shipment of a large index, live lag, catch-up after an outage.

    python -m benchmarks.bench_ship [--parts 1000000] [--only first|live|catchup] [--runs 3]

The index is built once per size by the real service from the lean generated opencode.db
(``bench_sqlite``'s, cached under /tmp/indexer-bench) and copied for each run. PostgreSQL is the
tests' server (the ``pgserver`` wheel's binaries) with its durable defaults (fsync on),
on this machine. Each measurement runs in a child process (its peak RSS is its own):

* first: a sink alone on the whole index, from its start to every row on the server: rows/s,
  and the RSS the sink added (the peak minus the RSS of the open index before it started);
* live: the service following a copy of the opencode.db while a writer commits like opencode
  at ``--rate`` commits/s, shipping as it goes: lag from a change's commit in the index to its
  commit on the server (p50/p95/max over the last 4,096 changes), and rows equal at the end;
* catchup: the server stopped while ``--changes`` parts are rewritten in the index, then
  started: seconds and rows/s to catch up, and the team database equal to the index.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg

from benchmarks.bench_sqlite import backfill
from benchmarks.sqlite_data import in_child, lean_database
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


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="first-shipment runs (best and median)")
    ap.add_argument("--only", choices=["first", "live", "catchup"], action="append")
    args = ap.parse_args()
    index = built_index(args.parts)
    wanted = args.only or ["first", "live", "catchup"]
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
    finally:
        server.remove()
    for name, value in results.items():
        print(f"{name}: {value}", flush=True)
    return results


if __name__ == "__main__":
    main()
