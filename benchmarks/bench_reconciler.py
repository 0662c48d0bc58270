"""Reconciler scan time and idle CPU on large storage trees.

    python -m benchmarks.bench_reconciler [--files N [N ...]] [--repeat 3] [--dir /tmp/...]

Trees of tiny ``{}`` files in the OpenCode shape (per session: 1 session, 1 todo, 1 session_diff,
10 messages, 4 parts per message in ``part/<messageID>/``) and a ``file_index`` in sync are
built once under ``--dir`` and reused. Their mtimes are set two hours back, so every directory
is cold, as on an idle machine. Per size it measures (warm cache, best and median of
``--repeat`` runs): the first scan of a new Reconciler (nothing remembered), a full pass with
the directory memory in sync and with 1% of ``file_index`` changed, an idle partial pass, and
the CPU the periodic loop costs per hour at idle: 60 scans on the loop's own schedule (defaults:
full pass every 10th scan within a 1% CPU share) with a clock moved 30 s per scan. Also RSS after
the first scan, the size of the directory memory and peak RSS. From 50,000 files a child
process lists half of the tree (`ShardedLister`); its CPU time counts in every CPU figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa

from indexer_service.demo.synthetic import age_tree
from indexer_service.sources.json_tree.reconciler import Reconciler
from indexer_service.store.database import Database

FILES_PER_SESSION = 53
INTERVAL = 30.0
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _ident(prefix: str, n: int) -> str:
    """A ``prefix_`` + 26-character id, like OpenCode's (12 hex + 14 base62)."""
    tail = "".join(_B62[(n * 7919 + i * 31) % 62] for i in range(14))
    return f"{prefix}_{n:012x}{tail}"


def _write(path: str, data: bytes = b"{}") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def build_tree(root: Path, files: int) -> int:
    """Write about ``files`` files; returns how many were written."""
    written = 0
    projects = [f"{i:040x}" for i in range(1, 21)]
    for top in ("project", "todo", "session_diff"):
        (root / top).mkdir(parents=True, exist_ok=True)
    for p in projects:
        _write(str(root / "project" / f"{p}.json"))
        (root / "session" / p).mkdir(parents=True, exist_ok=True)
    written += len(projects)
    for s in range(max(1, files // FILES_PER_SESSION)):
        ses = _ident("ses", s)
        _write(str(root / "session" / projects[s % len(projects)] / f"{ses}.json"))
        _write(str(root / "todo" / f"{ses}.json"), b"[]")
        _write(str(root / "session_diff" / f"{ses}.json"), b"[]")
        mdir = root / "message" / ses
        mdir.mkdir(parents=True)
        for m in range(10):
            msg = _ident("msg", s * 10 + m)
            _write(str(mdir / f"{msg}.json"))
            pdir = root / "part" / msg
            pdir.mkdir(parents=True)
            for k in range(4):
                _write(str(pdir / f"{_ident('prt', (s * 10 + m) * 4 + k)}.json"))
        written += FILES_PER_SESSION
    return written


def index_tree(db: Database, root: Path) -> int:
    """Fill file_index with the current version of every file (in sync)."""
    cols: dict[str, list[Any]] = {k: [] for k in ("file_path", "file_type", "mtime", "size", "ns")}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            rel = os.path.relpath(path, root)
            for key, value in zip(
                cols,
                (path, rel.split("/")[0], st.st_mtime, st.st_size, st.st_mtime_ns),
                strict=True,
            ):
                cols[key].append(value)
    cur = db.cursor()
    cur.register("_rows", pa.table(cols))
    cur.execute(
        "INSERT INTO file_index (file_path, file_type, mtime, size, mtime_ns, status, indexed_at)"
        " SELECT file_path, file_type, mtime, size, ns, 'indexed', now() FROM _rows"
    )
    cur.unregister("_rows")
    db.checkpoint()
    return len(cols["file_path"])


def prepare(base: Path, files: int) -> tuple[Path, Path, int]:
    """The tree and its database for ``files`` files, built once by a child process (so the
    build does not count in this process's peak RSS)."""
    work = base / f"reconciler-{files}"
    root, db_path, done = work / "storage", work / "index.duckdb", work / "complete.json"
    if not done.exists():
        cmd = [sys.executable, "-m", "benchmarks.bench_reconciler", "--build", str(files)]
        subprocess.run([*cmd, "--dir", str(base)], check=True)
    return root, db_path, int(json.loads(done.read_text())["files"])


def build(base: Path, files: int) -> None:
    work = base / f"reconciler-{files}"
    root, db_path, done = work / "storage", work / "index.duckdb", work / "complete.json"
    if work.exists():
        shutil.rmtree(work)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    written = build_tree(root, files)
    age_tree(root, 2 * 3600)
    with Database(db_path) as db:
        rows = index_tree(db, root)
    assert rows == written, (rows, written)
    done.write_text(json.dumps({"files": written}))
    print(f"built {written:,} files + file_index in {time.perf_counter() - t0:.0f} s: {work}")


def cpu() -> float:
    """CPU seconds of this process and of the listing child processes it started."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + sum(_child_cpu(pid) for pid in _CHILDREN)


_CHILDREN: set[int] = set()  # listing child processes of the reconcilers measured


def _child_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of the whole process, result)."""
    w, c = time.perf_counter(), cpu()
    result = await fn()
    return time.perf_counter() - w, cpu() - c, result


class Sink:
    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, paths: list[str]) -> None:
        self.n += len(paths)


CHANGE_SQL = (
    "UPDATE file_index SET mtime_ns = mtime_ns - 1 WHERE hash(file_path) % 200 = 0",
    "CREATE OR REPLACE TEMP TABLE _bench_removed AS "
    "SELECT * FROM file_index WHERE hash(file_path) % 200 = 1",
    "DELETE FROM file_index WHERE hash(file_path) % 200 = 1",
    "INSERT INTO file_index (file_path, file_type, mtime, size, mtime_ns, status) "
    "SELECT file_path || '.gone.json', file_type, mtime, size, mtime_ns, 'indexed' "
    "FROM file_index WHERE hash(file_path) % 1000 = 2",
)
REVERT_SQL = (
    "UPDATE file_index SET mtime_ns = mtime_ns + 1 WHERE hash(file_path) % 200 = 0",
    "DELETE FROM file_index WHERE file_path LIKE '%.gone.json'",
    "INSERT INTO file_index SELECT * FROM _bench_removed",
)


async def bench_size(base: Path, files: int, repeat: int, idle_scans: int) -> dict[str, Any]:
    root, db_path, n = prepare(base, files)
    out: dict[str, Any] = {"files": n}
    runs: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    with Database(db_path) as db:
        sink = Sink()

        clock = Clock()

        def new() -> Reconciler:
            return Reconciler(root, db, on_missing_files=sink, on_deleted_files=sink, clock=clock)

        rss_db = rss_mb()
        rec = new()
        await rec.scan_now()  # warms the dentry/inode cache and DuckDB; measures the memory
        await rec.scan_now()  # the first pass of a sharded lister: the child takes its half
        pa.default_memory_pool().release_unused()
        out["rss_mb"] = {"db_open": round(rss_db, 1), "after_first_scan": round(rss_mb(), 1)}
        if (pid := rec.get_stats()["listing_child_pid"]) is not None:
            out["rss_mb"]["listing_child"] = round(rss_mb(pid), 1)
        out["dir_memory_mb_here"] = round(_state_bytes(rec) / 1e6, 1)
        rec.close()
        for _ in range(repeat):
            rec = new()
            wall, cpu_s, found = await timed(rec.scan_now)
            assert len(found) == 0, len(found)
            add("first_scan_s", wall)
            add("first_scan_cpu_s", cpu_s)
            if (pid := rec.get_stats()["listing_child_pid"]) is not None:
                _CHILDREN.add(pid)
                await rec.scan_now(full=True)  # not timed: waits for the child to start (~1 s)
            wall, cpu_s, _ = await timed(partial(rec.scan_now, full=True))
            add("full_pass_s", wall)
            add("full_pass_cpu_s", cpu_s)
            wall, cpu_s, _ = await timed(partial(rec.scan_now, full=False))
            add("partial_pass_s", wall)
            add("partial_pass_cpu_s", cpu_s)
            cur = db.cursor()
            for sql in CHANGE_SQL:
                cur.execute(sql)
            try:
                sink.n = 0
                wall, cpu_s, found = await timed(partial(rec.scan_now, full=True))
                add("changed_1pct_full_s", wall)
                out["changed_1pct_found"] = dict(rec.get_stats()["last"])
            finally:
                for sql in REVERT_SQL:
                    cur.execute(sql)
            await rec.scan_now(full=True)  # back in sync
            add("full_pass_thread_cpu_s", rec.get_stats()["last_full_cpu_s"] or 0.0)
            # idle: the loop's own mix of partial and full passes (the clock moves 30 s a scan)
            before = rec.get_stats()["scans_full"]
            wall, cpu_s, _ = await timed(partial(_idle, rec, clock, idle_scans))
            add("idle_cpu_s_per_hour", cpu_s / idle_scans * 3600 / INTERVAL)
            add(
                "idle_full_passes_per_hour",
                (rec.get_stats()["scans_full"] - before) * 3600 / INTERVAL / idle_scans,
            )
            out["listing_processes"] = 1 if rec.get_stats()["listing_child_pid"] is None else 2
            out["rss_mb"]["after_all_scans"] = round(rss_mb(), 1)
            out["dirs_known"] = rec.get_stats()["dirs_known"]
            rec.close()
    for name, values in runs.items():
        out[name] = {"best": round(min(values), 3), "median": round(statistics.median(values), 3)}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


async def _idle(rec: Reconciler, clock: Clock, scans: int) -> None:
    for _ in range(scans):
        clock.now += INTERVAL
        found = await rec.scan_now()
        assert len(found) == 0


def _state_bytes(rec: Reconciler) -> int:
    """Bytes of the reconciler's directory memory in this process (keys, packed values, the
    dicts and sets); a listing child holds the other half of a large tree."""
    tops = rec._lister._local._tops.values()
    size = sum(sys.getsizeof(t.dirs) + sys.getsizeof(t.hot) for t in tops)
    return size + sum(sys.getsizeof(k) + sys.getsizeof(v) for t in tops for k, v in t.dirs.items())


class Clock:
    """Epoch time that the idle loop moves by one interval per scan."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle-scans", type=int, default=60)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/indexer-bench"))
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.dir, args.build)
        return
    print(f"cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    for files in args.files:
        result = anyio.run(bench_size, args.dir, files, args.repeat, args.idle_scans)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
