"""Watcher start and stop: from asking for a watch to its being armed, and from cancelling it to
its task's end, for a legacy tree's watcher and for a database folder's.

Run with ``python -m benchmarks.bench_watch``; prints one JSON line per watcher and tree size with
the median and max of ``--repeat`` starts and stops, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from indexer_service.demo.synthetic import TreeSpec, generate_tree
from indexer_service.sources.json_tree.watcher import StorageWatcher
from indexer_service.watching import Changes, follow


async def _no_emit(keys: list[str]) -> None:
    del keys


async def _keep_going(changes: Changes) -> bool:
    del changes
    return True


async def _tree_watcher(root: Path) -> tuple[float, float]:
    """One start and stop of the legacy tree's watcher (ms)."""
    watcher = StorageWatcher(root, _no_emit)
    async with anyio.create_task_group() as tg:
        began = time.perf_counter()
        await tg.start(watcher.run)
        armed = time.perf_counter()
        tg.cancel_scope.cancel()
    ended = time.perf_counter()
    return (armed - began) * 1000, (ended - armed) * 1000


async def _folder_watcher(folder: Path) -> tuple[float, float]:
    """One start and stop of a non-recursive folder watch, as a database source arms it (ms)."""
    async with anyio.create_task_group() as tg:
        is_armed = anyio.Event()

        async def watch() -> None:
            await follow(
                folder,
                _keep_going,
                on_armed=is_armed.set,
                recursive=False,
                debounce=50,
                step=10,
                rust_timeout=1000,
                yield_on_timeout=True,
            )

        began = time.perf_counter()
        tg.start_soon(watch)
        await is_armed.wait()
        armed = time.perf_counter()
        tg.cancel_scope.cancel()
    ended = time.perf_counter()
    return (armed - began) * 1000, (ended - armed) * 1000


def _summary(name: str, size: str, samples: list[tuple[float, float]]) -> dict[str, object]:
    starts, stops = [s for s, _ in samples], [s for _, s in samples]
    return {
        "watcher": name,
        "tree": size,
        "runs": len(samples),
        "start_ms_median": round(statistics.median(starts), 1),
        "start_ms_max": round(max(starts), 1),
        "stop_ms_median": round(statistics.median(stops), 1),
        "stop_ms_max": round(max(stops), 1),
    }


async def _main(repeat: int, sessions: tuple[int, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        folder = Path(tmp) / "opencode"
        folder.mkdir()
        samples = [await _folder_watcher(folder) for _ in range(repeat)]
        print(json.dumps(_summary("database folder", "1 file", samples)), flush=True)
        for n in sessions:
            summary = generate_tree(Path(tmp) / f"storage-{n}", TreeSpec(sessions=n))
            dirs = sum(1 for p in summary.root.rglob("*") if p.is_dir())
            size = f"{summary.files:,} files, {dirs:,} dirs"
            samples = [await _tree_watcher(summary.root) for _ in range(repeat)]
            print(json.dumps(_summary("legacy tree", size, samples)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20, help="starts and stops per watcher")
    parser.add_argument(
        "--sessions",
        type=int,
        nargs="+",
        default=[1, 100],
        help="legacy trees to watch, in sessions (~265 files each)",
    )
    args = parser.parse_args()
    anyio.run(_main, args.repeat, tuple(args.sessions))


if __name__ == "__main__":
    main()
