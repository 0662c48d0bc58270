"""The databases `bench_sqlite` measures, generated once and cached under /tmp/indexer-bench, and
running a measurement in a child process of its own (its peak RSS is its own); and the readings
of this process (peak RSS, CPU of named threads) other benchmarks share."""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from indexer_service.cli.logs import configure_logging
from indexer_service.demo.synthetic import TreeSpec, generate_db
from indexer_service.demo.synthetic.opencode_schema import connect, create_schema

BASE = Path("/tmp/indexer-bench")
_PARTS_PER_FILE = 0.74  # parts among the records the generator writes (measured on 100k)


def database(parts: int) -> Path:
    """The cached database of about ``parts`` parts (generated in a child process)."""
    path = BASE / f"sqlite-{parts}" / "opencode.db"
    return _cached(
        path, f"generating ~{parts:,} parts into {path}", lambda p: in_child(_generate, p, parts)
    )


def _cached(path: Path, doing: str, make: Callable[[Path], object]) -> Path:
    """``path``, made by ``make`` into an empty folder unless a finished one is there."""
    done = path.with_suffix(".complete")
    if not done.exists():
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(parents=True)
        print(f"{doing} ...", flush=True)
        make(path)
        done.touch()
    return path


def _generate(path: Path, parts: int) -> None:
    generate_db(path, TreeSpec.for_file_count(int(parts / _PARTS_PER_FILE), seed=1), secrets=True)


LEAN_CHARS = 160
"""Strings in the lean database's documents are cut to this many characters."""


def lean_database(parts: int) -> Path:
    """The database of `database` with every string in a message's or part's ``data`` cut to
    `LEAN_CHARS` characters: the same records, ids and times with documents of ~0.4 KB, the
    size of the 1M-part database measured in the SQLite notes (the generator's tool outputs and
    file diffs make its documents ~8x larger). Made once from the full one and cached."""
    path = BASE / f"sqlite-{parts}-lean" / "opencode.db"
    return _cached(
        path,
        f"making the lean copy {path}",
        lambda p: in_child(_make_lean, database(parts), p),
    )


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value[:LEAN_CHARS]
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value]
    return value


def _lean(data: str) -> str:
    try:
        return orjson.dumps(_cut(orjson.loads(data))).decode()
    except orjson.JSONDecodeError:
        return data


def _make_lean(full: Path, path: Path) -> None:
    con = connect(path, foreign_keys=False)
    con.create_function("lean", 1, _lean, deterministic=True)
    con.execute("PRAGMA journal_mode=OFF")
    create_schema(con)
    con.execute("ATTACH ? AS full", [f"file:{full}?mode=ro"])
    tables = [r[0] for r in con.execute("SELECT name FROM main.sqlite_master WHERE type='table'")]
    for table in tables:
        cols = [r[1] for r in con.execute(f"PRAGMA main.table_info({table})")]
        select = ", ".join(
            "lean(data)" if c == "data" and table in ("part", "message") else c for c in cols
        )
        con.execute(f"INSERT INTO main.{table} SELECT {select} FROM full.{table} ORDER BY rowid")
        con.commit()
    con.execute("DETACH full")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a spawned process; return what it put in the queue."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, *args))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{fn.__name__} failed ({proc.exitcode})")
    return result


def _child(queue: Any, fn: Callable[..., Any], *args: Any) -> None:
    configure_logging("console", "warning")
    result = fn(*args)
    if isinstance(result, dict):
        result["peak_rss_mb"] = round(peak_rss_mb())
    queue.put(result)


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program. Not ``ru_maxrss``: Linux carries
    that across ``exec``, so a spawned child would report at least its parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def threads_cpu(name: str) -> float:
    """CPU seconds of this process's threads whose name starts with ``name`` (watchfiles' inotify
    thread is ``notify-rs inotify``)."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            comm, rest = f.read().split("(", 1)[1].rsplit(")", 1)
        if comm.startswith(name):
            utime, stime = rest.split()[11:13]
            total += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
    return total


def copy_db(src: Path, dst: Path) -> None:
    """A copy of a database file, with no WAL or shared memory of an earlier copy beside it."""
    for f in (dst, dst.with_name(dst.name + "-wal"), dst.with_name(dst.name + "-shm")):
        f.unlink(missing_ok=True)
    shutil.copyfile(src, dst)
