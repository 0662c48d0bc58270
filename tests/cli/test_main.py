"""The command line: version, help, exit codes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TreeFactory, assert_index_matches_tree, held_by_another_process

from indexer_service import Settings, __version__
from indexer_service.cli.main import _settings, build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_module_entry_point_prints_help() -> None:
    """`python -m indexer_service --help` explains the command and its subcommands."""
    out = subprocess.run(
        [sys.executable, "-m", "indexer_service", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: indexer-service" in out
    assert "OpenCode" in out


def _cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[no-any-return]
        [sys.executable, "-m", "indexer_service", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[call-overload]
    )


def test_index_prints_a_summary(storage_tree: TreeFactory, tmp_path: Path) -> None:
    """`index` syncs the database with the tree and prints counts by type and status."""
    tree = storage_tree(sessions=1)
    db = tmp_path / "i.duckdb"
    done = _cli("index", "--storage", str(tree.root), "--db", str(db), "--log-level", "warning")
    assert done.returncode == 0, done.stderr
    assert "part" in done.stdout and "indexed" in done.stdout
    assert f"processed {tree.files - tree.counts['other']:,} files" in done.stdout
    assert_index_matches_tree(tree.root, db)


def test_missing_storage_is_a_one_line_error(tmp_path: Path) -> None:
    """A storage directory that does not exist fails with exit 1 and one line naming it."""
    done = _cli("index", "--storage", str(tmp_path / "nope"), "--db", str(tmp_path / "x.duckdb"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "does not exist" in lines[0]


@pytest.mark.parametrize("command", ["index", "run"])
def test_a_file_given_as_storage_is_not_a_folder(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A regular file named as the storage tree is reported as what it is (not as missing):
    exit 1, one line naming it, and no database created."""
    file = tmp_path / "opencode.db"
    file.write_bytes(b"not a folder")
    db = tmp_path / "x.duckdb"
    assert main([command, "--storage", str(file), "--db", str(db)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"indexer-service: error: storage path {file} is not a folder; pass the legacy storage "
        "folder as --storage DIR (e.g. ~/.local/share/opencode/storage), or --opencode-db FILE "
        "for a database"
    ]
    assert not db.exists()


def test_locked_database_names_the_holder(storage_tree: TreeFactory, tmp_path: Path) -> None:
    """`run` against a database held by another process exits 1 naming that process's PID."""
    tree = storage_tree(sessions=1)
    db = tmp_path / "held.duckdb"
    with held_by_another_process(db) as pid:
        done = _cli("run", "--storage", str(tree.root), "--db", str(db))
    assert done.returncode == 1
    assert f"locked by process {pid}" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_stops_cleanly_on_sigterm(storage_tree: TreeFactory, tmp_path: Path) -> None:
    """`run` backfills, then exits 0 on SIGTERM with the database closed and complete."""
    tree = storage_tree(sessions=1)
    db = tmp_path / "r.duckdb"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "indexer_service",
            "run",
            "--storage",
            str(tree.root),
            "--db",
            str(db),
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"backfill_done"' in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0
    assert '"service_stopped"' in rest
    assert_index_matches_tree(tree.root, db)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_index_stops_cleanly_on_a_signal(
    storage_tree: TreeFactory, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGINT or SIGTERM during `index` stops it through the service's bounded shutdown: the
    signal is logged, the database checkpointed and closed (no WAL, no API files left), the
    exit code is 128 + the signal and one line says so; the next `index` completes the sync."""
    tree = storage_tree(sessions=4)
    db = tmp_path / "i.duckdb"
    # batches of 10 files: about 90 of them, so the first one written is far from the end
    env = {**os.environ, "INDEXER_MAX_FILES": "10", "INDEXER_MAX_BATCH_FILES": "10"}
    argv = ["index", "--storage", str(tree.root), "--db", str(db)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer_service", *argv, "--log-format", "json",
         "--log-level", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"batch_indexed"' in line:
            break
    proc.send_signal(signum)
    # read on through the same reader: `communicate` reads the pipe itself, past what the loop
    # above had buffered, and a line cut there showed up as an empty one
    assert proc.stdout is not None
    err, out = proc.stderr.read(), proc.stdout.read()
    proc.stderr.close()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 128 + signum
    lines = err.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"event": "shutdown_requested", "signal": signum.name}.items() <= next(
        e for e in events if e["event"] == "shutdown_requested"
    ).items()
    assert events[-1]["event"] == "service_stopped"
    assert [line for line in lines if not line.startswith("{")] == [lines[-1]]
    assert lines[-1] == (
        f"indexer-service: interrupted by {signum.name} before the sync finished; what was "
        "written is kept and the next `index` resumes from there"
    )
    assert out == ""  # no summary of a sync that did not finish
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(db.name)) == [db.name]
    done = _cli(*argv, "--log-level", "warning")
    assert done.returncode == 0, done.stderr
    assert_index_matches_tree(tree.root, db)


def test_index_gives_up_on_failing_writes_by_default_run_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`index` stops retrying failed writes after 60 s unless told otherwise (its flag, or
    INDEXER_WRITE_FAILURE_TIMEOUT); `run` and a library host retry until they are stopped."""
    monkeypatch.delenv("INDEXER_WRITE_FAILURE_TIMEOUT", raising=False)
    parse = build_parser().parse_args
    assert _settings(parse(["index"])).write_failure_timeout == 60
    assert _settings(parse(["index", "--write-failure-timeout", "5"])).write_failure_timeout == 5
    assert _settings(parse(["run"])).write_failure_timeout is None
    assert Settings().write_failure_timeout is None
    monkeypatch.setenv("INDEXER_WRITE_FAILURE_TIMEOUT", "inf")  # retry for ever
    assert _settings(parse(["index"])).write_failure_timeout == math.inf
    monkeypatch.setenv("INDEXER_WRITE_FAILURE_TIMEOUT", "120")
    assert _settings(parse(["run"])).write_failure_timeout == 120
