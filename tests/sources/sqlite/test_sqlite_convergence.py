"""The SQLite source converges exactly: after any sequence of opencode's writes (a property
test), and after kill -9 of a real service process during the backfill and live polls."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opencode_db_truth import assert_index_equals

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveDbWriter, TreeSpec, generate_db

ACTIONS = st.lists(
    st.sampled_from(["session", "step", "stream", "delete"]), min_size=1, max_size=12
)


@pytest.mark.asyncio_only  # 8 services; test_sqlite_source.py's live writes run on trio
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=ACTIONS, seed=st.integers(0, 2**16))
async def test_any_sequence_of_writes_converges(
    tmp_path_factory: pytest.TempPathFactory, actions: list[str], seed: int
) -> None:
    """Inserts, streamed rewrites and deletes, made while the service runs, in any order:
    the index ends equal to the database."""
    base = tmp_path_factory.mktemp("prop")
    opencode = base / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=2, seed=seed))
    rng = random.Random(seed)
    settings_ = Settings(opencode_db=opencode, db_path=base / "index.duckdb", http_enabled=False)
    async with IndexerService(settings_) as svc:
        await svc.wait_until_synced()
        with LiveDbWriter(opencode, seed=seed) as writer:
            sessions: list[str] = []
            streaming: tuple[str, str] | None = None  # (session, its latest text part)
            for action in actions:
                if action == "session" or not sessions:
                    sessions.append(writer.new_session())
                elif action == "step":
                    session = rng.choice(sessions)
                    writer.write_step(session)
                    if writer.last_text_part is not None:
                        streaming = (session, writer.last_text_part)
                elif action == "stream" and streaming is not None:
                    writer.stream_text(streaming[1], deltas=rng.randint(1, 4))
                elif action == "delete":
                    gone = sessions.pop(rng.randrange(len(sessions)))
                    writer.delete_session(gone)
                    if streaming is not None and streaming[0] == gone:
                        streaming = None
        await svc.wait_until_synced()
        assert_index_equals(opencode, svc.db.cursor())


def _service(opencode: Path, index: Path) -> subprocess.Popen[str]:
    # small batches and polls: many commits, so the kills land between and inside them
    env = {**os.environ, "INDEXER_MAX_FILES": "50", "INDEXER_DB_POLL_ROWS": "300"}
    return subprocess.Popen(
        [sys.executable, "-m", "indexer_service", "run", "--opencode-db", str(opencode),
         "--db", str(index), "--no-http", "--log-format", "json", "--log-level", "debug",
         "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


def _kill_after_batches(proc: subprocess.Popen[str], batches: int) -> None:
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        seen += '"batch_indexed"' in line
        if seen >= batches or '"backfill_done"' in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


def test_kill_9_during_backfill_and_polls_converges(tmp_path: Path) -> None:
    """kill -9 at random moments of the backfill (small poll chunks: many commits) and of live
    polls, opencode writing meanwhile; a one-shot sync then matches the database exactly."""
    opencode, index = tmp_path / "opencode.db", tmp_path / "index.duckdb"
    generate_db(opencode, TreeSpec(sessions=12, seed=8))
    rng = random.Random(77)
    with LiveDbWriter(opencode, seed=4) as writer:
        sessions = [writer.new_session()]
        for round_ in range(4):
            _kill_after_batches(_service(opencode, index), rng.randint(1, 6))
            for _ in range(3):
                writer.write_step(sessions[-1])
            if writer.last_text_part is not None:
                writer.stream_text(writer.last_text_part, deltas=3)
            if round_ == 2:
                with sqlite3.connect(opencode) as con:
                    old = con.execute("SELECT id FROM session ORDER BY rowid LIMIT 1").fetchone()[0]
                writer.delete_session(old)
            sessions.append(writer.new_session())
    done = subprocess.run(
        [sys.executable, "-m", "indexer_service", "index", "--opencode-db", str(opencode),
         "--db", str(index), "--log-level", "warning"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(index), read_only=True) as con:
        assert_index_equals(opencode, con)
        for table in ("parts", "messages", "sessions"):
            total, distinct = con.execute(
                f"SELECT count(*), count(DISTINCT id) FROM {table}"
            ).fetchone() or (0, 0)
            assert total == distinct, table
