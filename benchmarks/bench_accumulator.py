"""Accumulator throughput: paths through add_many -> batches -> a no-op consumer.

Run with ``python -m benchmarks.bench_accumulator``; prints the results as one JSON line.
Paths are generated chunk by chunk, so peak RSS reflects the accumulator, not the input.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Iterator

import anyio

from indexer_service.accumulator import AccumulatorConfig, FileBatchAccumulator

CHUNK = 1_000  # paths per add_many call, as a watcher or reconciler would hand them over


async def _push(
    chunks: Callable[[], Iterator[list[str]]], threaded: bool = False
) -> dict[str, float | int]:
    """Feed the chunks (from the loop, or from one thread) while one worker pulls batches."""
    delivered = batches = received = 0
    generating = 0.0  # time spent building paths, excluded from the rate

    async def consume(acc: FileBatchAccumulator) -> None:
        nonlocal delivered, batches
        async for batch in acc:
            delivered += len(batch.keys)
            batches += 1

    def timed(source: Iterator[list[str]]) -> Iterator[list[str]]:
        nonlocal generating, received
        while True:
            before = time.perf_counter()
            chunk = next(source, None)
            generating += time.perf_counter() - before
            if chunk is None:
                return
            received += len(chunk)
            yield chunk

    def feed_from_thread(acc: FileBatchAccumulator) -> None:
        for chunk in timed(chunks()):
            anyio.from_thread.run(acc.add_many, chunk)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        async with FileBatchAccumulator(AccumulatorConfig()) as acc:
            tg.start_soon(consume, acc)
            if threaded:
                await anyio.to_thread.run_sync(feed_from_thread, acc)
            else:
                for chunk in timed(chunks()):
                    await acc.add_many(chunk)
    elapsed = time.perf_counter() - started - generating
    stats = acc.get_stats()
    return {
        "paths_in": received,
        "files_delivered": delivered,
        "batches": batches,
        "seconds": round(elapsed, 3),
        "paths_per_s": round(received / elapsed),
        "largest_batch": stats["largest_batch"],
        "backpressure_wait_s": round(stats["backpressure_wait_s"], 3),
    }


def _distinct() -> Iterator[list[str]]:
    """1,000,000 distinct opencode-like part paths."""
    for start in range(0, 1_000_000, CHUNK):
        yield [
            f"/storage/part/msg_{i // 4:07d}/prt_{i:08d}.json" for i in range(start, start + CHUNK)
        ]


def _storm() -> Iterator[list[str]]:
    """The same 1,000 paths re-added 1,000 times before a worker gets to them."""
    hot = [f"/storage/part/msg_hot/prt_{i:04d}.json" for i in range(1_000)]
    for _ in range(1_000):
        yield hot


def main() -> dict[str, dict[str, float | int]]:
    """Run both cases, print them as one JSON line, and return the results."""
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    results: dict[str, dict[str, float | int]] = {"rss_before_mib": {"peak": round(rss_mib, 1)}}
    cases = (
        ("distinct_1m", _distinct, False),
        ("distinct_1m_from_thread", _distinct, True),
        ("storm_1k_x_1k", _storm, False),
    )
    for name, chunks, threaded in cases:
        results[name] = anyio.run(_push, chunks, threaded)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results[name]["peak_rss_mib"] = round(peak, 1)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
