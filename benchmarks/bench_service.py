"""The running service against a writer process that emulates OpenCode.

    python -m benchmarks.bench_service [--rate 1000] [--seconds 10] [--history 100000]
                                       [--burst 20000] [--sustained 100000]
                                       [--backfill 100000] [--only NAME]

Five measurements, each on a fresh database (and tree, but for scale):

* latency: on top of a history of ``--history`` files already indexed (a user's database is
  not empty, and what a write costs may grow with it), a writer process creates sessions,
  messages and parts (with in-place streamed rewrites of text parts, as OpenCode does) at
  ``--rate`` files/s; for every file, the time from its last write to its
  ``file_index.indexed_at`` (written in the same transaction as its rows) gives the
  event-to-queryable latency: p50/p95/p99;
* burst: the writer writes ``--burst`` distinct files as fast as it can into new directories;
  indexed files/s = files / (last indexed - first written);
* sustained: the emulated agent above cannot write faster than ~2,600 files/s, so this writer
  renders a ``--sustained``-file tree in memory first, then writes it file by file (new
  directories, plain ``open``/``write``/``close``) as fast as it can: the service's sustained
  indexing rate, files / (last indexed - first written), and the CPU each side used;
* backfill: an existing tree of ``--backfill`` files indexed through the same service path;
* scale (only with ``--only scale``): the existing tree ``--tree`` (the 1M-file one by default)
  backfilled, its commit times and peak RSS, then the latency run above in the same process,
  with the latency of each 5 s of writing and the reconciliation passes that ran meanwhile
  (``INDEXER_MEMORY_LIMIT_MB`` sets the memory limit).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import shutil
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import anyio

from benchmarks.latency import latencies, latency_series, record_passes
from benchmarks.sqlite_data import peak_rss_mb, threads_cpu
from indexer_service import IndexerService, ServiceStats, Settings
from indexer_service.cli.logs import configure_logging
from indexer_service.demo.synthetic import LiveWriter, age_tree, generate_tree
from indexer_service.demo.synthetic import _write as write_file
from indexer_service.sources.json_tree.layout import classify
from indexer_service.store.database import Database


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


def _flat_out_writer(staging: str, root: str, out: str) -> None:
    """Child process: load a generated tree into memory, then write it under ``root`` as fast
    as possible; record when the first and last files were closed, and the CPU spent."""
    files: list[tuple[str, bytes]] = []
    for d, _, names in os.walk(staging):
        rel = os.path.relpath(d, staging)
        for n in sorted(names):
            with open(os.path.join(d, n), "rb") as f:
                files.append((os.path.join(rel, n), f.read()))
    cpu0, first = time.process_time(), time.time()
    for rel, data in files:
        write_file(os.path.join(root, rel), data)  # as the generator writes: mkdir on ENOENT
    last = time.time()
    with open(out, "w") as f:
        f.write(f"{first}\t{last}\t{time.process_time() - cpu0}\t{len(files)}\n")


def _spawn_writer(root: Path, rate: float, seconds: float, files: int, out: Path) -> Any:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(str(root), rate, seconds, files, str(out)))
    proc.start()
    return proc


def _read_writes(out: Path) -> dict[str, float]:
    """What a writer process recorded: each file's path and the epoch time of its last write."""
    writes = {}
    for line in out.read_text().splitlines():
        t, p = line.split("\t", 1)
        writes[p] = float(t)
    return writes


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
) -> tuple[dict[str, float], dict[str, float], ServiceStats]:
    root, db = _fresh(base, name)
    if history:
        generate_tree(root, files=history)
        # Make it look old, as a user's history is: the reconciler lists "hot" directories
        # (changed in the last 15 minutes) at every scan, so at 1M files a just-generated tree
        # turns each 30 s scan into a full listing that starves the writer (p95 0.6-5.7 s).
        age_tree(root, 86_400)
    out = base / name / "writes.tsv"
    settings = Settings(storage_path=root, db_path=db, http_port=0)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        # A user's history was written long ago: let the kernel write back the tree and the
        # database first, or a 1M-file history measures the disk's backlog, not the service.
        await anyio.to_thread.run_sync(os.sync)
        proc = _spawn_writer(root, rate, seconds, files, out)
        await anyio.to_thread.run_sync(proc.join)
        await svc.wait_until_synced()
        stats = svc.stats()
    writes = _read_writes(out)
    return writes, _indexed_at(db), stats


async def latency(base: Path, rate: float, seconds: float, history: int) -> dict[str, Any]:
    writes, indexed, _ = await _run_with_writer(base, "latency", rate, seconds, 0, history)
    span = max(writes.values()) - min(writes.values()) if len(writes) > 1 else 0.0
    return {
        "history": len(indexed) - len(writes),
        "rate_target": rate,
        "rate_written": round(len(writes) / span) if span else 0,  # the writer may fall behind
        **latencies(writes, indexed),
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


async def sustained(base: Path, files: int) -> dict[str, Any]:
    root, db = _fresh(base, "sustained")
    staging = base.parent / f"staging-{files}"  # generated once, kept for the next run
    if not (staging / ".complete").exists():
        shutil.rmtree(staging, ignore_errors=True)
        generate_tree(staging / "storage", files=files)
        (staging / ".complete").touch()
    staging /= "storage"
    out = base / "sustained" / "writes.tsv"
    settings = Settings(storage_path=root, db_path=db, http_port=0)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        cpu0, watcher0 = _cpu(), threads_cpu("notify-rs")
        proc = multiprocessing.get_context("spawn").Process(
            target=_flat_out_writer, args=(str(staging), str(root), str(out))
        )
        proc.start()
        await anyio.to_thread.run_sync(proc.join)
        await svc.wait_until_synced()
        service_cpu, watcher_cpu = _cpu() - cpu0, threads_cpu("notify-rs") - watcher0
        stats = svc.stats()
    first_s, last_s, writer_cpu_s, n_s = out.read_text().split("\t")
    first, last, writer_cpu, n = float(first_s), float(last_s), float(writer_cpu_s), int(n_s)
    indexed = _indexed_at(db)
    expected = _indexable(staging, root)
    return {
        "files": n,
        "writer_files_per_s": round(n / (last - first)),
        "indexed_files_per_s": round(n / (max(indexed.values()) - first)),
        "lag_after_last_write_ms": round((max(indexed.values()) - last) * 1000),
        "missing": len(expected - set(indexed)),
        "reads": stats["workers"]["files_indexed"],
        "batches": stats["workers"]["batches"],
        "service_cpu_us_per_file": round(service_cpu / n * 1e6),
        "of_which_inotify_thread_us": round(watcher_cpu / n * 1e6),
        "writer_cpu_us_per_file": round(writer_cpu / n * 1e6),
    }


def _indexable(staging: Path, root: Path) -> set[str]:
    """Where the indexable files of ``staging`` were written under ``root``."""
    paths = {
        os.path.join(root, os.path.relpath(os.path.join(d, n), staging))
        for d, _, names in os.walk(staging)
        for n in names
    }
    return {p for p in paths if classify(str(root), p) is not None}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def backfill(base: Path, files: int) -> dict[str, Any]:
    root, db = _fresh(base, "backfill")
    generate_tree(root, files=files)
    n = sum(len(f) for _, _, f in os.walk(root))
    start = time.perf_counter()
    async with IndexerService(Settings(storage_path=root, db_path=db, http_port=0)) as svc:
        await svc.wait_until_synced()
        done = svc.stats()["workers"]["files_indexed"]
    elapsed = time.perf_counter() - start
    return {"files": n, "seconds": round(elapsed, 2), "files_per_s": round(done / elapsed)}


def _remove_written(out: Path) -> None:
    """Remove the files a writer listed in ``out`` (the scale run's tree stays as it was)."""
    if out.exists():
        for line in out.read_text().splitlines():
            Path(line.split("\t", 1)[1]).unlink(missing_ok=True)


async def scale(base: Path, tree: Path, rate: float, seconds: float) -> dict[str, Any]:
    """An existing tree (e.g. the 1M-file one `bench_loader` caches) backfilled into a new
    index, then, in the same process, new sessions written into it at ``rate`` files/s: the
    backfill's rate and commit times, the live latency and commit times, and the peak RSS.
    The files the writer made are removed at the end (the tree stays as it was)."""
    db = base / "scale" / "index.duckdb"
    shutil.rmtree(db.parent, ignore_errors=True)
    db.parent.mkdir(parents=True)
    out = base / "scale" / "writes.tsv"
    settings = Settings(storage_path=tree, db_path=db, http_port=0)
    if limit := os.environ.get("INDEXER_MEMORY_LIMIT_MB"):
        settings = dataclasses.replace(settings, memory_limit_mb=int(limit))
    start = time.perf_counter()
    try:
        async with IndexerService(settings) as svc:
            await svc.wait_until_synced()
            backfill_s = time.perf_counter() - start
            stats = svc.stats()
            backfill = {
                "files": stats["workers"]["files_indexed"],
                "seconds": round(backfill_s, 1),
                "files_per_s": round(stats["workers"]["files_indexed"] / backfill_s),
                "commit_ms": dict(stats["workers"]["write_ms"]),
                "peak_rss_mb": round(peak_rss_mb()),
            }
            await anyio.to_thread.run_sync(os.sync)
            passes: list[tuple[float, float, bool]] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(record_passes, svc, passes)
                proc = _spawn_writer(tree, rate, seconds, 0, out)
                await anyio.to_thread.run_sync(proc.join)
                tg.cancel_scope.cancel()
            await svc.wait_until_synced()
            live_commits = dict(svc.stats()["workers"]["write_ms"])
        writes = _read_writes(out)
        indexed = _indexed_at(db)
    finally:
        await anyio.to_thread.run_sync(_remove_written, out)
    began = min(writes.values(), default=0.0)
    return {
        "backfill": backfill,
        "live": {**latencies(writes, indexed), "commit_ms_since_start": live_commits},
        "live_by_5s": latency_series(writes, indexed, began, 5.0),
        "passes_while_writing": [
            {"at_s": round(end - s - began, 1), "s": s, "full": full} for end, s, full in passes
        ],
        "peak_rss_mb": round(peak_rss_mb()),
    }


_EXT4_RECENT_S = 361
_LAST_DELETE = ".last-delete"


def _new_run_dir(base: Path) -> Path:
    """A new directory for this invocation's trees, once ext4 no longer slows file creation.

    Without a journal (as on this VM), ext4 skips an inode freed less than 60 s ago (360 s
    while its inode table block is dirty, which new files make it) when it allocates one,
    reading its inode table block for each: after deleting a 100k-file tree, every create
    scanned them all, and a writer that made 15,000 files/s made 2,000. Runs delete their
    trees at the end (`_remove_run_dir`); the next one waits until that is old enough.
    """
    base.mkdir(parents=True, exist_ok=True)
    old = [d for d in base.glob("run-*") if d.is_dir()]  # left by an interrupted run
    if old:
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        (base / _LAST_DELETE).touch()
    marker = base / _LAST_DELETE
    if marker.exists():
        wait = marker.stat().st_mtime + _EXT4_RECENT_S - time.time()
        if wait > 0:
            print(f"waiting {wait:.0f} s after the last deletion of a tree (see _new_run_dir)")
            os.sync()
            time.sleep(wait)
    run = base / time.strftime("run-%Y%m%d-%H%M%S")
    run.mkdir()
    return run


def _remove_run_dir(run: Path) -> None:
    shutil.rmtree(run, ignore_errors=True)
    (run.parent / _LAST_DELETE).touch()


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1_000.0, help="files/s for the latency run")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--history", type=int, default=100_000, help="files indexed before the latency run"
    )
    ap.add_argument("--burst", type=int, default=20_000)
    ap.add_argument(
        "--sustained", type=int, default=100_000, help="files written flat out, pre-rendered"
    )
    ap.add_argument("--backfill", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/indexer-bench/service"))
    ap.add_argument(
        "--tree",
        type=Path,
        default=Path("/tmp/indexer-bench/tree-1000000/storage"),
        help="the existing tree the scale run backfills (bench_loader --files N caches one)",
    )
    ap.add_argument(
        "--only", choices=["latency", "burst", "sustained", "backfill", "scale"], action="append"
    )
    args = ap.parse_args()
    configure_logging("console", "warning")
    run_dir = args.dir = _new_run_dir(args.dir)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "latency": lambda: anyio.run(latency, args.dir, args.rate, args.seconds, args.history),
        "burst": lambda: anyio.run(burst, args.dir, args.burst),
        "sustained": lambda: anyio.run(sustained, args.dir, args.sustained),
        "backfill": lambda: anyio.run(backfill, args.dir, args.backfill),
        "scale": lambda: anyio.run(scale, args.dir, args.tree, args.rate, args.seconds),
    }
    try:
        chosen = args.only or [name for name in runs if name != "scale"]  # scale: asked for
        results: dict[str, Any] = {name: run() for name, run in runs.items() if name in chosen}
    finally:
        _remove_run_dir(run_dir)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for name, value in results.items():
        print(f"{name}: {value}")
    return results


if __name__ == "__main__":
    main()
