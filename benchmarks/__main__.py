"""``make bench``: every benchmark in turn with its default sizes (speed targets live here,
never in the tests). Run one alone with ``python -m benchmarks.bench_<name> --help``."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "bench_accumulator",
    "bench_loader",
    "bench_reconciler",
    "bench_service",
    "bench_ship",
    "bench_sqlite",
    "bench_watch",
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
