"""The record specs: for each OpenCode storage file type, the table its files fill and the
expression (SQL, and where it can, Python) that fills each column."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from indexer_service.extract.fields import Fields, Value
from indexer_service.store.schema import RECORD_TABLES, Table

__all__ = ["SPECS", "RecordSpec"]

_TABLES = {t.name: t for t in RECORD_TABLES}


@dataclass(frozen=True)
class RecordSpec:
    """How the files of one storage directory become rows of one table."""

    file_type: str
    table: Table
    struct: Mapping[str, Any]
    """``from_json`` structure of the document (or of one item, for array files)."""
    exprs: Mapping[str, str]
    """Column name -> SQL expression; every column of ``table`` has one. Expressions see ``j``
    (the parsed struct), ``file_path``, ``key`` (the file name without ``.json``), ``parent``
    (the id of the enclosing directory: ids of parents come from the path, like OpenCode's own
    importer), ``raw`` (the JSON text) and, for array files, ``position``."""
    array: bool = False
    """The file is a JSON array, one row per item (todo, session_diff)."""
    item_key: str | None = None
    """Array files: the item field that, with the session id, keys a row (deduplicated)."""
    meaning: Mapping[str, Value] | None = None
    """`Fields.meaning`: the column expressions again, in Python (see `python_rows`)."""

    def __post_init__(self) -> None:
        if sorted(c.name for c in self.table.columns) != sorted(self.exprs):
            raise ValueError(f"{self.table.name}: expressions do not match the columns")

    @cached_property
    def plan(self) -> dict[str, Value | str] | None:
        """Column -> how `python_rows` fills it, or None if some column needs SQL."""
        plan: dict[str, Value | str] = {}
        for col in self.table.columns:
            expr = self.exprs[col.name]
            if expr in _SOURCES:
                plan[col.name] = expr
            elif self.meaning is not None and expr in self.meaning:
                plan[col.name] = self.meaning[expr]
            else:
                return None
        return plan


_SOURCES = ("parent", "key", "position::INTEGER", "file_path", "raw")
"""Column expressions that are batch columns, not document fields."""


_FILE = {"file_path": "file_path", "raw": "raw"}


def _project() -> RecordSpec:
    f = Fields()
    return RecordSpec("project", _TABLES["projects"], f.struct, {
        "id": f("id"), "worktree": f("worktree"), "vcs": f("vcs"), "name": f("name"),
        "created_at": f.ts("time.created"), "updated_at": f.ts("time.updated"),
        "initialized_at": f.ts("time.initialized"), **_FILE,
    }, meaning=f.meaning)  # fmt: skip


def _session() -> RecordSpec:
    f = Fields()
    return RecordSpec("session", _TABLES["sessions"], f.struct, {
        "id": f("id"), "project_id": "parent", "parent_id": f("parentID"), "slug": f("slug"),
        "version": f("version"), "title": f("title"), "directory": f("directory"),
        "created_at": f.ts("time.created"), "updated_at": f.ts("time.updated"),
        "compacting_at": f.ts("time.compacting"), "archived_at": f.ts("time.archived"),
        "additions": f("summary.additions", "BIGINT"), "deletions": f("summary.deletions", "BIGINT"),
        "files_changed": f("summary.files", "BIGINT"), "share_url": f("share.url"), **_FILE,
    }, meaning=f.meaning)  # fmt: skip


def _message() -> RecordSpec:
    f = Fields()
    created, completed = f("time.created", "BIGINT"), f("time.completed", "BIGINT")
    return RecordSpec("message", _TABLES["messages"], f.struct, {
        "id": f("id"), "session_id": "parent", "role": f("role"), "parent_id": f("parentID"),
        "agent": f.first("agent", "mode", sql_type="VARCHAR"), "mode": f("mode"),
        "provider_id": f.first("providerID", "model.providerID", sql_type="VARCHAR"),
        "model_id": f.first("modelID", "model.modelID", sql_type="VARCHAR"),
        "variant": f("variant"), "created_at": f.ts("time.created"),
        "completed_at": f.ts("time.completed"), "duration_ms": f.between(created, completed),
        "cost": f("cost", "DOUBLE"), **f.tokens(), "finish": f("finish"),
        "error_name": f("error.name"), "error_message": f("error.data.message"),
        # assistant messages: summary is a boolean; user messages: {title, body, diffs}
        "is_summary": f("summary", "BOOLEAN"),
        "title": f.when(f("role"), "user", f.raw_text("summary", "title")),
        "cwd": f("path.cwd"), "root": f("path.root"), **_FILE,
    }, meaning=f.meaning)  # fmt: skip


def _part() -> RecordSpec:
    f = Fields()
    start, end = f.first("state.time.start", "time.start"), f.first("state.time.end", "time.end")
    f("state.input", "JSON")

    def task(field: str) -> str:  # the input of a `task` tool call: a sub-agent delegation
        return f.when(f("tool"), "task", f.text("state.input", field))

    return RecordSpec("part", _TABLES["parts"], f.struct, {
        "id": f("id"), "message_id": "parent", "session_id": f("sessionID"), "type": f("type"),
        "synthetic": f("synthetic", "BOOLEAN"), "call_id": f("callID"), "tool": f("tool"),
        "tool_status": f("state.status"), "tool_input": f("state.input", "JSON"),
        "title": f("state.title"), "error": f.first("state.error", "error.data.message", sql_type="VARCHAR"),
        "start_at": f.ts("state.time.start", "time.start", "time.created"),
        "end_at": f.ts("state.time.end", "time.end"), "compacted_at": f.ts("state.time.compacted"),
        "duration_ms": f.between(start, end), "reason": f("reason"),
        "cost": f("cost", "DOUBLE"), **f.tokens(), "snapshot": f.first("snapshot", "hash", sql_type="VARCHAR"),
        "task_session_id": f("state.metadata.sessionId"),
        "subagent_type": f.coalesce(task("subagent_type"), f.when(f("type"), "subtask", f("agent"))),
        "prompt": f.coalesce(f("prompt"), task("prompt")),
        "description": f.coalesce(f("description"), task("description")),
        "command": f.coalesce(f("command"), task("command")),
        "agent": f.first("agent", "name", sql_type="VARCHAR"), "mime": f("mime"),
        "filename": f("filename"), **_FILE,
    }, meaning=f.meaning)  # fmt: skip


def _todo() -> RecordSpec:
    f = Fields()
    return RecordSpec("todo", _TABLES["todos"], f.struct, {
        "session_id": "key", "position": "position::INTEGER", "id": f("id"),
        "content": f("content"), "status": f("status"), "priority": f("priority"), **_FILE,
    }, array=True, meaning=f.meaning)  # fmt: skip


def _session_diff() -> RecordSpec:
    f = Fields()
    return RecordSpec("session_diff", _TABLES["session_diffs"], f.struct, {
        "session_id": "key", "file": f("file"), "position": "position::INTEGER",
        "status": f("status"), "additions": f("additions", "BIGINT"),
        "deletions": f("deletions", "BIGINT"), **_FILE,
    }, array=True, item_key="file", meaning=f.meaning)  # fmt: skip


SPECS: dict[str, RecordSpec] = {
    s.file_type: s for s in (_project(), _session(), _message(), _part(), _todo(), _session_diff())
}
"""Record specs by file type (the top-level storage directory)."""
