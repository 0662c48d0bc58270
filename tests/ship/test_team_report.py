"""``indexer-service report KIND --from postgresql://...``: the team report through the CLI, and
what it says, in one line without the password, when the team database cannot be read."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from pg_server import PASSWORD, PgServer
from team_data import HOSTS, assert_same_rows

from indexer_service.cli.main import main

Run = tuple[int, str, str]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a failing report prints (exit 1, no password anywhere)."""
    code, out, err = _run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("indexer-service: error: ")
    assert PASSWORD not in err
    return err.strip()


def test_the_team_report_in_text(team_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``report machines --from URL``: one row per machine with its host, and the team total."""
    code, out, err = _run(capsys, "machines", "--from", team_url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["machine", "host", "sessions"]
    assert {line.split()[0]: line.split()[1] for line in lines[2:4]} == HOSTS
    assert lines[-1].startswith("total")
    assert PASSWORD not in out


def test_one_machine_reads_as_the_local_index(
    team_url: str, local_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report daily --from URL --machine m1 --json`` has the rows and totals of ``report daily
    --db`` on the index m1 shipped; the filters say which machine."""

    def report(*argv: str) -> dict[str, Any]:
        code, out, err = _run(capsys, "daily", "--json", "--since", "2025-11-01", *argv)
        assert (code, err) == (0, "")
        data: dict[str, Any] = json.loads(out)
        return data

    local = report("--db", str(local_db))
    team = report("--from", team_url, "--machine", "m1")
    assert team["filters"] == {**local["filters"], "machine": "m1"}
    assert [list(r) for r in team["rows"]] == [list(r) for r in local["rows"]]
    assert_same_rows(
        [list(r.values()) for r in team["rows"]], [list(r.values()) for r in local["rows"]]
    )
    assert team["totals"] == pytest.approx(local["totals"])


def test_sessions_show_their_machine(team_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The team's sessions report has a machine column: the same session id twice, once per
    machine."""
    code, out, _ = _run(capsys, "sessions", "--from", team_url)
    header = out.splitlines()[0].split()
    assert code == 0 and header[:4] == ["started", "(UTC)", "machine", "session"]
    rows = [line.split() for line in out.splitlines()[2:-2]]  # header, rule; rule, total
    assert {r[2] for r in rows} == set(HOSTS)


def test_a_wrong_password(pg_server: PgServer, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, "daily", "--from", pg_server.url(password="not-" + PASSWORD))
    assert "postgres:***@127.0.0.1" in err and "password authentication failed" in err


def test_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _error(capsys, "daily", "--from", f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/team")
    assert f"u:***@127.0.0.1:{port}/team" in err and "Connection refused" in err


def test_a_wrong_database(pg_server: PgServer, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, "daily", "--from", pg_server.url("no_team_here"))
    assert err.endswith('database "no_team_here" does not exist')


def test_a_database_no_machine_has_shipped_to(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty database: the views are missing because no sink created them yet."""
    err = _error(capsys, "models", "--from", pg_url)
    assert "no machine has shipped to it yet" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["machines"], "the machines report reads a team database"),
        (["daily", "--machine", "m1"], "--machine filters a team database"),
        (["daily", "--from", f"mysql://root:{PASSWORD}@db/x"], "--from: 'mysql://root:***@db/x'"),
    ],
)
def test_team_options_without_a_team_database(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What needs a team database says so when it has none."""
    err = _error(capsys, *argv, *([] if "--from" in argv else ["--db", str(tmp_path / "x")]))
    assert message in err
