"""Bulk-load throughput of the Loader through the WorkerPool, against a read+orjson ceiling.

    python -m benchmarks.bench_loader [--files 100000 [1000000]] [--batch 5000] [--workers N]
                                      [--runs 3]

Generates a synthetic storage tree of each size once (cached under /tmp), then per run and
size: the ceiling (plain ``open().read()`` + ``orjson.loads`` of every file, one thread), then a
load of the whole tree into a fresh on-disk DuckDB file through `WorkerPool` with batches as
the accumulator coalesces them in bulk mode, then the whole ``indexer-service index`` command
on the same tree into another fresh file, timed from start to exit in a child process, as a
user runs it. Prints files/s, the loader/ceiling and command/loader ratios, phase times and
peak RSS (the command's from the kernel's high-water mark, ``VmHWM``). With several sizes
(``--files 100000 1000000``) each run does every size in turn, and the larger's rates are also
given as a share of the smaller's in the same run.
"""

from __future__ import annotations

import argparse
import compileall
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson

import indexer_service
from indexer_service.cli.logs import configure_logging
from indexer_service.demo.synthetic import generate_tree
from indexer_service.model import Batch, BatchResult
from indexer_service.pool import WorkerPool
from indexer_service.settings import default_workers
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.store.database import Database


def _generate(root: Path, files: int) -> None:
    generate_tree(root, files=files)


def tree(files: int) -> Path:
    """The cached tree of about ``files`` files (generated in a child process, not counted
    in this process's peak RSS)."""
    base = Path(tempfile.gettempdir()) / "indexer-bench" / f"tree-{files}"
    root, done = base / "storage", base / ".complete"
    if not done.exists():
        print(f"generating {files:,} files under {root} ...", flush=True)
        proc = multiprocessing.get_context("spawn").Process(target=_generate, args=(root, files))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            sys.exit(f"tree generation failed ({proc.exitcode})")
        done.touch()
    return root


def list_files(root: Path) -> list[str]:
    out: list[str] = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names]
    return out


def _rss_mb() -> float:
    """Current resident set size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ceiling(paths: Sequence[str]) -> float:
    """Seconds to read and parse every file with plain Python (what any loader must do)."""
    start = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return time.perf_counter() - start


_INDEX_COMMAND = """
import atexit, sys
from indexer_service.cli import main
def hwm():
    with open("/proc/self/status") as f:
        print(*(line for line in f if line.startswith("VmHWM:")), file=sys.stderr, end="")
atexit.register(hwm)
sys.exit(main(sys.argv[1:]))
"""


def index_command(root: Path, db_path: Path) -> tuple[float, float]:
    """``indexer-service index`` of ``root`` into a new ``db_path``, in a child process: (seconds
    from its start to its exit, its peak RSS in MB)."""
    for f in (db_path, db_path.with_name(db_path.name + ".wal")):
        f.unlink(missing_ok=True)
    # as installed: pip compiles a wheel's modules, an editable install (and a process run
    # with PYTHONDONTWRITEBYTECODE) compiles them at every start, 0.15 s of the command's time
    compileall.compile_dir(Path(indexer_service.__file__).parent, quiet=1)
    argv = ["index", "--storage", str(root), "--db", str(db_path), "--log-level", "warning"]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _INDEX_COMMAND, *argv], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    return seconds, int(done.stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024


async def _load(pool: WorkerPool, paths: Sequence[str], batch: int) -> list[str]:
    requeued: list[str] = []

    async def batches() -> AsyncIterator[Batch]:
        for i in range(0, len(paths), batch):
            yield Batch(tuple(paths[i : i + batch]), "size", 0.0)
        # The pool starts a batch's follow-up (the files past its 32 MB of records) only while
        # its input goes on, as a service's does until shutdown: end it once all is written.
        while pool.get_stats()["busy"]:
            await pool.work_ended()

    async def requeue(more: list[str]) -> None:
        requeued.extend(more)

    await pool.run(batches(), requeue)
    return requeued


def load(
    root: Path, paths: Sequence[str], db_path: Path, args: argparse.Namespace
) -> dict[str, float]:
    for f in (db_path, db_path.with_name(db_path.name + ".wal")):
        f.unlink(missing_ok=True)
    results: list[BatchResult] = []
    with Database(db_path) as db:
        if args.checkpoint_threshold:
            db.cursor().execute(f"SET checkpoint_threshold = '{args.checkpoint_threshold}'")
        loader = Loader(db, FileTracker(db), root)
        rss: list[float] = []

        def done(result: BatchResult, _batch: Batch) -> None:
            results.append(result)
            rss.append(_rss_mb())

        pool = WorkerPool(loader, db, workers=args.workers, on_batch_done=done)
        cpu0 = _cpu()
        start = time.perf_counter()
        requeued = anyio.run(_load, pool, paths, args.batch)
        seconds = time.perf_counter() - start
        cpu = _cpu() - cpu0
        loader.close()
        start = time.perf_counter()
        db.checkpoint()  # fold the WAL into the file: work a larger threshold defers
        checkpoint = time.perf_counter() - start
        indexed = sum(r.indexed for r in results)
        stats = pool.get_stats()
        duck_mb = db.cursor().execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()")
        duck_mb = duck_mb.fetchall()[0][0] / 1e6
    return {
        "seconds": seconds,
        "files_per_s": len(paths) / seconds,
        "cpu_us": cpu / len(paths) * 1e6,
        "checkpoint_s": checkpoint,
        "indexed": indexed,
        "errors": sum(r.errors for r in results),
        "skipped": sum(r.skipped for r in results),
        "requeued": len(requeued),
        "read_s": stats["read_seconds"],
        "parse_s": stats["parse_seconds"],
        "write_s": stats["write_seconds"],
        "db_mb": db_path.stat().st_size / 1e6,
        "rss_first": rss[0],
        "rss_max": max(rss),
        "duckdb_mb": duck_mb,
    }


@dataclass
class _Size:
    """One tree's figures over the runs."""

    root: Path
    paths: list[str]
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    command_ratios: list[float] = field(default_factory=list)
    command_rss: list[float] = field(default_factory=list)


def _best_median(values: list[float], fmt: str) -> str:
    return f"best {max(values):{fmt}}, median {statistics.median(values):{fmt}}"


def _run(size: _Size, run: int, db_path: Path, args: argparse.Namespace) -> None:
    paths = size.paths
    ceil = len(paths) / ceiling(paths)
    r = load(size.root, paths, db_path, args)
    size.rates.append(r["files_per_s"])
    size.ratios.append(r["files_per_s"] / ceil)
    seconds, command_rss = index_command(size.root, db_path.with_name("bench_index.duckdb"))
    size.commands.append(len(paths) / seconds)
    size.command_ratios.append(size.commands[-1] / size.rates[-1])
    size.command_rss.append(command_rss)
    print(
        f"{len(paths):,} files, run {run}: loader {r['files_per_s']:,.0f} files/s "
        f"({r['seconds']:.2f} s), ceiling {ceil:,.0f} files/s, ratio {size.ratios[-1]:.2f} | "
        f"indexed {r['indexed']:,} errors {r['errors']} skipped {r['skipped']} requeued "
        f"{r['requeued']} | thread time read {r['read_s']:.1f}s parse {r['parse_s']:.1f}s "
        f"write {r['write_s']:.1f}s | CPU {r['cpu_us']:.0f} us/file | "
        f"then checkpoint {r['checkpoint_s']:.2f}s, db {r['db_mb']:,.0f} MB | RSS after "
        f"batch 1 {r['rss_first']:,.0f} MB, max {r['rss_max']:,.0f} MB "
        f"(DuckDB buffers {r['duckdb_mb']:,.0f} MB) | `index` command "
        f"{size.commands[-1]:,.0f} files/s ({seconds:.2f} s), / loader "
        f"{size.command_ratios[-1]:.2f}, peak RSS {command_rss:,.0f} MB",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--files",
        type=int,
        nargs="+",
        default=[100_000],
        help="tree sizes, each run in turn (e.g. 100000 1000000: both sizes in the same run, "
        "and the larger's rates as a share of the smaller's)",
    )
    ap.add_argument(
        "--batch", type=int, default=5_000, help="files per batch (the service's max_batch_files)"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="batches in flight (default: CPU count, at least 4)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--checkpoint-threshold", default=None, help="DuckDB checkpoint_threshold, e.g. 1GB"
    )
    ap.add_argument("--db", type=Path, default=None, help="database file (default: in /tmp)")
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval")
    args = ap.parse_args(argv)
    configure_logging(level="info")
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    sizes = []
    for files in sorted(set(args.files)):
        root = tree(files)
        sizes.append(_Size(root, list_files(root)))
    db_path = args.db or Path(tempfile.gettempdir()) / "indexer-bench" / "bench_loader.duckdb"
    for size in sizes:
        ceiling(size.paths)  # warm the page cache: every run below reads warm files
        print(
            f"{len(size.paths):,} files, "
            f"{sum(os.path.getsize(p) for p in size.paths) / 1e6:,.0f} MB; "
            f"batch {args.batch}, workers {args.workers or default_workers()}, "
            f"checkpoint_threshold {args.checkpoint_threshold or 'default'}; "
            f"RSS before loading {_rss_mb():,.0f} MB"
        )
    for run in range(1, args.runs + 1):
        for size in sizes:
            _run(size, run, db_path, args)
    for size in sizes:
        print(
            f"{len(size.paths):,} files: loader files/s {_best_median(size.rates, ',.0f')}; "
            f"ratio {_best_median(size.ratios, '.2f')}\n"
            f"  `index` command files/s {_best_median(size.commands, ',.0f')}; / loader "
            f"{_best_median(size.command_ratios, '.2f')}; peak RSS "
            f"{min(size.command_rss):,.0f}-{max(size.command_rss):,.0f} MB"
        )
    small, large = sizes[0], sizes[-1]
    if large is not small:
        print(
            f"{len(large.paths):,} against {len(small.paths):,} files, files/s as a share: "
            f"loader {_best_median(_shares(large.rates, small.rates), '.2f')}; "
            f"`index` command {_best_median(_shares(large.commands, small.commands), '.2f')}"
        )
    print(
        f"this process's peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
    )


def _shares(large: list[float], small: list[float]) -> list[float]:
    """Each run's rate at the larger size over the same run's at the smaller."""
    return [a / b for a, b in zip(large, small, strict=True)]


if __name__ == "__main__":
    main()
