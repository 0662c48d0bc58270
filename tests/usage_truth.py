"""The usage figures of a storage tree computed in Python from its JSON files (`Truth`), and the
trees they are checked on: independent of the views' SQL, for `test_views` and `test_report`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from indexer_service.demo.synthetic import TreeSpec, generate_tree
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.store.database import Database
from indexer_service.store.views import PROMPT_SUMMARY_CHARS

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
            result = loader.write(loader.prepare(files))
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
