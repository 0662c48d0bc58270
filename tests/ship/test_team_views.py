"""The team database's views and reports give the local index's numbers: the same generated
index shipped as two machines with the same OpenCode ids reads, per machine, exactly as the
local DuckDB file does, and twice as much over the team."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from team_data import HOSTS, assert_same_rows

from indexer_service.read.query import DEFAULT_MAX_ROWS, Params, QueryResult, run_query
from indexer_service.reports.usage import Report, ReportFilters, collect_report
from indexer_service.ship.pg_query import pg_query_fn
from indexer_service.store.database import Database
from indexer_service.store.views import VIEWS

KINDS = ("daily", "monthly", "models", "tools", "sessions")
SUMS = ("messages", "tokens_input", "tokens_output", "tokens_reasoning", "tokens_cache_read",
        "tokens_cache_write", "tokens_total", "cost")  # fmt: skip


@pytest.fixture(scope="module")
def local(local_db: Path) -> Iterator[Database]:
    with Database(local_db, read_only=True) as db:
        yield db


@pytest.fixture(scope="module")
def team(team_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(team_url, autocommit=True) as con:
        yield con


def _local_report(db: Database, kind: str, filters: ReportFilters) -> Report:
    def direct(sql: str, params: Params) -> QueryResult:
        return run_query(db, sql, params, max_rows=DEFAULT_MAX_ROWS)

    return collect_report(direct, kind, filters)


def _rows(report: Report, drop: str | None = None) -> list[list[Any]]:
    return [[v for k, v in row.items() if k != drop] for row in report.rows]


@pytest.mark.parametrize("view", [name for name, _ in VIEWS])
def test_each_view_per_machine_equals_the_local_view(
    view: str, local: Database, team: psycopg.Connection[Any]
) -> None:
    """Every column of every view, for each machine, holds the local view's rows; the two
    machines' rows never mix (a join on the OpenCode id alone would double them)."""
    cur = local.cursor().execute(f"SELECT * FROM {view}")
    columns = [d[0] for d in cur.description or []]
    want = cur.fetchall()
    assert want, f"{view} is empty: the test data does not exercise it"
    for machine in HOSTS:
        got = team.execute(
            f"SELECT {', '.join(columns)} FROM {view} WHERE machine_id = %s", [machine]
        ).fetchall()
        assert_same_rows(got, want)
    total = team.execute(f"SELECT count(*) FROM {view}").fetchone()
    assert total == (2 * len(want),)


def _filters(local: Database) -> dict[str, ReportFilters]:
    row = local.cursor().execute("SELECT min(worktree) FROM projects").fetchone()
    assert row and row[0]
    return {
        "all": ReportFilters(),
        "days": ReportFilters(date(2025, 10, 31), date(2025, 11, 5)),
        "project": ReportFilters(project=row[0]),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_each_report_for_one_machine_equals_the_local_report(
    kind: str, local: Database, team: psycopg.Connection[Any]
) -> None:
    """``report KIND --from ... --machine m1`` gives the local report's rows and totals, under
    date and project filters too (sessions rows also carry their machine)."""
    query = pg_query_fn(team)
    for name, filters in _filters(local).items():
        want = _local_report(local, kind, filters)
        assert want.rows, f"{kind} {name}: no rows to compare"
        for machine in HOSTS:
            one = ReportFilters(filters.since, filters.until, filters.project, machine)
            got = collect_report(query, kind, one, team=True)
            if kind == "sessions":
                assert {r["machine_id"] for r in got.rows} == {machine}
            assert_same_rows(_rows(got, drop="machine_id"), _rows(want))
            assert_same_rows([list(got.totals.values())], [list(want.totals.values())])
            assert list(got.totals) == list(want.totals)


@pytest.mark.parametrize("kind", ["daily", "monthly", "models", "sessions"])
def test_team_totals_add_up_the_machines(
    kind: str, local: Database, team: psycopg.Connection[Any]
) -> None:
    """Over the whole team every sum is twice the local one, sessions included: the same
    session id on two machines is two sessions."""
    want = _local_report(local, kind, ReportFilters())
    got = collect_report(pg_query_fn(team), kind, ReportFilters(), team=True)
    keys = (*SUMS, "sessions") if kind != "sessions" else (*SUMS[1:], "sessions", "tool_calls")
    doubled = {k: 2 * want.totals[k] for k in keys}
    assert_same_rows([[got.totals[k] for k in keys]], [list(doubled.values())])
    if kind == "sessions":
        assert len(got.rows) == 2 * len(want.rows)
    else:  # one row per key, both machines in it
        assert len(got.rows) == len(want.rows)


def test_tools_over_the_team(local: Database, team: psycopg.Connection[Any]) -> None:
    """Tool calls and errors add up over the machines; the median of two copies of the same
    durations is the same median."""
    want = _local_report(local, "tools", ReportFilters())
    got = collect_report(pg_query_fn(team), "tools", ReportFilters(), team=True)
    by_tool = {r["tool"]: r for r in want.rows}
    for row in got.rows:
        local_row = by_tool[row["tool"]]
        assert (row["calls"], row["errors"]) == (2 * local_row["calls"], 2 * local_row["errors"])
        assert row["median_ms"] == local_row["median_ms"]


def test_the_machines_report(local: Database, team: psycopg.Connection[Any]) -> None:
    """One row per machine with its hostname and last shipment, each the local usage totals;
    the team total is both."""
    local_totals = _local_report(local, "models", ReportFilters()).totals
    got = collect_report(pg_query_fn(team), "machines", ReportFilters(), team=True)
    assert [(r["machine_id"], r["hostname"]) for r in sorted(got.rows, key=str)] == sorted(
        HOSTS.items()
    )
    for row in got.rows:
        assert row["shipped_at"] == "2025-11-06T12:00:00"
        assert_same_rows([[row[k] for k in local_totals]], [list(local_totals.values())])
    assert_same_rows(
        [[got.totals[k] for k in local_totals]], [[2 * v for v in local_totals.values()]]
    )
    one = collect_report(pg_query_fn(team), "machines", ReportFilters(machine="m2"), team=True)
    assert [r["machine_id"] for r in one.rows] == ["m2"]
