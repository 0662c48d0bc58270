"""extract: OpenCode documents -> typed rows (pure: in-memory DuckDB, no files)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest

from indexer_service.extract import SPECS, Extracted, Extractor, RecordSpec, array_items, diagnose
from indexer_service.store.schema import RECORD_TABLES

T0 = 1_795_903_779_310  # epoch ms, from the spec's real run
SES = "ses_ddbcb0e73ffecYcMoaR3ZExEmE"
CHILD = "ses_ddbcb029affen6XbAT0edw6uDi"
MSG = "msg_22434f2b50016D30FVyj3AyQOa"
PID = "64f6c0b8953c6c913a243a23705eeb3fefba2efd"


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def pretty(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


@pytest.fixture(scope="module", params=["sql", "python"])
def extractor(request: pytest.FixtureRequest) -> Iterator[Extractor]:
    """Both paths: DuckDB's SQL (bulk batches) and Python (small batches of plain documents)."""
    ex = Extractor(python_max_rows=0 if request.param == "sql" else 200)
    yield ex
    ex.close()


def extract_one(
    ex: Extractor, file_type: str, doc: object, key: str, parent: str | None = None
) -> dict[str, Any]:
    """The single row one object document gives."""
    rows = extract(ex, file_type, [(pretty(doc), key, parent)])
    assert len(rows) == 1
    return rows[0]


def extract(
    ex: Extractor, file_type: str, files: Sequence[tuple[bytes, str, str | None]]
) -> list[dict[str, Any]]:
    spec = SPECS[file_type]
    batch = pa.table(
        {
            "file_path": [f"/s/{file_type}/{key}.json" for _, key, _ in files],
            "key": [key for _, key, _ in files],
            "parent": pa.array([parent for _, _, parent in files], pa.string()),
            "content": [data.decode() for data, _, _ in files],
        }
    )
    result = ex.extract(spec, batch)
    assert not result.bad
    assert result.rows is not None
    found: list[dict[str, Any]] = result.rows.to_pylist()
    return found


def part(type_: str, pid: str = "prt_22434f3cb001aIXuDG65xDPf3q", **fields: Any) -> dict[str, Any]:
    return {"id": pid, "sessionID": SES, "messageID": MSG, "type": type_, **fields}


TOKENS = {"total": 2120, "input": 2000, "output": 120, "reasoning": 7, "cache": {"read": 5, "write": 3}}  # fmt: skip
TOKEN_COLS = {
    "tokens_total": 2120,
    "tokens_input": 2000,
    "tokens_output": 120,
    "tokens_reasoning": 7,
    "tokens_cache_read": 5,
    "tokens_cache_write": 3,
}


def test_every_table_has_an_expression_per_column() -> None:
    """Each record table is filled by exactly one spec whose expressions cover its columns."""
    assert sorted(s.table.name for s in SPECS.values()) == sorted(t.name for t in RECORD_TABLES)
    for spec in SPECS.values():
        assert sorted(spec.exprs) == sorted(c.name for c in spec.table.columns)


def test_project_round_trip(extractor: Extractor) -> None:
    """A project's fields land in typed columns and the document in raw."""
    doc = {
        "id": PID,
        "worktree": "/home/dev/project",
        "vcs": "git",
        "name": "Demo",
        "icon": {"color": "blue"},
        "time": {"created": T0, "updated": T0 + 4, "initialized": T0 + 9},
    }
    row = extract_one(extractor, "project", doc, PID)
    assert row["id"] == PID
    assert (row["worktree"], row["vcs"], row["name"]) == ("/home/dev/project", "git", "Demo")
    assert (row["created_at"], row["updated_at"], row["initialized_at"]) == (
        ts(T0),
        ts(T0 + 4),
        ts(T0 + 9),
    )
    assert orjson.loads(row["raw"]) == doc


def test_session_round_trip_takes_project_from_the_path(extractor: Extractor) -> None:
    """A child session: project_id comes from the directory, the JSON's own value stays in raw."""
    doc = {
        "id": CHILD,
        "slug": "tidy-island",
        "version": "1.1.65",
        "projectID": "moved-elsewhere",
        "directory": "/home/dev/project",
        "parentID": SES,
        "title": "Explore tests (@explore subagent)",
        "time": {"created": T0, "updated": T0 + 782, "archived": T0 + 999, "compacting": T0 + 5},
        "summary": {"additions": 12, "deletions": 3, "files": 2},
        "share": {"url": "https://opncd.ai/share/abc"},
    }
    row = extract_one(extractor, "session", doc, CHILD, PID)
    assert row["project_id"] == PID
    assert orjson.loads(row["raw"])["projectID"] == "moved-elsewhere"
    assert (row["parent_id"], row["slug"], row["version"]) == (SES, "tidy-island", "1.1.65")
    assert row["title"] == "Explore tests (@explore subagent)"
    assert row["directory"] == "/home/dev/project"
    assert (row["created_at"], row["updated_at"]) == (ts(T0), ts(T0 + 782))
    assert (row["archived_at"], row["compacting_at"]) == (ts(T0 + 999), ts(T0 + 5))
    assert (row["additions"], row["deletions"], row["files_changed"]) == (12, 3, 2)
    assert row["share_url"] == "https://opncd.ai/share/abc"


def test_assistant_message_round_trip(extractor: Extractor) -> None:
    """Model, agent, cost, every token counter, finish and times of an assistant message."""
    doc = {
        "id": MSG,
        "sessionID": "ses_json_value",
        "role": "assistant",
        "time": {"created": T0, "completed": T0 + 276},
        "parentID": "msg_parent",
        "modelID": "claude-sonnet-4-5",
        "providerID": "anthropic",
        "mode": "explore",
        "agent": "explore",
        "path": {"cwd": "/home/dev/project", "root": "/home/dev"},
        "cost": 0.0045,
        "tokens": TOKENS,
        "finish": "tool-calls",
        "variant": "high",
    }
    row = extract_one(extractor, "message", doc, MSG, SES)
    assert row["session_id"] == SES
    assert (row["role"], row["parent_id"], row["agent"], row["mode"]) == (
        "assistant",
        "msg_parent",
        "explore",
        "explore",
    )
    assert (row["provider_id"], row["model_id"], row["variant"]) == (
        "anthropic",
        "claude-sonnet-4-5",
        "high",
    )
    assert (row["created_at"], row["completed_at"], row["duration_ms"]) == (
        ts(T0),
        ts(T0 + 276),
        276,
    )
    assert row["cost"] == 0.0045
    assert {k: row[k] for k in TOKEN_COLS} == TOKEN_COLS
    assert (row["finish"], row["cwd"], row["root"]) == (
        "tool-calls",
        "/home/dev/project",
        "/home/dev",
    )
    assert (row["is_summary"], row["title"], row["error_name"]) == (None, None, None)


def test_user_message_and_failed_message(extractor: Extractor) -> None:
    """A user message's model, agent and turn title; a failed message's error; legacy mode."""
    user = {
        "id": "msg_user",
        "sessionID": SES,
        "role": "user",
        "time": {"created": T0},
        "summary": {"title": "Add greeting helper", "diffs": [{"file": "a.py", "before": "", "after": "x"}]},
        "agent": "build",
        "model": {"providerID": "mock", "modelID": "mock-1"},
    }  # fmt: skip
    failed = {
        "id": "msg_failed",
        "sessionID": SES,
        "role": "assistant",
        "time": {"created": T0},
        "error": {"name": "APIError", "data": {"message": "Invalid request", "statusCode": 400}},
        "modelID": "m",
        "providerID": "p",
        "mode": "build",
        "summary": True,
        "cost": 0,
        "tokens": {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}},
    }
    u, f = extract(extractor, "message", [(pretty(user), "msg_user", SES), (pretty(failed), "msg_failed", SES)])  # fmt: skip
    assert (u["title"], u["agent"], u["provider_id"], u["model_id"]) == (
        "Add greeting helper",
        "build",
        "mock",
        "mock-1",
    )
    assert (u["completed_at"], u["duration_ms"], u["cost"]) == (None, None, None)
    assert (f["error_name"], f["error_message"]) == ("APIError", "Invalid request")
    assert (f["agent"], f["is_summary"], f["tokens_total"], f["finish"]) == (
        "build",
        True,
        None,
        None,
    )


def tool(status: str, name: str = "read", **state: Any) -> dict[str, Any]:
    return part("tool", callID="call_9_0", tool=name, state={"status": status, **state})


def test_tool_part_states(extractor: Extractor) -> None:
    """Pending, running, completed and error tool parts fill status, input, title, error, times."""
    inp = {"filePath": "/home/dev/project/app.py"}
    docs = {
        "pending": tool("pending", input={}, raw=""),
        "running": tool("running", name="bash", input={"command": "sleep 30"},
                        metadata={"output": "start\n"}, time={"start": T0}),
        "completed": tool("completed", input=inp, output="ok", title="app.py",
                          metadata={"truncated": False}, time={"start": T0, "end": T0 + 17, "compacted": T0 + 99}),
        "error": tool("error", input=inp, error="Error: File not found", time={"start": T0, "end": T0 + 6}),
    }  # fmt: skip
    files = [(pretty({**d, "id": f"prt_{k}"}), f"prt_{k}", MSG) for k, d in docs.items()]
    rows = {r["id"].removeprefix("prt_"): r for r in extract(extractor, "part", files)}
    for status, row in rows.items():
        assert (row["type"], row["tool_status"], row["call_id"]) == ("tool", status, "call_9_0")
        assert (row["message_id"], row["session_id"]) == (MSG, SES)
        assert orjson.loads(row["tool_input"]) == docs[status]["state"]["input"]
    assert rows["pending"]["start_at"] is None
    assert (rows["running"]["tool"], rows["running"]["start_at"], rows["running"]["end_at"]) == (
        "bash",
        ts(T0),
        None,
    )
    done = rows["completed"]
    assert (done["title"], done["end_at"], done["duration_ms"], done["compacted_at"]) == (
        "app.py",
        ts(T0 + 17),
        17,
        ts(T0 + 99),
    )
    assert (rows["error"]["error"], rows["error"]["duration_ms"]) == ("Error: File not found", 6)


def test_task_tool_part_gives_the_delegation(extractor: Extractor) -> None:
    """A task tool part names the child session, the sub-agent, the prompt and description."""
    doc = tool(
        "completed",
        name="task",
        input={"description": "Explore tests", "prompt": "Find the tests.", "subagent_type": "explore"},
        output="task_id: …",
        title="Explore tests",
        metadata={"sessionId": CHILD, "model": {"modelID": "m", "providerID": "p"}},
        time={"start": T0, "end": T0 + 696},
    )  # fmt: skip
    row = extract_one(extractor, "part", doc, doc["id"], MSG)
    assert (row["task_session_id"], row["subagent_type"]) == (CHILD, "explore")
    assert (row["prompt"], row["description"], row["duration_ms"]) == (
        "Find the tests.",
        "Explore tests",
        696,
    )


def test_every_other_part_type(extractor: Extractor) -> None:
    """Every other part type fills its columns and keeps the whole document in raw."""
    docs = [
        part("text", text="Hi", synthetic=True, time={"start": T0, "end": T0 + 2}),
        part("reasoning", text="Plan.", metadata={"anthropic": {"signature": "x"}}, time={"start": T0, "end": T0 + 45}),
        part("step-start", snapshot="be7558ce"),
        part("step-finish", reason="tool-calls", snapshot="be7558cf", cost=0.0078, tokens=TOKENS),
        part("patch", hash="890402b9", files=["/home/dev/project/app.py"]),
        part("file", mime="image/png", filename="shot.png", url="data:image/png;base64,iVBORw0KGgo="),
        part("agent", name="explore", source={"value": "@explore", "start": 49, "end": 57}),
        part("subtask", prompt="Review app.py.", description="review changes", agent="explore",
             model={"providerID": "mock", "modelID": "mock-1"}, command="review"),
        part("compaction", auto=True),
        part("retry", attempt=1, error={"name": "APIError", "data": {"message": "Overloaded", "statusCode": 529}},
             time={"created": T0}),
        part("snapshot", snapshot="abc123"),
    ]  # fmt: skip
    files = []
    for i, d in enumerate(docs):
        d["id"] = f"prt_{i:02d}"
        files.append((pretty(d), d["id"], MSG))
    rows = {r["type"]: r for r in extract(extractor, "part", files)}
    assert len(rows) == len(docs)
    for d in docs:
        assert orjson.loads(rows[d["type"]]["raw"]) == d
    assert (rows["text"]["synthetic"], rows["text"]["duration_ms"]) == (True, 2)
    assert (rows["reasoning"]["start_at"], rows["reasoning"]["end_at"]) == (ts(T0), ts(T0 + 45))
    assert rows["step-start"]["snapshot"] == "be7558ce"
    finish = rows["step-finish"]
    assert (finish["reason"], finish["cost"], finish["snapshot"]) == (
        "tool-calls",
        0.0078,
        "be7558cf",
    )
    assert {k: finish[k] for k in TOKEN_COLS} == TOKEN_COLS
    assert rows["patch"]["snapshot"] == "890402b9"
    assert (rows["file"]["mime"], rows["file"]["filename"]) == ("image/png", "shot.png")
    assert rows["agent"]["agent"] == "explore"
    sub = rows["subtask"]
    assert (
        sub["agent"],
        sub["subagent_type"],
        sub["prompt"],
        sub["description"],
        sub["command"],
    ) == (
        "explore",
        "explore",
        "Review app.py.",
        "review changes",
        "review",
    )
    assert (rows["retry"]["error"], rows["retry"]["start_at"]) == ("Overloaded", ts(T0))
    assert rows["snapshot"]["snapshot"] == "abc123"


def test_todo_items_become_rows(extractor: Extractor) -> None:
    """A todo file gives one row per item, in order, keyed by the session id of its file name."""
    todos = [
        {"id": "1", "content": "Inspect layout", "status": "in_progress", "priority": "high"},
        {"content": "Add helper", "status": "pending", "priority": "medium", "id": "2"},
    ]
    items = array_items(SPECS["todo"], pretty(todos))
    assert items is not None
    batch = pa.table(
        {
            "file_path": [f"/s/todo/{SES}.json"] * 2,
            "key": [SES] * 2,
            "parent": pa.array([None, None], pa.string()),
            "position": [pos for pos, _ in items],
            "content": [text.decode() for _, text in items],
        }
    )
    result = extractor.extract(SPECS["todo"], batch)
    assert result.rows is not None
    rows = result.rows.to_pylist()
    assert [(r["session_id"], r["position"], r["id"], r["status"]) for r in rows] == [
        (SES, 0, "1", "in_progress"),
        (SES, 1, "2", "pending"),
    ]
    assert [orjson.loads(r["raw"]) for r in rows] == todos


def test_session_diff_items_keep_the_last_of_a_repeated_file() -> None:
    """Diff items are keyed by file; a file listed twice keeps its last entry."""
    diffs = [
        {"file": "a.py", "before": "", "after": "x\n", "additions": 1, "deletions": 0, "status": "added"},
        {"file": "b.py", "before": "y", "after": "", "additions": 0, "deletions": 1},
        {"file": "a.py", "before": "", "after": "z\n", "additions": 2, "deletions": 0},
    ]  # fmt: skip
    items = array_items(SPECS["session_diff"], pretty(diffs))
    assert items is not None
    assert sorted((pos, orjson.loads(text)["file"]) for pos, text in items) == [
        (1, "b.py"),
        (2, "a.py"),
    ]
    assert array_items(SPECS["session_diff"], b"[]") == []


@pytest.mark.parametrize(
    ("data", "file_type", "message"),
    [
        (b"", "part", "empty file"),
        (b'{\n  "id": "prt_1",\n  "type": "te', "part", "truncated JSON at byte 32"),
        (b"\0" * 1518, "part", "NUL bytes"),
        (b'{"id": "prt_1"}\0\0', "part", "NUL bytes at byte 15"),
        (b'{"id": "\xff\xfe"}', "part", "invalid UTF-8 at byte 8"),
        ('{"id": "é'.encode()[:-1], "part", "truncated JSON at byte 9"),
        (b'[{"id": "prt_1"}]', "part", "expected an object, got array"),
        (b'"prt_1"', "part", "expected an object, got string"),
        (b'{"type": "text"}', "part", 'missing "id"'),
        (b'{"id": "prt_2"}', "part", '"id" "prt_2" does not match the file name'),
        (b'{"id": "prt_1"}\n}', "part", "trailing data after JSON at byte 16"),
        ('{"t": "日本"} x'.encode(), "part", "trailing data after JSON at byte 16"),
        (b'{"id": "prt_1",, }', "part", "invalid JSON at byte 15: unexpected character, expected a string key"),
        (b'{"id": "x"}', "todo", "expected an array, got object"),
        (b'[{"id": "1"}, 3]', "todo", "item 1: expected an object, got number"),
        (b'[{"status": "added"}]', "session_diff", 'item 0: missing "file"'),
    ],
)  # fmt: skip
def test_diagnose_says_what_is_wrong(data: bytes, file_type: str, message: str) -> None:
    """Each kind of broken file gets a message naming the problem and where it is."""
    assert diagnose(data, SPECS[file_type], "prt_1") == message


def test_bad_documents_are_reported_not_extracted(extractor: Extractor) -> None:
    """Invalid, non-object and mismatched-id documents give no rows; the rest are extracted."""
    good = pretty(part("text", pid="prt_ok", text="fine"))
    files = [
        (b'{"id": "prt_bad", "type": ', "prt_bad"),
        (good, "prt_ok"),
        (b'[{"id": "prt_arr"}]', "prt_arr"),
        (pretty(part("text", pid="prt_other")), "prt_mismatch"),
        (b"null", "prt_null"),
    ]
    batch = pa.table(
        {
            "file_path": [f"/s/part/m/{k}.json" for _, k in files],
            "key": [k for _, k in files],
            "parent": ["m"] * len(files),
            "content": [d.decode() for d, _ in files],
        }
    )
    result = extractor.extract(SPECS["part"], batch)
    assert dict(result.bad) == {0: None, 2: None, 3: None, 4: None}
    assert result.rows is not None
    assert result.rows.column("id").to_pylist() == ["prt_ok"]


def test_out_of_range_times_and_odd_types_do_not_fail(extractor: Extractor) -> None:
    """Absurd timestamps become NULL and wrongly typed values are coerced or NULL."""
    doc = part(
        "step-finish",
        cost="free",
        tokens={"input": 1e30, "output": "12", "cache": 5},
        time={"start": 10**17, "end": -(10**17)},
    )
    row = extract_one(extractor, "part", doc, doc["id"], MSG)
    assert (row["start_at"], row["end_at"], row["duration_ms"]) == (None, None, None)
    assert (row["cost"], row["tokens_input"], row["tokens_output"]) == (None, None, 12)


def test_a_batch_duckdb_rejects_is_retried_file_by_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch DuckDB rejects is retried file by file; only the failing file is reported."""
    extractor = Extractor(python_max_rows=0)
    run = Extractor._run

    def flaky(self: Extractor, spec: RecordSpec, batch: pa.Table) -> Extracted:
        if "prt_boom" in batch.column("key").to_pylist():
            raise duckdb.InvalidInputException("boom")
        return run(self, spec, batch)

    monkeypatch.setattr(Extractor, "_run", flaky)
    keys = ["prt_a", "prt_boom", "prt_b"]
    batch = pa.table(
        {
            "file_path": [f"/s/part/m/{k}.json" for k in keys],
            "key": keys,
            "parent": ["m"] * 3,
            "content": [pretty(part("text", pid=k)).decode() for k in keys],
        }
    )
    result = extractor.extract(SPECS["part"], batch)
    assert dict(result.bad) == {1: "cannot extract: boom"}
    assert result.rows is not None
    assert result.rows.column("id").to_pylist() == ["prt_a", "prt_b"]
    extractor.close()
