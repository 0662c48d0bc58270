"""``indexer-service report``: figures under date and project filters checked against totals
computed from the JSON files (`test_views.Truth`), table and JSON output, empty and old
databases, and the same report through a running service."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pytest
from usage_truth import Truth, build_tree, load

from indexer_service.cli import read as cli_read
from indexer_service.cli.main import main
from indexer_service.errors import ConfigError, QueryFailed
from indexer_service.http.client import find_service
from indexer_service.read.query import Params, QueryResult
from indexer_service.reports.usage import Report, ReportFilters, collect_report, format_report
from indexer_service.service import IndexerService
from indexer_service.settings import Settings
from indexer_service.store.database import Database
from indexer_service.store.views import VIEWS

SUMS = ("messages", "errors", "tokens_input", "tokens_output", "tokens_reasoning",
        "tokens_cache_read", "tokens_cache_write", "tokens_total", "cost")  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Truth, Path]:
    """(the figures from the files, the indexed database) of the test tree."""
    base = tmp_path_factory.mktemp("report")
    build_tree(base / "storage")
    load(base / "storage", base / "index.duckdb")
    return Truth(base / "storage"), base / "index.duckdb"


Run = Callable[..., dict[str, Any]]


@pytest.fixture
def report(tree: tuple[Truth, Path], capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``indexer-service report KIND ... --json`` on the test database; the parsed JSON."""

    def run(kind: str, *args: str) -> dict[str, Any]:
        code = main(["report", kind, "--db", str(tree[1]), "--json", *args])
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        data: dict[str, Any] = json.loads(out)
        return data

    return run


def approx(row: dict[str, Any]) -> dict[str, Any]:
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in row.items()}


def sums(rows: list[dict[str, Any]], keys: tuple[str, ...] = SUMS) -> dict[str, Any]:
    return approx({k: sum(r[k] for r in rows) for k in keys})


# -- figures under filters ----------------------------------------------------------------------


def test_daily_report_for_a_date_range(report: Run, tree: tuple[Truth, Path]) -> None:
    """daily --since/--until: the rows of the days in range (both ends included) and totals."""
    since, until = date(2025, 10, 31), date(2025, 11, 5)
    data = report("daily", "--since", "2025-10-31", "--until", "2025-11-05")
    want = tree[0].usage("day", since, until)
    days = {k[0] for k in want}
    assert "2025-10-31" in days and "2025-11-05" in days and "2025-10-30" not in days
    got = {
        (r.pop("day"), r.pop("provider_id"), r.pop("model_id"), r.pop("agent")): r
        for r in data["rows"]
    }
    assert got == {k: approx(v) for k, v in want.items()}
    assert {k: data["totals"][k] for k in SUMS} == sums(list(want.values()))
    assert data["filters"] == {"since": "2025-10-31", "until": "2025-11-05", "project": None}
    assert data["truncated"] is False


def test_monthly_report(report: Run, tree: tuple[Truth, Path]) -> None:
    """monthly: one row per month x provider x model x agent; distinct sessions in the totals."""
    data = report("monthly")
    got = {
        (r.pop("month"), r.pop("provider_id"), r.pop("model_id"), r.pop("agent")): r
        for r in data["rows"]
    }
    want = tree[0].usage("month")
    assert got == {k: approx(v) for k, v in want.items()}
    assert {m[0] for m in got} == {"2025-10-01", "2025-11-01"}
    sessions = {m.session_id for m in tree[0].assistant()}
    assert data["totals"]["sessions"] == len(sessions)


def test_monthly_report_counts_only_days_in_range(report: Run, tree: tuple[Truth, Path]) -> None:
    """monthly --since inside a month counts that month from that day on."""
    data = report("monthly", "--since", "2025-10-31")
    want = tree[0].usage("day", since=date(2025, 10, 31))
    october = [v for k, v in want.items() if k[0].startswith("2025-10")]
    got = [r for r in data["rows"] if r["month"] == "2025-10-01"]
    assert sums(got) == sums(october) and october


@pytest.mark.parametrize("how", ["worktree", "worktree/", "project id"])
def test_models_report_for_a_project(report: Run, tree: tuple[Truth, Path], how: str) -> None:
    """models --project: a project's usage, named by its directory (with or without a trailing
    slash) or by its id."""
    truth = tree[0]
    pid, worktree = next((p, w) for p, w in sorted(truth.worktree.items()) if p != "global")
    arg = {"worktree": worktree, "worktree/": worktree + "/", "project id": pid}[how]
    data = report("models", "--project", arg)
    want = truth.usage("model", project=worktree)
    got = {(r.pop("provider_id"), r.pop("model_id")): r for r in data["rows"]}
    assert got == {k: approx(v) for k, v in want.items()} and got
    assert {k: data["totals"][k] for k in SUMS} == sums(list(want.values()))
    assert [r["cost"] for r in data["rows"]] == sorted(
        (r["cost"] for r in data["rows"]), reverse=True
    )


def test_project_filter_matches_working_directories_below(
    report: Run, tree: tuple[Truth, Path]
) -> None:
    """--project DIR also takes sessions whose working directory is DIR or lies under it."""
    data = report("models", "--project", "/home/dev/orphan")
    assert [(r["provider_id"], r["messages"], r["cost"]) for r in data["rows"]] == [
        ("openai", 1, 0.25)
    ]
    assert report("models", "--project", "/home/dev/orph")["rows"] == []


def test_tools_report_with_filters(report: Run, tree: tuple[Truth, Path]) -> None:
    """tools: calls, outcomes, error rate and duration median/p95 per tool; the totals row is
    the same over all calls in range (an overall median, not a sum)."""
    since = date(2025, 11, 1)
    data = report("tools", "--since", "2025-11-01")
    want = tree[0].tools(since=since)
    overall = want.pop(None)
    got = {r.pop("tool"): r for r in data["rows"]}
    assert got == {k: approx(v) for k, v in want.items()}
    assert data["totals"] == approx(overall)
    assert 0 < overall["calls"] < tree[0].tools()[None]["calls"]  # the filter left some out


def test_sessions_report_with_filters(report: Run, tree: tuple[Truth, Path]) -> None:
    """sessions: the sessions that started in range and belong to the project, with totals."""
    truth = tree[0]
    summary = truth.session_summary()
    since, until = date(2025, 10, 31), date(2025, 11, 5)
    project = "/home/dev"
    want = {sid: s for sid, s in summary.items() if s["started_at"] and since <= s["started_at"].date() <= until
            and truth.in_project(sid, project)}  # fmt: skip
    data = report(
        "sessions", "--since", "2025-10-31", "--until", "2025-11-05", "--project", project
    )
    got = {r["session_id"]: r for r in data["rows"]}
    assert set(got) == set(want) and "ses_partial" in got and "ses_empty" not in got
    keys = ("messages", "tool_calls", "tokens_total", "cost", "duration_s")
    for sid, row in got.items():
        assert {k: row[k] for k in keys} == approx({k: want[sid][k] for k in keys}), sid
    starts = [r["started_at"] for r in data["rows"]]
    assert starts == sorted(starts)
    totals = (*keys, "tool_errors")
    assert {k: data["totals"][k] for k in totals} == sums(list(want.values()), totals)
    assert data["totals"]["sessions"] == len(want)


# -- output -------------------------------------------------------------------------------------


def test_table_output(tree: tuple[Truth, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: an aligned table, thousands separators, USD with 2 decimals, a totals row."""
    code = main(["report", "daily", "--db", str(tree[1])])
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["day", "provider", "model", "agent"]
    assert set(lines[1]) == {"-", " "} and lines[-2] == lines[1]
    assert len({len(line) for line in lines}) == 1  # the last column, cost, is right-aligned
    want = tree[0].usage("day")
    total = {k: sum(v[k] for v in want.values()) for k in SUMS}
    assert lines[-1].split() == [
        "total",
        f"{total['messages']:,}",
        *(
            f"{total[f'tokens_{k}']:,}"
            for k in ("input", "output", "reasoning", "cache_read", "cache_write")
        ),
        f"{total['cost']:,.2f}",
    ]
    assert len(lines) == 2 + len(want) + 2


def test_sessions_table_marks_subagents(
    tree: tuple[Truth, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The sessions table marks sub-agent sessions and ends with the session count."""
    code = main(["report", "sessions", "--db", str(tree[1])])
    out, _ = capsys.readouterr()
    children = sum(s.parent_id is not None for s in tree[0].sessions.values())
    assert code == 0 and out.count("↳ ") == children
    assert out.splitlines()[-1].startswith(f"{len(tree[0].session_summary())} sessions")


def test_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every report works on an empty database: no rows, zero totals."""
    db = tmp_path / "empty.duckdb"
    Database(db).open().close()
    capsys.readouterr()  # the migration's log line
    for kind in ("daily", "monthly", "sessions", "models", "tools"):
        assert main(["report", kind, "--db", str(db), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["rows"] == [], kind
        assert data["totals"].get("calls", data["totals"].get("messages")) == 0, kind
        assert main(["report", kind, "--db", str(db)]) == 0
        last = capsys.readouterr().out.splitlines()[-1].split()
        assert last[0] in ("total", "0") and last[-1] in ("0", "0.00", "-"), kind


def test_database_without_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database written before the views existed, opened read-only: a clear error, exit 1."""
    db = tmp_path / "old.duckdb"
    Database(db).open().close()
    con = duckdb.connect(str(db))
    for name, _ in reversed(VIEWS):
        con.execute(f"DROP VIEW {name}")
    con.close()
    assert main(["report", "daily", "--db", str(db)]) == 1
    _, err = capsys.readouterr()
    assert "no analytics views" in err and "indexer-service index" in err


def test_bad_dates(tree: tuple[Truth, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed date is a usage error (2); --since after --until an error (1)."""
    with pytest.raises(SystemExit) as exc:
        main(["report", "daily", "--db", str(tree[1]), "--since", "2025-13-01"])
    assert exc.value.code == 2 and "not a date (YYYY-MM-DD)" in capsys.readouterr().err
    assert (
        main(
            [
                "report",
                "daily",
                "--db",
                str(tree[1]),
                "--since",
                "2025-11-02",
                "--until",
                "2025-11-01",
            ]
        )
        == 1
    )
    assert "--since 2025-11-02 is after --until 2025-11-01" in capsys.readouterr().err


@pytest.mark.asyncio_only  # the HTTP API (aiohttp)
async def test_report_through_the_running_service(
    storage_tree: Callable[..., object],
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the service running, report goes through its query API (the file is never opened
    directly) and prints what a direct read prints once the service has stopped."""
    storage_tree(sessions=3, seed=5)
    settings = make_settings(http_enabled=True)
    argv = ["report", "sessions", "--db", str(settings.db_path), "--json"]
    with monkeypatch.context() as m:

        def refuse(db_path: Path) -> Database:
            raise AssertionError("opened the database file while the service runs")

        m.setattr(cli_read, "_open_direct", refuse)
        async with IndexerService(settings, periodic_reconcile=False) as svc:
            await svc.wait_until_synced()
            assert await anyio.to_thread.run_sync(find_service, settings.db_path) is not None
            capsys.readouterr()  # the service's own log lines
            code = await anyio.to_thread.run_sync(main, argv)
            served, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert main(argv) == 0
    direct = capsys.readouterr().out
    assert json.loads(served) == json.loads(direct)
    assert len(json.loads(direct)["rows"]) >= 3


def test_cells_of_a_sessions_table() -> None:
    """Durations read as s, m or h; missing values as '-'; long titles and model lists are cut;
    a truncated result says so."""
    base = {"session_id": "ses_1", "started_at": "2025-10-30T20:01:02.345000", "messages": 1234,
            "tool_calls": None, "tool_errors": 0, "tokens_total": 1_234_567, "cost": 1234.5}  # fmt: skip
    rows = [
        base | {"title": "x" * 60, "duration_s": 45.2, "models_used": ["m" * 30, "n" * 30]},
        base | {"title": "child", "parent_id": "ses_0", "duration_s": 125.0, "models_used": []},
        base | {"title": "long", "duration_s": 3720.0, "models_used": ["a/b"]},
    ]
    text = format_report(Report("sessions", ReportFilters(), rows, {"sessions": 3}, truncated=True))
    lines = text.splitlines()
    assert lines[2].split()[:4] == ["2025-10-30", "20:01", "ses_1", "x" * 39 + "…"]
    assert (
        "  45s  " in lines[2]
        and "  1,234  " in lines[2]
        and lines[2].endswith("m" * 30 + ", " + "n" * 7 + "…")
    )
    assert "↳ child" in lines[3] and "2m05s" in lines[3] and "1h02m" in lines[4]
    assert " - " in lines[2] and "1,234.50" in lines[2] and "1,234,567" in lines[2]
    assert lines[-1] == "(only the first 3 rows; narrow with --since/--until/--project)"


def test_collect_report_errors() -> None:
    """An unknown report is a ConfigError; a failing query other than a missing view is raised
    as it is."""

    def failing(sql: str, params: Params) -> QueryResult:
        raise QueryFailed("Binder Error: something else")

    with pytest.raises(ConfigError, match="unknown report 'weekly'"):
        collect_report(failing, "weekly")
    with pytest.raises(QueryFailed, match="something else"):
        collect_report(failing, "tools")
