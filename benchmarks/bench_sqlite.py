"""The SQLite source on a large generated opencode.db: backfill, reconciliation, idle cost, live.

    python -m benchmarks.bench_sqlite [--parts 1000000] [--only NAME] [--rate 100] [--seconds 20]

The database (opencode's schema, ``demo.synthetic.generate_db``) is generated once per size and
cached under /tmp/indexer-bench. Each measurement runs the real service in a child process
(its peak RSS is its own):

* ceiling: stdlib ``sqlite3`` reading every message and part (``SELECT *``) and ``orjson``
  parsing each ``data``, no DuckDB: rows/s;
* backfill: a fresh index of the whole database, from the start to every row queryable
  (``wait_until_synced``): rows/s, and the ratio to the ceiling, and the batches' commit times
  (p99 and max: a commit that checkpoints waits for it); the shutdown that follows
  (DuckDB's last checkpoint) is given apart as ``close_s``;
* reconcile: a full reconciliation pass over the indexed database, and a deleted session
  (with its parts) reflected by one pass;
* idle: the service following the database with no writes: CPU seconds per minute;
* live: a writer committing like opencode (a transaction per update, text parts rewritten as
  they stream) at ``--rate`` commits/s on top of the database: commit -> queryable latency
  (the row's ``row_index.updated_at``, written in its batch's transaction) p50/p95/p99, rows
  missing or stale at the end, the WAL's largest size with and without the service, and the
  longest read transaction the service held.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sqlite3
import statistics
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import anyio
import orjson

from benchmarks.sqlite_data import LEAN_CHARS, copy_db, database, in_child, lean_database
from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveDbWriter


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("project", "session", "message", "part", "todo")
        }


def ceiling(path: Path) -> dict[str, Any]:
    """Read every message and part and parse its data: the cost with no DuckDB at all."""
    started = time.perf_counter()
    rows = 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        for table in ("message", "part"):
            cur = con.execute(f"SELECT * FROM {table}")
            while chunk := cur.fetchmany(50_000):
                for row in chunk:
                    orjson.loads(row[-1])
                rows += len(chunk)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def _settings(opencode: Path, index: Path, **kw: Any) -> Settings:
    """The service's settings (INDEXER_* variables apply, e.g. INDEXER_MEMORY_LIMIT_MB)."""
    return Settings.from_env(opencode_db=opencode, db_path=index, http_enabled=False, **kw)


def backfill(opencode: Path, index: Path) -> dict[str, Any]:
    """A fresh index of the whole database (in this child process)."""
    index.unlink(missing_ok=True)
    index.with_name(index.name + ".wal").unlink(missing_ok=True)

    async def run() -> dict[str, Any]:
        started = time.perf_counter()
        cpu = time.process_time()
        async with IndexerService(
            _settings(opencode, index, watch=False), periodic_reconcile=False
        ) as svc:
            await svc.wait_until_synced()
            seconds = time.perf_counter() - started  # every row queryable
            cpu_s = time.process_time() - cpu
            rows = sum(sum(by.values()) for by in (await svc.file_counts()).values())
            commits = svc.stats()["workers"]["write_ms"]
            closing = time.perf_counter()
        return {
            "rows": rows,
            "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds),
            "cpu_us_per_row": round(cpu_s / rows * 1e6, 1),
            "close_s": round(time.perf_counter() - closing, 2),  # DuckDB's final checkpoint
            "commit_ms": dict(commits),
        }

    return anyio.run(run)


def reconcile(opencode: Path, index: Path) -> dict[str, Any]:
    """A full pass over an indexed database; then a deleted session reflected by one pass."""
    copy = opencode.with_name("reconcile.db")
    copy_db(opencode, copy)
    index = index.with_name("reconcile.duckdb")  # the copy is a source of its own
    for f in (index, index.with_name(index.name + ".wal")):
        f.unlink(missing_ok=True)

    async def run() -> dict[str, Any]:
        settings = _settings(copy, index, watch=False)
        async with IndexerService(settings, periodic_reconcile=False) as svc:
            await svc.wait_until_synced()  # the copy's rows, under its own source name
            source = svc._databases[0]
            passes = []
            for _ in range(3):
                passes.append((await source.scan(full=True)).duration_s)  # lists whatever
            with sqlite3.connect(copy) as con:
                con.execute("PRAGMA foreign_keys = ON")
                sid, n = con.execute(
                    "SELECT session_id, count(*) FROM part GROUP BY 1 ORDER BY abs(count(*) - 1000) LIMIT 1"
                ).fetchone()
                con.execute("DELETE FROM session WHERE id = ?", [sid])
            started = time.perf_counter()
            await source.scan()
            await svc.drain()
            (left,) = svc.db.cursor().execute(
                "SELECT count(*) FROM parts WHERE session_id = ?", [sid]
            ).fetchone() or (0,)
            return {
                "full_pass_s": {
                    "best": round(min(passes), 3),
                    "median": round(statistics.median(passes), 3),
                },
                "deleted_session_parts": n,
                "deletion_reflected_s": round(time.perf_counter() - started, 3),
                "parts_left": left,
            }

    try:
        return anyio.run(run)
    finally:
        for f in (copy, index, index.with_name(index.name + ".wal")):
            f.unlink(missing_ok=True)


def idle(opencode: Path, index: Path, seconds: float) -> dict[str, Any]:
    """The service following the database with no writes: CPU per minute."""

    async def run() -> dict[str, Any]:
        async with IndexerService(_settings(opencode, index)) as svc:
            await svc.wait_until_synced()
            cpu = time.process_time()
            await anyio.sleep(seconds)
            used = time.process_time() - cpu
            stats = svc.stats()["databases"][str(opencode)]
        return {
            "seconds": seconds,
            "cpu_s_per_min": round(used / seconds * 60, 3),
            "polls": stats["polls"],
            "connection_open_at_end": stats["connection_open"],
        }

    return anyio.run(run)


def _writer(path: str, rate: float, seconds: float, out: str) -> None:
    """Commit like opencode at ``rate`` commits/s; write each part's last commit time to ``out``."""
    commits: dict[str, float] = {}
    writer = LiveDbWriter(Path(path), seed=int(time.time()))
    due = time.monotonic()
    end = due + seconds
    session = writer.new_session()
    while time.monotonic() < end:
        for rel in writer.write_step(session):
            if rel.startswith("part/"):
                commits[rel.rsplit("/", 1)[1].removesuffix(".json")] = time.time()
        text = writer.last_text_part
        if text is not None:
            for _ in range(5):
                writer.stream_text(text, deltas=1)
                commits[text] = time.time()
                due += 1 / rate
                time.sleep(max(0.0, due - time.monotonic()))
        due += 1 / rate
        time.sleep(max(0.0, due - time.monotonic()))
    Path(out).write_bytes(orjson.dumps(commits))


def _wal_peak(path: Path, proc: Any) -> int:
    wal, peak = path.with_name(path.name + "-wal"), 0
    while proc.is_alive():
        try:
            peak = max(peak, wal.stat().st_size)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    return peak


def live(opencode: Path, index: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Latency from commit to queryable under opencode's write pattern; WAL growth."""
    copy = opencode.with_name("live.db")
    out = opencode.with_name("commits.json")
    ctx = multiprocessing.get_context("spawn")

    def alone() -> int:
        copy_db(opencode, copy)
        proc = ctx.Process(target=_writer, args=(str(copy), rate, seconds / 2, str(out)))
        proc.start()
        peak = _wal_peak(copy, proc)
        proc.join()
        return peak

    wal_alone = alone()
    copy_db(opencode, copy)
    index = index.with_name("live.duckdb")  # the copy is a source of its own: a fresh index
    for f in (index, index.with_name(index.name + ".wal")):
        f.unlink(missing_ok=True)

    async def run() -> dict[str, Any]:
        async with IndexerService(_settings(copy, index)) as svc:
            await svc.wait_until_synced()
            proc = ctx.Process(target=_writer, args=(str(copy), rate, seconds, str(out)))
            proc.start()
            peak = await anyio.to_thread.run_sync(_wal_peak, copy, proc)
            await anyio.to_thread.run_sync(proc.join)
            await svc.wait_until_synced()
            commits: dict[str, float] = orjson.loads(out.read_bytes())
            cur = svc.db.cursor()
            indexed = {
                i: t.replace(tzinfo=UTC).timestamp()  # updated_at holds naive UTC
                for i, t in cur.execute(
                    "SELECT id, updated_at FROM row_index WHERE kind = 'part' AND id IN (SELECT unnest(?))",
                    [list(commits)],
                ).fetchall()
            }
            with sqlite3.connect(copy) as con:
                truth = dict(
                    con.execute(
                        "SELECT id, data FROM part WHERE id IN (SELECT value FROM json_each(?))",
                        [orjson.dumps(list(commits)).decode()],
                    ).fetchall()
                )
            ours = dict(
                cur.execute(
                    "SELECT id, raw FROM parts WHERE id IN (SELECT unnest(?))", [list(commits)]
                ).fetchall()
            )
            stale = sum(
                1
                for i, d in truth.items()
                if i not in ours or orjson.loads(ours[i]).get("text") != orjson.loads(d).get("text")
            )
            stats = svc.stats()["databases"][str(copy)]
            slowest = svc.stats()["workers"]["batch_ms"].get("max")
            commit_ms = svc.stats()["workers"]["write_ms"]
        lat = sorted(max(0.0, indexed[i] - t) * 1000 for i, t in commits.items() if i in indexed)
        return {
            "rate": rate,
            "parts_written": len(commits),
            "p50_ms": round(_pct(lat, 50), 1),
            "p95_ms": round(_pct(lat, 95), 1),
            "p99_ms": round(_pct(lat, 99), 1),
            "missing": len(set(commits) - set(indexed)),
            "stale": stale,
            "wal_peak_mb_alone": round(wal_alone / 2**20, 2),
            "wal_peak_mb_with_service": round(peak / 2**20, 2),
            "longest_read_s": stats["longest_read_s"],
            "slowest_batch_ms": slowest,
            "commit_ms": dict(commit_ms),
        }

    try:
        return anyio.run(run)
    finally:
        for f in (copy, out, index, index.with_name(index.name + ".wal")):
            f.unlink(missing_ok=True)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=100.0, help="commits/s of the live writer")
    ap.add_argument("--seconds", type=float, default=20.0, help="live writing time")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=3, help="backfill runs (best and median)")
    ap.add_argument("--only", choices=["backfill", "reconcile", "idle", "live"], action="append")
    ap.add_argument(
        "--lean",
        action="store_true",
        help=f"documents cut to {LEAN_CHARS}-character strings (~0.4 KB, like real databases)",
    )
    args = ap.parse_args()
    opencode = lean_database(args.parts) if args.lean else database(args.parts)
    index = opencode.with_name("index.duckdb")
    results: dict[str, Any] = {"records": counts(opencode)}
    wanted = args.only or ["backfill", "reconcile", "idle", "live"]
    if "backfill" in wanted:
        runs = []
        for _ in range(args.runs):
            ceil = ceiling(opencode)
            run = in_child(backfill, opencode, index)
            run["ratio_to_ceiling"] = round(run["rows_per_s"] / ceil["rows_per_s"], 2)
            run["ceiling_rows_per_s"] = ceil["rows_per_s"]
            print(f"backfill run: {run}", flush=True)
            runs.append(run)
        rates = [r["rows_per_s"] for r in runs]
        results["backfill"] = {
            "rows_per_s": {"best": max(rates), "median": statistics.median(rates)},
            "ratio_to_ceiling": {
                "best": max(r["ratio_to_ceiling"] for r in runs),
                "median": statistics.median(r["ratio_to_ceiling"] for r in runs),
            },
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "commit_ms_max": max(r["commit_ms"].get("max", 0.0) for r in runs),
            "commit_ms_p99": max(r["commit_ms"].get("p99", 0.0) for r in runs),
        }
    elif not index.exists():
        in_child(backfill, opencode, index)
    if "reconcile" in wanted:
        results["reconcile"] = in_child(reconcile, opencode, index)
    if "idle" in wanted:
        results["idle"] = in_child(idle, opencode, index, args.idle_seconds)
    if "live" in wanted:
        results["live"] = in_child(live, opencode, index, args.rate, args.seconds)
    for name, value in results.items():
        print(f"{name}: {value}", flush=True)
    return results


if __name__ == "__main__":
    main()
