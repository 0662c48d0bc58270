"""Analytics views: every figure checked against totals computed here from the JSON files.

The tree is two generated trees (different months) plus hand-written sessions with missing and
partial data. `Truth` walks the files with orjson and aggregates in Python, independently of the
views' SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from structlog.testing import capture_logs
from usage_truth import T_PARTIAL, Truth, build_tree, load, ts

from indexer_service.store.database import Database
from indexer_service.store.schema import SCHEMA_VERSION
from indexer_service.store.views import PROMPT_SUMMARY_CHARS, VIEWS, VIEWS_DIGEST

# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(storage root, indexed database) of the test tree, built once for the module."""
    base = tmp_path_factory.mktemp("views")
    build_tree(base / "storage")
    load(base / "storage", base / "index.duckdb")
    return base / "storage", base / "index.duckdb"


@pytest.fixture(scope="module")
def truth(tree: tuple[Path, Path]) -> Truth:
    return Truth(tree[0])


@pytest.fixture(scope="module")
def con(tree: tuple[Path, Path]) -> Iterator[duckdb.DuckDBPyConnection]:
    with Database(tree[1], read_only=True) as db:
        yield db.cursor()


def view(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def approx(row: dict[str, Any]) -> dict[str, Any]:
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in row.items()}


# -- the tree has what the tests need -----------------------------------------------------------


def test_tree_covers_the_cases(truth: Truth) -> None:
    """The fixture tree spans two months and several days, with sub-agents, crashes, errors."""
    days = {m.day for m in truth.messages.values()}
    assert len(days) >= 3 and {d.month for d in days} == {10, 11}
    assert sum(s.parent_id is not None for s in truth.sessions.values()) >= 2
    assert any(m.completed is None for m in truth.messages.values() if m.role == "assistant")
    assert any(m.error for m in truth.messages.values())
    assert any(c.status == "error" for c in truth.calls)


# -- each view ----------------------------------------------------------------------------------


def test_daily_usage(con: duckdb.DuckDBPyConnection, truth: Truth) -> None:
    """v_daily_usage: per UTC day x provider x model x agent, the assistant messages' figures."""
    rows = view(con, "SELECT * FROM v_daily_usage")
    got = {
        (r.pop("day").isoformat(), r.pop("provider_id"), r.pop("model_id"), r.pop("agent")): r
        for r in rows
    }
    assert got == {k: approx(v) for k, v in truth.usage("day").items()}


def test_monthly_usage(con: duckdb.DuckDBPyConnection, truth: Truth) -> None:
    """v_monthly_usage: the same per month (the first day of the month)."""
    rows = view(con, "SELECT * FROM v_monthly_usage")
    got = {
        (r.pop("month").isoformat(), r.pop("provider_id"), r.pop("model_id"), r.pop("agent")): r
        for r in rows
    }
    assert got == {k: approx(v) for k, v in truth.usage("month").items()}
    assert len(got) < len(truth.usage("day"))


def test_tool_usage(con: duckdb.DuckDBPyConnection, truth: Truth) -> None:
    """v_tool_usage: calls, outcomes, error rate and duration median/p95 per tool."""
    got = {r.pop("tool"): r for r in view(con, "SELECT * FROM v_tool_usage")}
    want = truth.tools()
    del want[None]
    assert got == {k: approx(v) for k, v in want.items()}


def test_session_summary(con: duckdb.DuckDBPyConnection, truth: Truth) -> None:
    """v_session_summary: one row per session with times, counts, tokens, cost, models, diffs."""
    rows = view(con, "SELECT * FROM v_session_summary")
    got = {r.pop("session_id"): r for r in rows}
    want = truth.session_summary()
    assert set(got) == set(want)
    for sid, row in got.items():
        assert row == approx(want[sid]), sid


def test_delegations_link_parents_to_children(con: duckdb.DuckDBPyConnection, truth: Truth) -> None:
    """v_delegations: one row per task tool call, naming the child session and its cost."""
    got = {r.pop("part_id"): r for r in view(con, "SELECT * FROM v_delegations")}
    want = truth.delegations()
    assert set(got) == set(want) and len(want) >= 3
    for pid, row in got.items():
        assert {k: row[k] for k in want[pid]} == approx(want[pid]), pid


def test_every_subagent_session_is_linked(con: duckdb.DuckDBPyConnection, truth: Truth) -> None:
    """Each child session (parentID) is reached from its parent by a task call, and the child's
    cost in v_delegations equals its cost in v_session_summary."""
    children = {s.id: s.parent_id for s in truth.sessions.values() if s.parent_id}
    rows = view(
        con,
        "SELECT d.parent_session_id, d.child_session_id, d.child_cost, s.cost, s.is_subagent "
        "FROM v_delegations d JOIN v_session_summary s ON s.session_id = d.child_session_id",
    )
    assert {r["child_session_id"]: r["parent_session_id"] for r in rows} == children
    assert all(r["child_cost"] == pytest.approx(r["cost"]) and r["is_subagent"] for r in rows)
    parents = view(
        con,
        "SELECT session_id, subagent_sessions FROM v_session_summary WHERE subagent_sessions > 0",
    )
    assert {r["session_id"]: r["subagent_sessions"] for r in parents} == {
        p: sum(v == p for v in children.values()) for p in set(children.values())
    }


# -- missing and partial data -------------------------------------------------------------------


def test_crashed_session_with_missing_tokens(con: duckdb.DuckDBPyConnection) -> None:
    """A message with no tokens, cost or completed time counts as zero and as incomplete; the
    session ends at its last update; unfinished tools count as calls without a duration."""
    [row] = view(con, "SELECT * FROM v_session_summary WHERE session_id = 'ses_partial'")
    assert row["incomplete_messages"] == 1 and row["assistant_messages"] == 2
    assert (row["tokens_input"], row["tokens_output"], row["tokens_reasoning"]) == (1000, 200, 0)
    assert (row["tokens_cache_read"], row["tokens_total"], row["cost"]) == (0, 1200, 0.5)
    assert row["ended_at"] == ts(T_PARTIAL + 5_000) and row["duration_s"] == 5.0
    assert (row["tool_calls"], row["tool_errors"], row["models_used"]) == (
        3,
        0,
        ["anthropic/claude-sonnet-4-5"],
    )
    assert row["agents_used"] == ["build"]  # the legacy `mode` stands in for the agent
    calls = view(
        con,
        "SELECT tool, status, duration_ms FROM v_tool_calls WHERE session_id = 'ses_partial' ORDER BY tool",
    )
    assert [(c["tool"], c["status"], c["duration_ms"]) for c in calls] == [
        ("bash", "running", None),
        ("read", "pending", None),
        ("task", "running", None),
    ]


def test_messages_without_a_session_file(con: duckdb.DuckDBPyConnection) -> None:
    """Messages whose session file is missing still count: the directory comes from the message."""
    [row] = view(con, "SELECT * FROM v_session_summary WHERE session_id = 'ses_orphan'")
    assert row["session_file_missing"] and row["title"] is None and row["project_id"] is None
    assert (row["directory"], row["worktree"]) == ("/home/dev/orphan/sub", "/home/dev/orphan")
    assert row["started_at"] == ts(T_PARTIAL + 86_400_000) and row["duration_s"] == 1.0
    assert (row["error_messages"], row["tokens_total"], row["cost"]) == (1, 150, 0.25)


def test_session_without_messages(con: duckdb.DuckDBPyConnection) -> None:
    """A session with no messages has zero counts, empty model lists and a zero duration."""
    [row] = view(con, "SELECT * FROM v_session_summary WHERE session_id = 'ses_empty'")
    assert (row["messages"], row["parts"], row["cost"], row["duration_s"]) == (0, 0, 0.0, 0.0)
    assert row["models_used"] == [] and row["agents_used"] == []


def test_task_call_whose_child_is_missing(con: duckdb.DuckDBPyConnection) -> None:
    """A task call naming a session that was never written: child not found, zero child cost,
    and the prompt summarised on one line."""
    [row] = view(con, "SELECT * FROM v_delegations WHERE part_id = 'prt_p3'")
    assert (row["child_session_id"], row["child_found"], row["child_cost"]) == (
        "ses_ghost",
        False,
        0.0,
    )
    assert row["prompt_summary"].startswith("Look for the very very")
    assert len(row["prompt_summary"]) == PROMPT_SUMMARY_CHARS and row["prompt_summary"].endswith(
        "…"
    )


# -- creation by migrations ---------------------------------------------------------------------


def test_empty_database_has_queryable_empty_views(tmp_path: Path) -> None:
    """A new database has every view, and each answers with no rows."""
    with Database(tmp_path / "new.duckdb") as db:
        cur = db.cursor()
        names = {
            r[0]
            for r in cur.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        }
        assert names == {name for name, _ in VIEWS}
        for name, _ in VIEWS:
            assert cur.execute(f"SELECT * FROM {name}").fetchall() == [], name


def test_reopen_does_not_touch_the_views(tmp_path: Path) -> None:
    """Opening an up-to-date database again re-creates nothing (no schema change is logged)."""
    path = tmp_path / "x.duckdb"
    with capture_logs() as first:
        Database(path).open().close()
    with capture_logs() as second:
        Database(path).open().close()
    assert [e["event"] for e in first] == ["schema_migrated"]
    assert [e["event"] for e in second] == []


def test_changed_or_dropped_views_are_recreated(tmp_path: Path) -> None:
    """A database with an old view digest, or a dropped view, gets the views back on open."""
    path = tmp_path / "x.duckdb"
    Database(path).open().close()
    con = duckdb.connect(str(path))
    con.execute("DROP VIEW v_delegations")
    con.execute("UPDATE schema_meta SET value = 'old' WHERE key = 'views_digest'")
    con.close()
    with capture_logs() as logs, Database(path) as db:
        cur = db.cursor()
        assert cur.execute("SELECT count(*) FROM v_delegations").fetchall() == [(0,)]
        digest = cur.execute("SELECT value FROM schema_meta WHERE key = 'views_digest'").fetchall()
        assert digest == [(VIEWS_DIGEST,)]
    assert [e["event"] for e in logs] == ["schema_migrated"]


def test_v2_database_gains_the_views_and_read_only_opens_add_nothing(tmp_path: Path) -> None:
    """A version 2 database without views stays so when opened read-only, and gets the views
    and version 3 on its next read-write open."""
    path = tmp_path / "v2.duckdb"
    Database(path).open().close()
    con = duckdb.connect(str(path))
    for name, _ in reversed(VIEWS):
        con.execute(f"DROP VIEW {name}")
    con.execute("DELETE FROM schema_meta WHERE key = 'views_digest'")
    con.execute("UPDATE schema_meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with Database(path, read_only=True) as db:
        assert db.schema_version == 2
        assert db.cursor().execute(
            "SELECT count(*) FROM duckdb_views() WHERE NOT internal"
        ).fetchall() == [(0,)]
    with Database(path) as db:
        assert db.schema_version == SCHEMA_VERSION
        assert db.cursor().execute("SELECT count(*) FROM v_session_summary").fetchall() == [(0,)]
