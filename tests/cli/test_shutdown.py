"""SIGTERM ends `run` in bounded time while database writes fail or hang (issue #24): writes
failing at shutdown are not retried, a second signal exits at once, and a write the OS never
returns from cannot hold the process past ``shutdown_timeout`` + `CLOSE_GRACE_S`."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TreeFactory, fill

from indexer_service.cli.serve import CLOSE_GRACE_S
from indexer_service.demo.synthetic import LiveWriter

F_SETPIPE_SZ = 1031  # Linux: the capacity of a pipe
LIVENESS_S = 30.0
"""A bound on the exit the old code exceeded (it never exited, or took ``shutdown_timeout``)."""


class Run:
    """`indexer-service run` in a child process, its JSON log lines read as they come; killed
    at the end of the ``with`` block if it still runs."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "indexer_service", "run", "--no-http", "--log-format",
             "json", *args],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def _read(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("{"):
                self.events.append(json.loads(line))
                yield self.events[-1]

    def wait_for(self, *names: str) -> None:
        """Read the log until each of ``names`` was logged (in any order)."""
        wanted = set(names) - {e["event"] for e in self.events}
        for event in self._read():
            wanted.discard(event["event"])
            if not wanted:
                return
        pytest.fail(f"run exited before logging {wanted}: {self.lines[-5:]}")

    def finish(self) -> int:
        """The exit code, once the process has ended (within `LIVENESS_S`); the rest of the
        log is read."""
        assert self.proc.stderr is not None
        try:
            code = self.proc.wait(timeout=LIVENESS_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()
            pytest.fail(f"run was still alive {LIVENESS_S:g} s after SIGTERM")
        for _ in self._read():
            pass
        self.proc.stderr.close()
        return code

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _hang_the_wal(db: Path) -> int:
    """Put a FIFO where DuckDB writes its WAL, with a 4 KiB buffer that is never read: the next
    commit blocks in write(2) for good, as on a hung disk, and no interrupt reaches it. Returns
    the read end (readable once DuckDB has started writing)."""
    wal = db.with_name(db.name + ".wal")
    assert not wal.exists()  # checkpointed after the backfill: DuckDB creates it anew
    os.mkfifo(wal)
    fd = os.open(wal, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(fd, F_SETPIPE_SZ, 4096)
    return fd


@pytest.mark.parametrize("second_signal", [False, True])
def test_sigterm_ends_run_while_a_write_hangs(
    storage_tree: TreeFactory, tmp_path: Path, second_signal: bool
) -> None:
    """A write stuck in the OS: after SIGTERM the drain gives up at ``shutdown_timeout``, and
    the process exits 143 once the close has had `CLOSE_GRACE_S` more (or at once on a second
    SIGTERM), with one line saying so. Before, it stayed alive through both signals."""
    tree = storage_tree(sessions=1)
    db = tmp_path / "index.duckdb"
    with Run("--storage", str(tree.root), "--db", str(db), "--shutdown-timeout", "1") as run:
        run.wait_for("backfill_done", "backfill_checkpointed")
        fd = _hang_the_wal(db)
        try:
            writer = LiveWriter(tree.root, seed=4)
            writer.write_step(writer.new_session())
            readable, _, _ = select.select([fd], [], [], LIVENESS_S)
            assert readable, "the service did not write its WAL"
            run.proc.send_signal(signal.SIGTERM)
            if second_signal:
                run.wait_for("shutdown_timeout")  # the drain gave up; the write still hangs
                run.proc.send_signal(signal.SIGTERM)
            assert run.finish() == 128 + signal.SIGTERM
        finally:
            os.close(fd)
    assert "shutdown_requested" in run.names()
    plain = [line for line in run.lines if not line.startswith("{")]
    if second_signal:
        assert plain == ["indexer-service: SIGTERM again, exiting now"]
    else:
        assert "shutdown_forced" in run.names()
        assert plain == [
            f"indexer-service: the shutdown did not end within {1 + CLOSE_GRACE_S:g} s "
            f"(shutdown_timeout + {CLOSE_GRACE_S:g} s to close): exiting now; every committed "
            "batch is kept and the next start finds the rest"
        ]


def test_sigterm_ends_run_at_once_while_writes_fail(
    small_disk: Path, storage_tree: TreeFactory
) -> None:
    """The disk is full and every write fails: SIGTERM gives the failing batches up instead
    of retrying them until ``shutdown_timeout`` (60 s here), and `run` exits 0 at once."""
    tree = storage_tree(sessions=1)
    db = small_disk / "index.duckdb"
    with Run("--storage", str(tree.root), "--db", str(db), "--shutdown-timeout", "60") as run:
        run.wait_for("backfill_done", "backfill_checkpointed")
        filler = fill(small_disk)
        writer = LiveWriter(tree.root, seed=6)
        session = writer.new_session()
        for _ in range(3):
            writer.write_step(session)
        run.wait_for("database_write_failed")
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish() == 0
    names = run.names()
    stop = names.index("shutdown_requested")
    assert "database_write_abandoned" in names[stop:]
    assert "shutdown_timeout" not in names and names[-1] == "service_stopped"
    filler.unlink()
