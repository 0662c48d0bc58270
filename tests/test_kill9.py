"""Crash recovery: kill -9 of a real service process at random moments, then convergence."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import orjson
from conftest import TreeFactory, assert_index_matches_tree, indexable_files

from indexer_service.demo.synthetic import LiveWriter
from indexer_service.store.database import Database


def _service(storage: Path, db: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "indexer_service",
            *command,
            "--storage",
            str(storage),
            "--db",
            str(db),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        # small batches: many commits, so the kills land between and inside them
        env={**os.environ, "INDEXER_MAX_FILES": "50", "INDEXER_MAX_BATCH_FILES": "100"},
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_batches(proc: subprocess.Popen[str], batches: int) -> int:
    """SIGKILL the service once it logged ``batches`` written batches, or once it caught up."""
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        if '"batch_indexed"' in line:
            seen += 1
        if seen >= batches or '"backfill_done"' in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    return seen


def test_kill_9_at_random_moments_converges(storage_tree: TreeFactory, tmp_path: Path) -> None:
    """After repeated kill -9 during backfill and live writes, a restart matches the tree exactly."""
    tree = storage_tree(sessions=8, seed=5)
    root, db = tree.root, tmp_path / "crash.duckdb"
    rng = random.Random(1234)
    writer = LiveWriter(root, seed=99)
    for round_ in range(4):
        proc = _service(root, db, "run")
        _kill_after_batches(proc, rng.randint(1, 20))
        # the agent keeps working while the service is down
        session = writer.new_session()
        for _ in range(3):
            writer.write_step(session)
        if round_ == 2:
            writer.delete_session(tree.session_ids[0])

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "indexer_service",
            "index",
            "--json",
            "--storage",
            str(root),
            "--db",
            str(db),
            "--log-level",
            "warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert sum(summary["files"]["part"].values()) == sum(
        1 for p in indexable_files(root) if "/part/" in p
    )
    assert_index_matches_tree(root, db)
    with Database(db, read_only=True) as database:
        cur = database.cursor()
        for table, ftype in (("parts", "part"), ("messages", "message"), ("sessions", "session")):
            rows = cur.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchall()
            on_disk = sum(1 for p in indexable_files(root) if f"/{ftype}/" in p)
            assert rows == [(on_disk, on_disk)], table
        # every row is the version on disk now
        for path, title in cur.execute("SELECT file_path, title FROM sessions").fetchall():
            assert orjson.loads(Path(path).read_bytes()).get("title") == title
