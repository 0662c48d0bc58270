"""``indexer-service demo`` and the ``make run`` fallback: what a user sees, run for real."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import anyio
import duckdb
import pytest
from conftest import FakeClock, TreeFactory, assert_index_matches_tree
from opencode_db_truth import assert_index_equals

from indexer_service.cli.main import main
from indexer_service.demo.agent import Agent, StatusLine
from indexer_service.demo.runner import DemoOptions
from indexer_service.errors import ConfigError
from indexer_service.http.metrics import Metrics, histogram_quantile

REPO = Path(__file__).parents[2]
LIVE_LINE = re.compile(
    r"^\[ *\d+s\] [\d,]+ (files|records) indexed  [\d,]+ (files|records)/s  p95 ([\d,]+ ms|-)  "
    r"(?P<pending>[\d,]+) pending  [\d,]+ errors$",
    flags=re.M,
)
SHORT = ["--sessions", "2", "--duration", "2", "--workers", "2"]


@pytest.fixture
def demo_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory the demo makes its temporary directory in."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _demo_dirs(base: Path) -> list[Path]:
    return sorted(base.glob("indexer-demo-*"))


def _assert_user_output(out: str) -> None:
    """Backfill, the live line (settled: nothing pending at the end), then report and status."""
    assert re.search(
        r"^backfill:  [\d,]+ (records|files) in [\d.]+ s .*, 3 errors", out, flags=re.M
    )
    lines = list(LIVE_LINE.finditer(out))
    assert lines, out
    assert lines[-1]["pending"] == "0"
    assert re.search(r"^stopped:   .* the agent wrote [\d,]+ (records|files)", out, flags=re.M)
    report = out.index("$ indexer-service report daily --db ")
    status = out.index("$ indexer-service status --db ")
    assert report < status
    assert re.search(r"^day +provider +model +agent +messages", out[report:], flags=re.M)
    assert re.search(r"^total +[\d,]+", out[report:status], flags=re.M)
    assert "service:  not running" in out[status:]
    assert re.search(r"^part +[\d,]+ +[\d,]+ +[\d,]+$", out[status:], flags=re.M)
    assert "latest errors (" in out[status:]


def test_demo_backfills_writes_live_and_reports(
    demo_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo exits 0 having shown backfill, the live line, report daily and status, and
    removes its temporary directory."""
    assert main(["demo", *SHORT]) == 0
    out, err = capsys.readouterr()
    _assert_user_output(out)
    assert err == ""
    removed = re.search(r"^removed (\S+)$", out, flags=re.M)
    assert removed is not None and not Path(removed[1]).exists()
    assert _demo_dirs(demo_tmp) == []


@pytest.mark.parametrize("legacy", [False, True], ids=["opencode-db", "legacy-tree"])
def test_keep_leaves_an_index_in_sync_and_says_how_to_query_it(
    demo_tmp: Path, capsys: pytest.CaptureFixture[str], legacy: bool
) -> None:
    """With --keep the store and database stay, the index matches the store, and the printed
    query command works; the database by default, the legacy tree with --legacy-tree."""
    assert main(["demo", *SHORT, "--keep", *(["--legacy-tree"] if legacy else [])]) == 0
    out = capsys.readouterr().out
    [kept] = _demo_dirs(demo_tmp)
    store = "storage" if legacy else "opencode.db"
    assert f"kept {kept} ({store} and index.duckdb)" in out
    if legacy:
        assert_index_matches_tree(kept / "storage", kept / "index.duckdb")
    else:
        with duckdb.connect(str(kept / "index.duckdb"), read_only=True) as con:
            assert_index_equals(kept / "opencode.db", con)
    command = re.search(r'^  indexer-service query --db (\S+) "(.+)"$', out, flags=re.M)
    assert command is not None and command[1] == str(kept / "index.duckdb")
    assert main(["query", "--db", command[1], command[2], "--format", "csv"]) == 0
    count = int(capsys.readouterr().out.splitlines()[1])
    assert count > 100


def _pump(stream: IO[str]) -> queue.Queue[str | None]:
    """The lines of ``stream`` as they come, then None."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _read(lines: queue.Queue[str | None], until: str | None, timeout: float = 60) -> str:
    """Lines up to the first starting with ``until`` (None: up to the end of the stream)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is None:
            assert until is None, f"the demo ended before {until!r}:\n{''.join(seen)}"
            return "".join(seen)
        seen.append(line)
        if until is not None and line.startswith(until):
            return "".join(seen)


def test_sigint_stops_a_demo_process_cleanly(tmp_path: Path) -> None:
    """Ctrl-C during the live phase: exit 0, the agent stopped, the index caught up, reports
    printed, the temporary directory removed, no traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "indexer_service", "demo", *SHORT, "--duration", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = _pump(proc.stdout)
        head = _read(lines, "live:")
        assert "until Ctrl-C" in head
        proc.send_signal(signal.SIGINT)
        out = head + _read(lines, None)
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, err
    _assert_user_output(out)
    assert re.search(r"^stopped:   interrupted after", out, flags=re.M)
    assert "Traceback" not in err
    assert _demo_dirs(tmp_path) == []


def test_run_falls_back_to_the_demo_without_storage(
    demo_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --demo-if-missing` (what `make run` runs) says in one line that OpenCode has left no
    data (no database, no legacy tree), then runs the demo; INDEXER_DEMO_* variables shorten it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(demo_tmp / "data"))
    monkeypatch.delenv("INDEXER_STORAGE_PATH", raising=False)
    monkeypatch.setenv("INDEXER_DEMO_SESSIONS", "1")
    monkeypatch.setenv("INDEXER_DEMO_DURATION", "1")
    assert main(["run", "--demo-if-missing", "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"indexer-service: no OpenCode data at {demo_tmp / 'data/opencode/storage'} or "
        f"{demo_tmp / 'data/opencode'}/opencode*.db; running the demo instead (pass --storage DIR "
        "or --opencode-db FILE to index)"
    ]
    assert "writing to it for 1 s" in out
    _assert_user_output(out)
    assert _demo_dirs(demo_tmp) == []
    recipe = re.search(r"^run:.*\n\t(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert recipe is not None and "indexer-service run --demo-if-missing" in recipe[1]


@pytest.mark.skipif(
    subprocess.run(["make", "-q", "-C", str(REPO), ".venv/.installed-stamp"]).returncode != 0,
    reason="make is missing or .venv is not set up (make test sets it up)",
)
def test_make_run_without_opencode_storage_runs_the_demo(tmp_path: Path) -> None:
    """The first command of the README on a machine without OpenCode: `make run` says so in
    one line, runs the demo and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INDEXER_", "OPENCODE_"))}
    env.update(
        HOME=str(tmp_path),  # no ~/.local/share/opencode there
        TMPDIR=str(tmp_path),
        INDEXER_HTTP_PORT="0",
        INDEXER_DEMO_SESSIONS="1",
        INDEXER_DEMO_DURATION="1",
    )
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"indexer-service: no OpenCode data at {tmp_path}/.local/share/opencode/storage or "
        f"{tmp_path}/.local/share/opencode/opencode*.db; running the demo instead (pass "
        "--storage DIR or --opencode-db FILE to index)"
    ]
    _assert_user_output(proc.stdout)
    assert _demo_dirs(tmp_path) == []


def test_a_named_storage_tree_that_is_missing_stays_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tree named on purpose is not replaced by the demo: its absence is the usual error."""
    missing = tmp_path / "missing"
    code = main(["run", "--demo-if-missing", "--storage", str(missing)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"indexer-service: error: storage directory {missing} does not exist "
        "(is OpenCode installed? pass --storage DIR)"
    ]


def test_index_with_no_opencode_data_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`index` on a machine where OpenCode has left nothing says where it looked (`run` would
    wait for the database instead)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    code = main(["index", "--db", str(tmp_path / "index.duckdb")])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"indexer-service: error: no OpenCode data to index: no storage tree at "
        f"{tmp_path / 'data/opencode/storage'} and no database {tmp_path / 'data/opencode'}/opencode*.db"
    ]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["demo"],
            {"INDEXER_DEMO_SESSIONS": "0"},
            "INDEXER_DEMO_SESSIONS='0' is out of range: demo_sessions must be 1 to 1,000",
        ),
        (
            ["demo"],
            {"INDEXER_DEMO_RATE": "fast"},
            "INDEXER_DEMO_RATE='fast' is not a number (above 0 and at most 100,000 files/s)",
        ),
    ],
)
def test_bad_options_are_one_line_errors(
    argv: list[str],
    env: dict[str, str],
    message: str,
    demo_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An invalid variable exits 1 naming it, before anything is generated (an option out of
    its range is a usage error, exit 2: tests/test_ranges.py)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 1
    assert capsys.readouterr().err == f"indexer-service: error: {message}\n"
    assert _demo_dirs(demo_tmp) == []


def test_options_from_env_then_flags() -> None:
    """INDEXER_DEMO_* variables set the options; flags (not None) override them."""
    env = {"INDEXER_DEMO_SESSIONS": "3", "INDEXER_DEMO_KEEP": "yes", "INDEXER_DEMO_RATE": "5"}
    options = DemoOptions.from_env(env, rate=50.0, duration=None)
    assert options == DemoOptions(sessions=3, rate=50.0, duration=60.0, keep=True)
    with pytest.raises(ConfigError, match="INDEXER_DEMO_KEEP='maybe' is not a valid bool"):
        DemoOptions.from_env({"INDEXER_DEMO_KEEP": "maybe"})
    assert not DemoOptions.from_env({"INDEXER_DEMO_KEEP": "off"}).keep


def test_help_lists_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` lists the demo; `demo --help` explains it and its options."""
    assert main([]) == 0
    assert re.search(r"^  demo +the service on a generated tree", capsys.readouterr().out, re.M)
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for option in (
        "--sessions N",
        "--rate PER_S",
        "--legacy-tree",
        "--duration S",
        "--keep",
        "--workers",
    ):
        assert option in out
    assert "--storage" not in out and "INDEXER_DEMO_" in out


def test_status_line_redraws_on_a_terminal_and_logs_elsewhere() -> None:
    """On a terminal the line is redrawn in place; otherwise a line every `every` seconds,
    and the final state always."""
    tty = io.StringIO()
    line = StatusLine(tty, tty=True)
    line.show("a")
    line.show("b")
    line.end("c")
    assert tty.getvalue() == "\ra\x1b[K\rb\x1b[K\rc\x1b[K\n"

    log, clock = io.StringIO(), FakeClock()
    line = StatusLine(log, tty=False, every=5.0, clock=clock)
    for text in "abcdefg":
        line.show(text)
        clock.advance(2.0)
    line.end("z")
    assert log.getvalue() == "d\ng\nz\n"  # at 6 s and at 12 s


def test_agent_writes_streams_deletes_and_tears(storage_tree: TreeFactory) -> None:
    """Over a few hundred actions the agent starts sessions, streams text, deletes old sessions
    and leaves malformed parts, as the demo says."""
    tree = storage_tree(sessions=2)
    agent = Agent(tree.root, list(tree.session_ids), rate=1e9, seed=3)
    for _ in range(300):
        agent.act()
    c = agent.counts
    assert c["sessions"] >= 2 and c["streamed"] > 0 and c["corrupted"] > 0
    assert c["deleted"] > 0 and c["writes"] > c["streamed"]
    assert not any(tree.root.glob(f"session/*/{tree.session_ids[0]}.json"))


async def test_agent_stops_at_once_when_cancelled(storage_tree: TreeFactory) -> None:
    """Cancelling `Agent.run` ends the pacing wait in its thread: at 0.001 files/s a step would
    otherwise take hours, far past the suite's per-test timeout."""
    tree = storage_tree(sessions=1)
    agent = Agent(tree.root, [], rate=0.001)
    with anyio.move_on_after(0.5):  # the host's cancellation, while the agent waits
        await agent.run()
    assert agent.counts["sessions"] == 1


def test_histogram_quantile() -> None:
    """Linear interpolation inside the bucket holding the rank, as Prometheus does."""
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.95)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.3)
    beyond = [(0.1, 1.0), (0.5, 1.0), (float("inf"), 10.0)]
    assert histogram_quantile(0.95, beyond) == 0.5  # past the last finite bound
    assert histogram_quantile(2.0, beyond) == 0.5
    assert histogram_quantile(0.95, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.95, []) is None


def test_latency_buckets_follow_observations() -> None:
    """`Metrics.latency_buckets` is the event-to-index histogram, cumulative, ending at inf."""
    metrics = Metrics()
    metrics.batch_done(indexed_by_type={"part": 3}, seconds=0.1, latencies_s=(0.04, 0.15, 7.0))
    buckets = metrics.latency_buckets()
    assert buckets[0] == (0.05, 1.0) and buckets[-1] == (float("inf"), 3.0)
    assert dict(buckets)[0.2] == 2.0
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)
