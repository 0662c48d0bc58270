"""Analytics views: every figure checked against totals computed here from the JSON files.

The tree is two generated trees (different months) plus hand-written sessions with missing and
partial data. `Truth` walks the files with orjson and aggregates in Python, independently of the
views' SQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from structlog.testing import capture_logs

from indexer_service.db import Database
from indexer_service.loader import Loader
from indexer_service.schema import SCHEMA_VERSION
from indexer_service.synthetic import TreeSpec, generate_tree
from indexer_service.tracker import FileTracker
from indexer_service.views import PROMPT_SUMMARY_CHARS, VIEWS, VIEWS_DIGEST

KINDS = ("input", "output", "reasoning", "cache_read", "cache_write")
TOKENS = tuple(f"tokens_{k}" for k in KINDS)


def epoch_ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


def ts(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC).replace(tzinfo=None)


def quantile(values: list[int], q: float) -> float | None:
    """Linear interpolation between the closest ranks (DuckDB's quantile_cont)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def under(path: str | None, directory: str) -> bool:
    directory = directory.rstrip("/")
    return path is not None and (path + "/").startswith(directory + "/")


# -- the tree -----------------------------------------------------------------------------------

T_PARTIAL = epoch_ms(2025, 11, 5, 12)


def _put(root: Path, rel: str, doc: object) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def write_partial_records(root: Path) -> None:
    """Sessions with missing and partial data, as crashes and old versions leave them."""
    t = T_PARTIAL
    _put(root, "session/global/ses_partial.json", {
        "id": "ses_partial", "version": "1.0.61", "projectID": "global",
        "directory": "/home/dev/partial", "title": "Crashed\n mid-stream",
        "time": {"created": t, "updated": t + 5_000},
    })  # fmt: skip
    user = {
        "id": "msg_p1",
        "sessionID": "ses_partial",
        "role": "user",
        "time": {"created": t + 100},
    }
    _put(root, "message/ses_partial/msg_p1.json", user)
    # in flight when the process died: no tokens, no cost, no completed time, no agent (only mode)
    crashed = {"id": "msg_p2", "sessionID": "ses_partial", "role": "assistant",
               "time": {"created": t + 200}, "parentID": "msg_p1", "modelID": "claude-sonnet-4-5",
               "providerID": "anthropic", "mode": "build"}  # fmt: skip
    _put(root, "message/ses_partial/msg_p2.json", crashed)
    # tokens without reasoning and cache counts
    partial = {"id": "msg_p3", "sessionID": "ses_partial", "role": "assistant",
               "time": {"created": t + 300, "completed": t + 900}, "parentID": "msg_p1",
               "modelID": "claude-sonnet-4-5", "providerID": "anthropic", "mode": "build",
               "agent": "build", "cost": 0.5, "tokens": {"input": 1000, "output": 200}}  # fmt: skip
    _put(root, "message/ses_partial/msg_p3.json", partial)
    base = {"sessionID": "ses_partial", "messageID": "msg_p2", "type": "tool"}
    _put(root, "part/msg_p2/prt_p1.json", {"id": "prt_p1", **base, "callID": "c1", "tool": "bash",
         "state": {"status": "running", "input": {"command": "make"}, "time": {"start": t + 250}}})  # fmt: skip
    _put(root, "part/msg_p2/prt_p2.json", {"id": "prt_p2", **base, "callID": "c2", "tool": "read",
         "state": {"status": "pending", "input": {}, "raw": ""}})  # fmt: skip
    prompt = "Look   for\nthe " + "very " * 40 + "long prompt"
    _put(root, "part/msg_p2/prt_p3.json", {"id": "prt_p3", **base, "callID": "c3", "tool": "task",
         "state": {"status": "running", "time": {"start": t + 260}, "metadata": {"sessionId": "ses_ghost"},
                   "input": {"description": "Ghost", "prompt": prompt, "subagent_type": "explore"}}})  # fmt: skip
    # messages whose session file is missing
    orphan = {"id": "msg_o1", "sessionID": "ses_orphan", "role": "assistant",
              "time": {"created": t + 86_400_000, "completed": t + 86_401_000}, "parentID": "msg_x",
              "modelID": "gpt-5.1-codex", "providerID": "openai", "mode": "plan", "agent": "plan",
              "path": {"cwd": "/home/dev/orphan/sub", "root": "/home/dev/orphan"}, "cost": 0.25,
              "tokens": {"input": 10, "output": 20, "reasoning": 30, "cache": {"read": 40, "write": 50}},
              "error": {"name": "MessageAbortedError", "data": {"message": "aborted"}}}  # fmt: skip
    _put(root, "message/ses_orphan/msg_o1.json", orphan)
    # a session with no messages at all
    _put(root, "session/global/ses_empty.json", {
        "id": "ses_empty", "version": "1.1.65", "projectID": "global", "directory": "/home/dev/empty",
        "title": "Nothing yet", "time": {"created": t + 2 * 86_400_000, "updated": t + 2 * 86_400_000},
    })  # fmt: skip


def build_tree(root: Path) -> None:
    """Two months of generated sessions (sub-agents, crashes, errors) plus partial records."""
    common: dict[str, Any] = dict(messages_per_session=30, subagent_ratio=0.4, crashed_ratio=0.3,
                                  error_ratio=0.1, projects=2)  # fmt: skip
    generate_tree(
        root, TreeSpec(sessions=6, seed=11, base_time_ms=epoch_ms(2025, 10, 30, 20), **common)
    )
    generate_tree(
        root, TreeSpec(sessions=4, seed=12, base_time_ms=epoch_ms(2025, 11, 2, 9), **common)
    )
    write_partial_records(root)


def load(root: Path, db_path: Path) -> None:
    """Index every file of ``root`` into ``db_path`` (one batch, no service)."""
    files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    with Database(db_path) as db:
        loader = Loader(db, FileTracker(db), root)
        try:
            result = loader.load_batch(files)
        finally:
            loader.close()
    assert result.errors == 0


# -- the figures, from the files ----------------------------------------------------------------


@dataclass
class Msg:
    id: str
    session_id: str
    role: str
    created: int
    completed: int | None
    provider: str | None
    model: str | None
    agent: str | None
    tokens: dict[str, int]
    cost: float
    error: bool
    cwd: str | None
    root: str | None

    @property
    def day(self) -> date:
        return datetime.fromtimestamp(self.created / 1000, UTC).date()


@dataclass
class Call:
    id: str
    message_id: str
    session_id: str
    tool: str
    status: str | None
    start: int | None
    end: int | None
    doc: dict[str, Any] = field(repr=False)


@dataclass
class Ses:
    id: str
    project_id: str
    directory: str | None
    title: str | None
    parent_id: str | None
    created: int | None
    updated: int | None
    summary: dict[str, int]


class Truth:
    """The storage tree read with orjson: the records the views aggregate."""

    def __init__(self, root: Path) -> None:
        self.worktree = {
            d["id"]: d["worktree"] for d in map(_load, sorted(root.glob("project/*.json")))
        }
        self.sessions: dict[str, Ses] = {}
        for path in sorted(root.glob("session/*/*.json")):
            d = _load(path)
            t = d.get("time", {})
            self.sessions[d["id"]] = Ses(
                d["id"], path.parent.name, d.get("directory"), d.get("title"), d.get("parentID"),
                t.get("created"), t.get("updated"), d.get("summary") or {},
            )  # fmt: skip
        self.messages: dict[str, Msg] = {}
        for path in sorted(root.glob("message/*/*.json")):
            d = _load(path)
            tokens, model = d.get("tokens") or {}, d.get("model") or {}
            cache = tokens.get("cache") or {}
            counts = {k: int(tokens.get(k) or 0) for k in ("input", "output", "reasoning")}
            counts |= {"cache_read": cache.get("read") or 0, "cache_write": cache.get("write") or 0}
            self.messages[d["id"]] = Msg(
                d["id"], path.parent.name, d["role"], d["time"]["created"],
                d["time"].get("completed"), d.get("providerID", model.get("providerID")),
                d.get("modelID", model.get("modelID")), d.get("agent", d.get("mode")), counts,
                float(d.get("cost") or 0), "error" in d, (d.get("path") or {}).get("cwd"),
                (d.get("path") or {}).get("root"),
            )  # fmt: skip
        self.parts_by_session: dict[str, int] = defaultdict(int)
        self.calls: list[Call] = []
        for path in sorted(root.glob("part/*/*.json")):
            d = _load(path)
            self.parts_by_session[d["sessionID"]] += 1
            if d["type"] == "tool":
                st = d.get("state") or {}
                t = st.get("time") or {}
                self.calls.append(Call(d["id"], path.parent.name, d["sessionID"], d["tool"],
                                       st.get("status"), t.get("start"), t.get("end"), d))  # fmt: skip

    # where a record belongs: (project id, worktree, directory)
    def place(
        self, session_id: str, msg: Msg | None = None
    ) -> tuple[str | None, str | None, str | None]:
        s = self.sessions.get(session_id)
        if s is not None:
            return s.project_id, self.worktree.get(s.project_id), s.directory
        msg = msg or next((m for m in self.messages.values() if m.session_id == session_id), None)
        return None, msg.root if msg else None, msg.cwd if msg else None

    def in_project(self, session_id: str, project: str | None, msg: Msg | None = None) -> bool:
        if project is None:
            return True
        pid, worktree, directory = self.place(session_id, msg)
        return pid == project or under(directory, project) or under(worktree, project)

    def assistant(self, project: str | None = None) -> Iterator[Msg]:
        for m in self.messages.values():
            if m.role == "assistant" and self.in_project(m.session_id, project, m):
                yield m

    def usage(
        self,
        key: str,
        since: date | None = None,
        until: date | None = None,
        project: str | None = None,
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Usage by ``key``: day, month (each x provider x model x agent) or model."""
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for m in self.assistant(project):
            if (since and m.day < since) or (until and m.day > until):
                continue
            k: tuple[Any, ...] = (
                (m.provider, m.model) if key == "model" else (m.provider, m.model, m.agent)
            )
            if key == "day":
                k = (m.day.isoformat(), *k)
            elif key == "month":
                k = (m.day.replace(day=1).isoformat(), *k)
            row = out.setdefault(k, {"messages": 0, "errors": 0, "cost": 0.0, "sessions": set(),
                                     **dict.fromkeys((*TOKENS, "tokens_total"), 0)})  # fmt: skip
            row["messages"] += 1
            row["errors"] += m.error
            row["cost"] += m.cost
            row["sessions"].add(m.session_id)
            for kind in KINDS:
                row[f"tokens_{kind}"] += m.tokens[kind]
                row["tokens_total"] += m.tokens[kind]
        for row in out.values():
            row["sessions"] = len(row["sessions"])
        return out

    def call_day(self, c: Call) -> date:
        start = c.start if c.start is not None else self.messages[c.message_id].created
        return datetime.fromtimestamp(start / 1000, UTC).date()

    def tools(
        self, since: date | None = None, until: date | None = None, project: str | None = None
    ) -> dict[str | None, dict[str, Any]]:
        """Tool usage by tool, plus the overall figures under the key None."""
        groups: dict[str | None, list[Call]] = defaultdict(list)
        for c in self.calls:
            day = self.call_day(c)
            if (since and day < since) or (until and day > until):
                continue
            if self.in_project(c.session_id, project):
                groups[c.tool].append(c)
                groups[None].append(c)
        out = {}
        for tool, calls in groups.items():
            durations = [
                c.end - c.start for c in calls if c.start is not None and c.end is not None
            ]
            errors = sum(c.status == "error" for c in calls)
            completed = sum(c.status == "completed" for c in calls)
            out[tool] = {"calls": len(calls), "completed": completed, "errors": errors,
                         "unfinished": len(calls) - completed - errors,
                         "error_rate": errors / len(calls), "median_ms": quantile(durations, 0.5),
                         "p95_ms": quantile(durations, 0.95)}  # fmt: skip
        return out

    def session_summary(self) -> dict[str, dict[str, Any]]:
        """v_session_summary's figures by session id (sessions with messages but no file too)."""
        ids = set(self.sessions) | {m.session_id for m in self.messages.values()}
        out = {}
        for sid in ids:
            s = self.sessions.get(sid)
            msgs = [m for m in self.messages.values() if m.session_id == sid]
            asst = [m for m in msgs if m.role == "assistant"]
            calls = [c for c in self.calls if c.session_id == sid]
            pid, worktree, directory = self.place(sid)
            created = s.created if s else None
            start = created if created is not None else min((m.created for m in msgs), default=None)
            ends = [m.created for m in msgs] + [m.completed for m in msgs if m.completed]
            ends += [v for v in (s.updated, s.created) if v is not None] if s else []
            tokens = {f"tokens_{k}": sum(m.tokens[k] for m in asst) for k in KINDS}
            out[sid] = {
                "project_id": pid, "worktree": worktree, "directory": directory,
                "title": s.title if s else None, "parent_id": s.parent_id if s else None,
                "is_subagent": bool(s and s.parent_id),
                "started_at": ts(start), "ended_at": ts(max(ends, default=None)),
                "duration_s": (max(ends) - start) / 1000 if ends and start is not None else None,
                "messages": len(msgs), "user_messages": sum(m.role == "user" for m in msgs),
                "assistant_messages": len(asst),
                "incomplete_messages": sum(m.completed is None for m in asst),
                "error_messages": sum(m.error for m in msgs),
                "parts": self.parts_by_session.get(sid, 0), "tool_calls": len(calls),
                "tool_errors": sum(c.status == "error" for c in calls),
                **tokens, "tokens_total": sum(tokens.values()),
                "cost": sum(m.cost for m in asst),
                "models_used": sorted({f"{m.provider}/{m.model}" for m in asst if m.provider and m.model}),
                "agents_used": sorted({m.agent for m in asst if m.agent}),
                "subagent_sessions": sum(x.parent_id == sid for x in self.sessions.values()),
                "additions": s.summary.get("additions", 0) if s else 0,
                "deletions": s.summary.get("deletions", 0) if s else 0,
                "files_changed": s.summary.get("files", 0) if s else 0,
                "session_file_missing": s is None,
            }  # fmt: skip
        return out

    def delegations(self) -> dict[str, dict[str, Any]]:
        """v_delegations' figures by task part id."""
        out = {}
        for c in self.calls:
            if c.tool != "task":
                continue
            st = c.doc["state"]
            inp, child = st.get("input") or {}, (st.get("metadata") or {}).get("sessionId")
            prompt = " ".join(str(inp.get("prompt", "")).split())
            if len(prompt) > PROMPT_SUMMARY_CHARS:
                prompt = prompt[: PROMPT_SUMMARY_CHARS - 1] + "…"
            kids = [
                m for m in self.messages.values() if m.session_id == child and m.role == "assistant"
            ]
            out[c.id] = {
                "parent_session_id": c.session_id, "child_session_id": child,
                "subagent_type": inp.get("subagent_type"), "description": inp.get("description"),
                "prompt_summary": prompt, "status": c.status, "child_found": child in self.sessions,
                "child_messages": sum(m.session_id == child for m in self.messages.values()),
                "child_cost": sum(m.cost for m in kids),
                "child_tokens_total": sum(sum(m.tokens.values()) for m in kids),
            }  # fmt: skip
        return out


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


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
