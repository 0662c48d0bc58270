"""The running service against a writer process that emulates OpenCode.

    python -m benchmarks.bench_service [--rate 1000] [--seconds 10] [--history 100000]
                                       [--burst 20000] [--backfill 100000] [--only NAME]

Three measurements, each on a fresh tree and database:

* latency: on top of a history of ``--history`` files already indexed (a user's database is
  not empty, and what a write costs may grow with it), a writer process creates sessions,
  messages and parts (with in-place streamed rewrites of text parts, as OpenCode does) at
  ``--rate`` files/s; for every file, the time from its last write to its
  ``file_index.indexed_at`` (written in the same transaction as its rows) gives the
  event-to-queryable latency: p50/p95/p99;
* burst: the writer writes ``--burst`` distinct files as fast as it can into new directories;
  indexed files/s = files / (last indexed - first written);
* backfill: an existing tree of ``--backfill`` files indexed through the same service path.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import anyio

from indexer_service import IndexerService, Settings
from indexer_service.db import Database
from indexer_service.logs import configure_logging
from indexer_service.synthetic import LiveWriter, age_tree, generate_tree


def _writer(root: str, rate: float, seconds: float, files: int, out: str) -> None:
    """Child process: write like an agent, record each file's last write time (epoch)."""
    written: dict[str, float] = {}

    def record(path: Path) -> None:
        written[str(path)] = time.time()

    w = LiveWriter(Path(root), seed=int(rate) or 1, on_write=record)
    start = time.perf_counter()
    session = w.new_session()
    count = 0
    while True:
        if files and count >= files:
            break
        elapsed = time.perf_counter() - start
        if not files and elapsed >= seconds:
            break
        if rate:
            ahead = count / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
        w.write_step(session)
        if w.last_text_part is not None and count % 3 == 0:
            w.stream_text(w.last_text_part, deltas=5)  # streamed rewrites, as OpenCode does
        if count // 2_000 != len(written) // 2_000:
            session = w.new_session()
        count = len(written)  # distinct files written so far
    with open(out, "w") as f:
        for p, t in written.items():
            f.write(f"{t}\t{p}\n")


def _spawn_writer(root: Path, rate: float, seconds: float, files: int, out: Path) -> Any:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(str(root), rate, seconds, files, str(out)))
    proc.start()
    return proc


def _indexed_at(db_path: Path) -> dict[str, float]:
    with Database(db_path, read_only=True) as db:
        rows = db.cursor().execute("SELECT file_path, indexed_at FROM file_index").fetchall()
    return {p: ts.replace(tzinfo=UTC).timestamp() for p, ts in rows if ts is not None}


def _fresh(base: Path, name: str) -> tuple[Path, Path]:
    d = base / name
    shutil.rmtree(d, ignore_errors=True)
    (d / "storage").mkdir(parents=True)
    return d / "storage", d / "index.duckdb"


async def _run_with_writer(
    base: Path, name: str, rate: float, seconds: float, files: int, history: int = 0
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    root, db = _fresh(base, name)
    if history:
        generate_tree(root, files=history)
        # Make it look old, as a user's history is: the reconciler lists "hot" directories
        # (changed in the last 15 minutes) at every scan, so at 1M files a just-generated tree
        # turns each 30 s scan into a full listing that starves the writer (p95 0.6-5.7 s).
        age_tree(root, 86_400)
    out = base / name / "writes.tsv"
    settings = Settings(storage_path=root, db_path=db, log_level="warning", http_port=0)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        # A user's history was written long ago: let the kernel write back the tree and the
        # database first, or a 1M-file history measures the disk's backlog, not the service.
        await anyio.to_thread.run_sync(os.sync)
        proc = _spawn_writer(root, rate, seconds, files, out)
        await anyio.to_thread.run_sync(proc.join)
        await svc.wait_until_synced()
        stats = svc.stats()
    writes = {}
    for line in out.read_text().splitlines():
        t, p = line.split("\t", 1)
        writes[p] = float(t)
    return writes, _indexed_at(db), stats


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0


async def latency(base: Path, rate: float, seconds: float, history: int) -> dict[str, Any]:
    writes, indexed, _ = await _run_with_writer(base, "latency", rate, seconds, 0, history)
    lat = [max(0.0, indexed[p] - t) * 1000 for p, t in writes.items() if p in indexed]
    span = max(writes.values()) - min(writes.values()) if len(writes) > 1 else 0.0
    return {
        "history": len(indexed) - len(writes),
        "rate_target": rate,
        "rate_written": round(len(writes) / span) if span else 0,  # the writer may fall behind
        "files": len(writes),
        "p50_ms": round(_pct(lat, 50), 1),
        "p95_ms": round(_pct(lat, 95), 1),
        "p99_ms": round(_pct(lat, 99), 1),
        "max_ms": round(max(lat), 1),
        "missing": len(set(writes) - set(indexed)),
    }


async def burst(base: Path, files: int) -> dict[str, Any]:
    writes, indexed, stats = await _run_with_writer(base, "burst", 0, 0, files)
    first, last_write = min(writes.values()), max(writes.values())
    last_indexed = max(indexed[p] for p in writes if p in indexed)
    return {
        "files": len(writes),
        "write_s": round(last_write - first, 2),
        "writer_files_per_s": round(len(writes) / (last_write - first)),
        "indexed_files_per_s": round(len(writes) / (last_indexed - first)),
        "lag_after_last_write_ms": round((last_indexed - last_write) * 1000),
        "reads": stats["workers"]["files_indexed"],
        "missing": len(set(writes) - set(indexed)),
    }


async def backfill(base: Path, files: int) -> dict[str, Any]:
    root, db = _fresh(base, "backfill")
    generate_tree(root, files=files)
    n = sum(len(f) for _, _, f in os.walk(root))
    start = time.perf_counter()
    async with IndexerService(
        Settings(storage_path=root, db_path=db, log_level="warning", http_port=0)
    ) as svc:
        await svc.wait_until_synced()
        done = svc.stats()["workers"]["files_indexed"]
    elapsed = time.perf_counter() - start
    return {"files": n, "seconds": round(elapsed, 2), "files_per_s": round(done / elapsed)}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1_000.0, help="files/s for the latency run")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--history", type=int, default=100_000, help="files indexed before the latency run"
    )
    ap.add_argument("--burst", type=int, default=20_000)
    ap.add_argument("--backfill", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/indexer-bench/service"))
    ap.add_argument("--only", choices=["latency", "burst", "backfill"], action="append")
    args = ap.parse_args()
    configure_logging("console", "warning")
    runs = {
        "latency": lambda: anyio.run(latency, args.dir, args.rate, args.seconds, args.history),
        "burst": lambda: anyio.run(burst, args.dir, args.burst),
        "backfill": lambda: anyio.run(backfill, args.dir, args.backfill),
    }
    results: dict[str, Any] = {
        name: run() for name, run in runs.items() if name in (args.only or runs)
    }
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for name, value in results.items():
        print(f"{name}: {value}")
    return results


if __name__ == "__main__":
    main()
