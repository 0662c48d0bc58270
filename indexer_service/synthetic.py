"""Synthetic OpenCode legacy JSON storage trees (opencode 1.0.x-1.1.x) for tests, benchmarks, demos.

Files are written as opencode writes them: ``JSON.stringify(obj, null, 2)`` bytes (2-space indent,
UTF-8, no trailing newline) in zod key order, real ID formats, one assistant message per LLM step,
in place with no temp file. ``root`` is always the ``storage/`` directory itself. The bytes depend
only on the seed and the parameters (no global random state, no wall clock).
"""

from __future__ import annotations

import base64
import enum
import functools
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "DEFAULT_BASE_TIME_MS",
    "LiveWriter",
    "Malformed",
    "TreeSpec",
    "TreeSummary",
    "add_noise",
    "age_tree",
    "corrupt",
    "corrupt_random",
    "generate_tree",
]

Json = dict[str, Any]
Tool = tuple[Json, str, str, Json]  # input, output, title, metadata
DEFAULT_BASE_TIME_MS = 1_760_000_000_000
"""2025-10-09. IDs keep creation order until the 48-bit wrap on 2026-08-14 (~300 days later)."""
_KINDS = frozenset(("project", "session", "message", "part", "todo", "session_diff"))
_B62 = ("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" * 5)[:256].encode()
_CROCKFORD = ("0123456789ABCDEFGHJKMNPQRSTVWXYZ" * 8).encode()  # byte -> byte % 32 (ULID)
_MASK48 = (1 << 48) - 1
_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_INPLACE = os.O_WRONLY | os.O_CREAT  # Bun.write on an existing file: no O_TRUNC, then ftruncate
_INDENT = orjson.OPT_INDENT_2
_WORDS = (
    "index batch store watcher event parse session message part token cost queue flush reader "
    "writer tree node cache limit retry error value result config state loader schema column "
    "row table client server handler router model agent prompt"
).split()
_TITLES = (
    "Fix flaky watcher test", "Add DuckDB loader", "Refactor config parsing", "Explain build failure",
    "Investigate slow startup", "Implement retry with backoff", "Débogage du parseur JSON — v2",
    "Add CLI stats command", "Review PR feedback", "Speed up reconcile scan", "日本語のドキュメント更新",
)  # fmt: skip
_SLUGS = [f"{a}-{b}" for a in ("quick", "tidy", "brave", "calm", "eager", "misty", "proud")
          for b in ("harbor", "island", "falcon", "river", "meadow", "comet", "lantern")]  # fmt: skip
# providerID, modelID, USD per Mtok (input, output, cache read, cache write), emits reasoning
_MODELS: tuple[tuple[str, str, float, float, float, float, bool], ...] = (
    ("anthropic", "claude-sonnet-4-5", 3.0, 15.0, 0.3, 3.75, True),
    ("anthropic", "claude-opus-4-5", 5.0, 25.0, 0.5, 6.25, True),
    ("openai", "gpt-5.1-codex", 1.25, 10.0, 0.125, 0.0, True),
    ("google", "gemini-3-pro-preview", 2.0, 12.0, 0.2, 0.0, False),
    ("opencode", "grok-code", 0.0, 0.0, 0.0, 0.0, False),
)
# (version, level); from level 1: user agent/model, finish, subtask/compaction parts; 2: assistant
# agent; 3: session permission, tool-output truncation; 4: slug; 5: tokens.total. 0: retry parts.
_VERSIONS = (("1.1.65", 5),) * 5 + (("1.1.34", 4), ("1.1.11", 3), ("1.0.185", 2), ("1.0.61", 0))
_TOOLS = dict(bash=34, read=26, edit=14, write=4, grep=9, glob=5, todowrite=5, webfetch=3)
_TOOL_BAG = tuple(itertools.chain.from_iterable([k] * n for k, n in _TOOLS.items()))
_CHILD_BAG = tuple(t for t in _TOOL_BAG if t != "todowrite")  # children may not todowrite
_TOOL_ERRORS = {
    "read": "Error: File not found: {path}",
    "edit": "Error: oldString not found in content",
    "webfetch": "Error: Request failed with status code: 404",
    "bash": "Tool execution aborted",
}
_DENY = ("todowrite", "todoread", "task")
_CONTEXT_LIMIT = 150_000  # tokens: past it the next turn is an automatic compaction
_ZERO_TOKENS: Json = {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}}
_CONTINUE = "Continue if you have next steps, or stop and ask for clarification if you are unsure how to proceed."
_SUMMARIZE = "Summarize the task tool output above and continue with your task."
_COMMANDS = (("pytest -q", "Run the test suite"), ("git status", "Show git status"),
             ("ls -la src", "List files"), ("ruff check .", "Lint the package"))  # fmt: skip
_ERROR_INPUTS: dict[str, Json] = {
    "bash": {"command": "make test", "description": "Run the test suite"},
    "webfetch": {"url": "https://example.com/missing", "format": "markdown"},
}


class _Lines:
    """A pre-generated text blob; ``take`` slices ``n`` whole lines out of it."""

    def __init__(self, lines: list[str]) -> None:
        self.text = "".join(line + "\n" for line in lines)
        self.starts = list(itertools.accumulate((len(x) + 1 for x in lines), initial=0))

    def take(self, r: random.Random, n: int) -> str:
        n = min(n, len(self.starts) - 1)
        i = r.randrange(len(self.starts) - n)
        return self.text[self.starts[i] : self.starts[i + n]]


@dataclass(frozen=True)
class _Corpus:
    code: _Lines
    shell: _Lines
    sentences: tuple[str, ...]
    b64: str

    def prose(self, r: random.Random, n: int) -> str:
        return " ".join(r.choices(self.sentences, k=n))


@functools.cache
def _corpus() -> _Corpus:
    """Build the shared text blobs once (fixed seed: the same text for every tree)."""
    r = random.Random(0x5EED)
    code, shell, sentences = [], [], []
    for n in range(8000):
        a, b, c = r.choice(_WORDS), r.choice(_WORDS), r.choice(_WORDS)
        code.append(r.choice((
            f"def {a}_{b}(self, {c}: int) -> None:", f"    {a} = self.{b}.get({c!r})",
            f"    return {a}_{b}", f"class {a.title()}{b.title()}:", f"    if not {a}:",
            f'        raise ValueError("bad {a}: {b}")', f"from .{a} import {b}", "",
            f"    for {a} in {b}s:", f"        {a}.append({c})", f"# {a} {b} → {c} (naïve)",
        )))  # fmt: skip
        shell.append(r.choice((
            f"tests/test_{a}.py::test_{b}_{c} PASSED{' ' * 20}[{n % 100:3d}%]",
            f"{a}/{b}.py:{n % 400 + 1}:{n % 80 + 1}: E501 Line too long ({n % 40 + 100} > 100)",
            f"\x1b[32m✓\x1b[0m {a} > {b} {c} ({n % 900} ms)", f"npm warn deprecated {a}-{b}@1.{n % 9}.0",
            f'  File "/home/dev/{a}/{b}.py", line {n % 300 + 1}, in {c}',
            f"-rw-r--r-- 1 dev dev {n * 7 % 90000:6d} Nov 24 10:{n % 60:02d} {a}_{b}.py",
        )))  # fmt: skip
        sentences.append(r.choice((
            f"The {a} {b} now checks the {c} before each flush.",
            f"I'll update `{a}_{b}` so the {c} is not read twice.", f"Tests for {a} pass ✓.",
            f"Next, look at how {b} handles a missing {c} — it may be None.",
            f"Le {a} gère le {b} côté {c}.", f"{a.title()} の {b} を確認しました 🚀",
        )))  # fmt: skip
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + r.randbytes(300_000)
    b64 = base64.b64encode(png).decode()
    return _Corpus(_Lines(code), _Lines(shell), tuple(sentences[:600]), b64)


def _write(path: str, data: bytes, flags: int = _NEW) -> None:
    """Write like Bun.write: no temp file, no rename; mkdir the parents on ENOENT."""
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        done = os.write(fd, data)
        while done < len(data):  # short writes: only on signals or a full disk
            done += os.write(fd, data[done:])
        if not flags & os.O_TRUNC:
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class _Sink:
    """Serialises and writes records; counts files by kind; logs paths when live."""

    def __init__(self, root: Path, live: bool, on_write: Callable[[Path], None] | None) -> None:
        self.root, self.live, self.on_write = str(root), live, on_write
        self.counts: Counter[str] = Counter()
        self.bytes = 0
        self.log: list[Path] = []

    def put(self, rel: str, obj: object, compact: bool = False) -> str:
        path = f"{self.root}/{rel}"
        data = orjson.dumps(obj) if compact else orjson.dumps(obj, option=_INDENT)
        self.raw(path, rel.partition("/")[0], data)
        return path

    def raw(self, path: str, kind: str, data: bytes) -> None:
        _write(path, data, _INPLACE if self.live else _NEW)
        self.counts[kind if kind in _KINDS else "other"] += 1
        self.bytes += len(data)
        if self.live:
            self.log.append(Path(path))
            if self.on_write is not None:
                self.on_write(Path(path))


@dataclass(frozen=True)
class TreeSpec:
    """Shape of a generated tree; the defaults follow the real-world averages of spec §6."""

    sessions: int = 10
    """Top-level sessions; sub-agent children come on top (see ``subagent_ratio``)."""
    seed: int = 0
    messages_per_session: float = 49.0
    """Mean messages per session, children included (about 265 files per session)."""
    subagent_ratio: float = 0.2
    """Approximate share of all sessions that are sub-agent (task tool) children."""
    crashed_ratio: float = 0.05
    """Share of top-level sessions whose last step was cut off (running/pending tools)."""
    error_ratio: float = 0.03
    """Share of user turns whose last assistant message ends in an error."""
    compact_ratio: float = 0.05
    """Share of top-level sessions written as one-line JSON (migrated from 0.x)."""
    share_ratio: float = 0.05
    """Share of top-level sessions that were shared (``share.url`` + ``session_share/``)."""
    projects: int = 3
    """Git projects; a ``global`` project is always added."""
    base_time_ms: int = DEFAULT_BASE_TIME_MS
    max_files: int | None = None
    """Start no new top-level session once this many files are written."""

    @classmethod
    def for_file_count(cls, files: int, seed: int = 0, **overrides: Any) -> TreeSpec:
        """A spec for about ``files`` files (it overshoots by less than one session tree)."""
        return cls(sessions=max(files, 1), seed=seed, max_files=files, **overrides)


@dataclass(frozen=True)
class TreeSummary:
    """What ``generate_tree`` wrote."""

    root: Path
    counts: Mapping[str, int]
    """Files by kind: project, session, message, part, todo, session_diff, other."""
    bytes: int
    session_ids: tuple[str, ...]
    """All sessions, sub-agent children included, in creation order."""

    @property
    def files(self) -> int:
        """All files written."""
        return sum(self.counts.values())


@dataclass
class _Project:
    id: str
    worktree: str
    created: int
    paths: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> current content
    reads: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> read output, preview


@dataclass
class _Ses:
    id: str
    project: _Project
    head: Json  # the keys before time/summary/share, in creation order
    model: tuple[str, str, float, float, float, float, bool]
    level: int
    compact: bool
    directory: str
    agent: str
    created: int
    share: str | None = None
    ctx: int = 9000  # context tokens so far
    messages: int = 0
    stepped: bool = False  # a step finished, so session_diff exists
    user: str = ""  # current user message (LiveWriter)
    # relative path -> [before, after, additions, deletions, status]: whole session, this turn
    diffs: dict[str, list[Any]] = field(default_factory=dict)
    turn: dict[str, list[Any]] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # absolute paths changed in this step
    todos: list[Json] | None = None


def _file_diffs(s: _Ses, diffs: dict[str, list[Any]]) -> list[Json]:
    if s.project.id == "global":  # no snapshots outside git
        return []
    keys = ("before", "after", "additions", "deletions", "status")
    return [{"file": k, **dict(zip(keys, v, strict=True))} for k, v in diffs.items()]


def _api_error(message: str, status: int, retryable: bool) -> Json:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    data = {"message": message, "statusCode": status, "isRetryable": retryable,
            "responseHeaders": {"content-type": "application/json"},
            "responseBody": orjson.dumps(body).decode(),
            "metadata": {"url": "https://api.anthropic.com/v1/messages"}}  # fmt: skip
    return {"name": "APIError", "data": data}


class _Gen:
    """Generator state: one seeded RNG, a fake monotonic clock, the process-global ID counter."""

    def __init__(self, spec: TreeSpec, sink: _Sink) -> None:
        self.spec, self.sink, self.c = spec, sink, _corpus()
        self.r = random.Random(spec.seed)
        self.t, self.id_ms, self.id_n = spec.base_time_ms, -1, 0
        self.session_ids: list[str] = []
        self.text_rate = 0.5  # chance of a text part in a tool-calling step
        self.last_text = ""

    def tick(self, lo: int, hi: int) -> int:
        """Advance the clock by lo..hi ms (random() is cheaper than randint on this hot path)."""
        self.t += lo + int(self.r.random() * (hi - lo + 1))
        return self.t

    def ident(self, prefix: str, descending: bool = False) -> str:
        """``src/id/id.ts``: hex of ms*4096+counter (inverted if descending), 14 base62 chars."""
        if self.t != self.id_ms:
            self.id_ms, self.id_n = self.t, 0
        self.id_n += 1
        v = (self.t * 4096 + self.id_n) & _MASK48
        return f"{prefix}_{v ^ _MASK48 if descending else v:012x}{self.b62(14)}"

    def b62(self, n: int, table: bytes = _B62) -> str:
        return self.r.randbytes(n).translate(table).decode()  # randomByte % 62, as opencode does

    def hex40(self) -> str:
        return f"{self.r.getrandbits(160):040x}"

    def call_id(self, s: _Ses) -> str:
        return f"toolu_01{self.b62(22)}" if s.model[0] == "anthropic" else f"call_{self.b62(24)}"

    def ulid(self) -> str:
        """The ULID that opencode makes itself as callID of a ``/command`` subtask."""
        stamp = bytes(_CROCKFORD[(self.t >> (45 - 5 * i)) & 31] for i in range(10)).decode()
        return stamp + self.b62(16, _CROCKFORD)

    def part(self, s: _Ses, mid: str, type_: str, **fields: Any) -> Json:
        return {
            "id": self.ident("prt"),
            "sessionID": s.id,
            "messageID": mid,
            "type": type_,
        } | fields

    def emit(self, s: _Ses, msg: Json, parts: list[Json]) -> None:
        self.sink.put(f"message/{s.id}/{msg['id']}.json", msg, s.compact)
        for p in parts:
            path = self.sink.put(f"part/{msg['id']}/{p['id']}.json", p, s.compact)
            if p["type"] == "text":
                self.last_text = path

    # -- projects and sessions -----------------------------------------------------------------
    def project(self, git: bool) -> _Project:
        r = self.r
        pid, wt = (self.hex40(), f"/home/dev/{r.choice(_WORDS)}-app") if git else ("global", "/")
        paths = {f"src/{r.choice(_WORDS)}/{r.choice(_WORDS)}.py" for _ in range(30)}
        return _Project(pid, wt, self.t, tuple(sorted(paths)))

    def write_project(self, p: _Project) -> None:
        obj: Json = {"id": p.id, "worktree": p.worktree}
        if p.id != "global":
            obj["vcs"] = "git"
        if len(p.paths) % 2:  # first created by 1.0.x: time before sandboxes
            created = {"created": p.created, "initialized": p.created + 9_000}
            obj["time"] = created | {"updated": self.t}
            obj["sandboxes"] = []
        else:
            obj |= {"sandboxes": [], "time": {"created": p.created, "updated": self.t}}
        self.sink.put(f"project/{p.id}.json", obj)

    def open_session(self, p: _Project, parent: _Ses | None, agent: str, title: str) -> _Ses:
        r = self.r
        version, level = r.choice(_VERSIONS)
        model, compact = r.choice(_MODELS), r.random() < self.spec.compact_ratio
        if parent is not None:
            version, level, model = parent.head["version"], parent.level, parent.model
            compact = parent.compact
        elif compact:
            version, level = "0.5.29", 0
        created, sid = self.t, self.ident("ses", descending=True)
        directory = p.worktree if p.id != "global" else f"/home/dev/{r.choice(_WORDS)}"
        head: Json = {"id": sid}
        if level >= 4:
            head["slug"] = r.choice(_SLUGS)
        head |= {"version": version, "projectID": p.id, "directory": directory}
        if parent is not None:
            head["parentID"] = parent.id
        head["title"] = title or r.choice(_TITLES)
        if parent is not None and level >= 3:
            head["permission"] = [dict(permission=x, action="deny", pattern="*") for x in _DENY]
        s = _Ses(sid, p, head, model, level, compact, directory, agent, created)
        if parent is None and r.random() < self.spec.share_ratio:
            s.share = sid[-8:]
        self.session_ids.append(sid)
        return s

    def close_session(self, s: _Ses) -> None:
        """Write the session file and its session_diff, todo and share files (final state)."""
        diffs = _file_diffs(s, s.diffs)
        obj = {**s.head, "time": {"created": s.created, "updated": self.t}}
        if s.stepped or s.compact:  # migration 1 left compact sessions {additions, deletions}
            adds, dels = sum(d["additions"] for d in diffs), sum(d["deletions"] for d in diffs)
            obj["summary"] = {"additions": adds, "deletions": dels}
            if not s.compact:
                obj["summary"]["files"] = len(diffs)
        if s.share:
            obj["share"] = {"url": f"https://opncd.ai/share/{s.share}"}
        self.sink.put(f"session/{s.project.id}/{s.id}.json", obj, s.compact)
        if s.stepped:
            self.sink.put(f"session_diff/{s.id}.json", diffs)
        if s.todos is not None:
            self.sink.put(f"todo/{s.id}.json", s.todos)
        if s.share:
            share = {"id": s.share, "secret": f"{self.r.getrandbits(128):032x}", **obj["share"]}
            self.sink.put(f"session_share/{s.id}.json", share)

    def budget(self) -> int:
        return max(2, round(self.r.gammavariate(2.0, self.spec.messages_per_session / 2)))

    def session(self, p: _Project, crash: bool = False) -> _Ses:
        """Generate a top-level session (and its sub-agent children) and write its files."""
        r, spec = self.r, self.spec
        s = self.open_session(p, None, "plan" if r.random() < 0.1 else "build", "")
        budget = self.budget()
        children = spec.subagent_ratio / max(1e-9, 1 - spec.subagent_ratio)
        while s.messages < budget:
            steps = min(r.randint(1, 14), max(1, budget - s.messages - 1))
            last = s.messages + steps + 1 >= budget
            end = "error" if r.random() < spec.error_ratio else "stop"
            end = "crash" if crash and last else end
            self.turn(s, steps, r.random() < children * 8.5 / budget, end)  # ~8.5 messages/turn
        self.close_session(s)
        return s

    def child_session(self, parent: _Ses, agent: str, title: str, prompt: str) -> _Ses:
        """A sub-agent session: one prompt, then all its steps."""
        s = self.open_session(parent.project, parent, agent, title)
        self.turn(s, self.budget() - 1, False, prompt=prompt)
        self.close_session(s)
        return s

    # -- turns and steps (spec §5.4 "Conversation patterns") -----------------------------------
    def open_turn(self, s: _Ses) -> tuple[str, int]:
        created = self.tick(3_000, 120_000)
        s.turn, s.messages = {}, s.messages + 1
        return self.ident("msg"), created

    def user_message(self, s: _Ses, mid: str, created: int, summary: bool = True) -> Json:
        msg: Json = {"id": mid, "sessionID": s.id, "role": "user", "time": {"created": created}}
        if summary and (s.turn or s.level >= 1):
            msg["summary"] = {"title": self.r.choice(_TITLES), "diffs": _file_diffs(s, s.turn)}
        if s.level >= 1:
            msg |= {"agent": s.agent, "model": {"providerID": s.model[0], "modelID": s.model[1]}}
        if "parentID" in s.head:
            msg["tools"] = dict.fromkeys(_DENY, False)
        return msg

    def user_parts(self, s: _Ses, mid: str, kind: str, agent: str, prompt: str) -> list[Json]:
        r, c, part = self.r, self.c, self.part
        text = prompt or c.prose(r, r.randint(1, 4))
        if kind == "subtask":
            model = {"providerID": s.model[0], "modelID": s.model[1]}
            sub = {"prompt": text, "description": "review changes", "agent": agent, "model": model}
            return [part(s, mid, "subtask", **sub, command="review")]
        if kind == "compaction":
            return [part(s, mid, "compaction", auto=s.ctx > _CONTEXT_LIMIT)]
        at = {"agent": agent, "file": r.choice(s.project.paths)}.get(kind, "")
        parts = [part(s, mid, "text", text=f"{text} @{at}" if at else text)]
        src = {"value": f"@{at}", "start": len(text) + 1, "end": len(text) + 2 + len(at)}
        if kind == "agent":
            note = f" Use the above message and context to generate a prompt and call the task tool with subagent: {agent}"
            parts.append(part(s, mid, "agent", name=agent, source=src))
            parts.append(part(s, mid, "text", text=note, synthetic=True))
        elif kind == "file":
            inp, out, _, _ = self.t_read(s, at)
            call = f"Called the Read tool with the following input: {orjson.dumps(inp).decode()}"
            parts.append(part(s, mid, "text", text=call, synthetic=True))
            parts.append(part(s, mid, "text", text=out, synthetic=True))
            url, src = f"file://{inp['filePath']}", {"text": src, "type": "file", "path": at}
            name = at.rsplit("/")[-1]
            file = {"mime": "text/plain", "filename": name, "url": url, "source": src}
            parts.append(part(s, mid, "file", **file))
        elif kind == "image":
            url = "data:image/png;base64," + c.b64[: r.randint(500, 60_000) * 4]
            parts.append(part(s, mid, "file", mime="image/png", filename="screenshot.png", url=url))
        return parts

    def turn(self, s: _Ses, steps: int, child: bool, end: str = "stop", prompt: str = "") -> None:
        """A user message with its parts, then the assistant steps; ``end`` is the last step."""
        r = self.r
        agent = r.choice(("explore", "general"))
        kind = "plain" if prompt else r.choice(("file",) * 8 + ("image",) * 4 + ("plain",) * 88)
        if child:
            kind = "subtask" if s.level >= 1 and r.random() < 0.3 else r.choice(("agent", "task"))
        elif s.level >= 1 and s.messages > 10:  # auto past the context limit, else rarely by hand
            kind = "compaction" if s.ctx > _CONTEXT_LIMIT or r.random() < 0.02 else kind
        umid, created = self.open_turn(s)
        parts = self.user_parts(s, umid, kind, agent, prompt)
        parent, task = umid, agent if kind in ("agent", "task") else None
        if kind == "compaction":
            self.step(s, umid, "compaction")
            s.ctx = 20_000
            parent = self.synthetic_user(s, _CONTINUE) if parts[0]["auto"] else ""
        elif kind == "subtask":  # an assistant message holding only the task tool
            acreated = self.tick(50, 500)
            amid = self.ident("msg")
            s.messages += 1
            tool = self.part(s, amid, "tool", callID=self.ulid(), tool="task")
            tool["state"] = self.tool_state(s, "task", agent)
            msg = self.assistant(s, amid, umid, acreated, agent)
            msg["time"]["completed"] = self.t
            self.emit(s, msg, [tool])
            parent = self.synthetic_user(s, _SUMMARIZE)
        for i in range(steps if parent else 0):
            kind = end if i == steps - 1 and not (task and i == 0 and end == "stop") else "tools"
            self.step(s, parent, kind, task if i == 0 else None)
        self.emit(s, self.user_message(s, umid, created, summary=end != "crash"), parts)

    def synthetic_user(self, s: _Ses, text: str) -> str:
        created = self.tick(5, 50)
        mid = self.ident("msg")
        s.messages += 1
        part = self.part(s, mid, "text", text=text, synthetic=True)
        self.emit(s, self.user_message(s, mid, created, summary=False), [part])
        return mid

    def assistant(
        self, s: _Ses, mid: str, parent: str, created: int, agent: str, error: Json | None = None
    ) -> Json:
        """An assistant message as created: zero cost and tokens, not completed."""
        msg: Json = {"id": mid, "sessionID": s.id, "role": "assistant"}
        msg["time"] = {"created": created}
        if error is not None:
            msg["error"] = error
        msg |= {"parentID": parent, "modelID": s.model[1], "providerID": s.model[0], "mode": agent}
        if s.level >= 2:
            msg["agent"] = agent
        msg["path"] = {"cwd": s.directory, "root": s.project.worktree}
        if agent == "compaction":
            msg["summary"] = True
        return msg | {"cost": 0, "tokens": _ZERO_TOKENS}

    def step(self, s: _Ses, parent: str, kind: str = "tools", task: str | None = None) -> None:
        """One assistant message: step-start, [reasoning], [text], tool x k, step-finish, [patch].

        ``kind``: "tools" (finish "tool-calls"), "stop", "compaction" (the summary), "error"
        (an APIError, no step-finish) or "crash" (cut off: not completed, tools left running).
        """
        created = self.tick(200, 3_000)
        mid, s.changed = self.ident("msg"), []
        s.messages += 1
        snap = {"snapshot": self.hex40()} if s.project.id != "global" else {}
        parts = self.opening(s, mid, snap, kind)
        for j, name in enumerate(self.tool_names(s, kind, task)):
            self.tick(10, 400)
            p = self.part(s, mid, "tool", callID=self.call_id(s), tool=name)
            p["state"] = self.cut_off(j) if kind == "crash" else self.tool_state(s, name, task)
            parts.append(p)
        agent = "compaction" if kind == "compaction" else s.agent
        error = self.error() if kind == "error" else None
        msg = self.assistant(s, mid, parent, created, agent, error)
        if kind == "error":
            msg["time"]["completed"] = self.tick(100, 30_000)
        elif kind != "crash":
            tokens, cost = self.usage(s)
            reason = "tool-calls" if kind == "tools" else "stop"
            self.tick(5, 200)
            fin = {"reason": reason, **snap, "cost": cost, "tokens": tokens}
            parts.append(self.part(s, mid, "step-finish", **fin))
            if s.changed and snap:
                files = sorted(set(s.changed))
                parts.append(self.part(s, mid, "patch", hash=snap["snapshot"], files=files))
            msg["time"]["completed"] = self.tick(1, 30)
            msg |= {"cost": cost, "tokens": tokens}  # existing keys: their position stays
            if s.level >= 1:
                msg["finish"] = reason
            s.stepped = True
        self.emit(s, msg, parts)

    def opening(self, s: _Ses, mid: str, snap: Json, kind: str) -> list[Json]:
        """The parts before the tools: [retry], step-start, [reasoning], [text]."""
        r, c = self.r, self.c
        parts = []
        if s.level == 0 and r.random() < 0.1:  # retry parts were written up to 1.0.61
            err = _api_error("Overloaded", 529, True)
            parts.append(self.part(s, mid, "retry", attempt=1, error=err, time={"created": self.t}))
            self.tick(1_000, 8_000)
        parts.append(self.part(s, mid, "step-start", **snap))
        if s.model[6] and kind != "compaction" and r.random() < 0.4:
            start = self.tick(100, 900)
            p = self.part(s, mid, "reasoning", text=c.prose(r, r.randint(1, 5)))
            if meta := self.provider_meta(s, reasoning=True):
                p["metadata"] = meta
            p["time"] = {"start": start, "end": self.tick(200, 5_000)}
            parts.append(p)
        if kind in ("stop", "compaction") or r.random() < self.text_rate:
            start = self.tick(100, 900)
            text = c.prose(r, 30 if kind == "compaction" else r.randint(1, 4))
            p = self.part(s, mid, "text", text=text)
            now = self.tick(200, 20_000)  # text-end resets time to {now, now}
            p["time"] = {"start": start} if kind == "crash" else {"start": now, "end": now}
            if meta := self.provider_meta(s, reasoning=False):
                p["metadata"] = meta
            parts.append(p)
        return parts

    def tool_names(self, s: _Ses, kind: str, task: str | None) -> list[str]:
        r = self.r
        if kind == "crash":  # the first left running, the others pending
            return ["bash", *(["read"] * r.randint(0, 2))]
        names = ["task"] if task else []
        if kind == "tools":
            bag = _CHILD_BAG if "parentID" in s.head else _TOOL_BAG
            extra = r.randint(1, 4) if r.random() < 0.35 else 0  # parallel tool calls
            names += [r.choice(bag) for _ in range(1 + extra)]
        return names

    def usage(self, s: _Ses) -> tuple[Json, float]:
        """Tokens and cost of one step; its message repeats the same values."""
        r = self.r
        _, _, p_in, p_out, p_read, p_write, thinks = s.model
        out, reasoning = r.randint(15, 1_800), r.randint(0, 1_200) if thinks else 0
        read = s.ctx if p_read else 0
        write = r.randint(200, 6_000) if p_write else 0
        inp = r.randint(2, 2_500) + (0 if p_read else s.ctx)
        s.ctx += out + write + r.randint(100, 3_000)
        tokens: Json = {"total": inp + out + reasoning + read + write} if s.level >= 5 else {}
        tokens |= {"input": inp, "output": out, "reasoning": reasoning}
        tokens["cache"] = {"read": read, "write": write}
        cost = (inp * p_in + (out + reasoning) * p_out + read * p_read + write * p_write) / 1e6
        return tokens, round(cost, 8) or 0  # JSON.stringify writes 0, not 0.0

    def error(self) -> Json:
        if self.r.random() < 0.3:
            return {
                "name": "MessageAbortedError",
                "data": {"message": "The operation was aborted."},
            }
        return _api_error("Invalid request: text content blocks must be non-empty", 400, False)

    def provider_meta(self, s: _Ses, reasoning: bool) -> Json | None:
        r, k = self.r, self.r.randrange(100, 300_000)
        blob = self.c.b64[k : k + r.randint(300, 1_500)]
        if s.model[0] == "anthropic" and reasoning:
            return {"anthropic": {"signature": blob}}
        if s.model[0] != "openai":
            return None
        meta: Json = {"itemId": f"{'rs' if reasoning else 'msg'}_{r.getrandbits(192):048x}"}
        if reasoning:
            meta["reasoningEncryptedContent"] = "gAAAAA" + blob
        return {"openai": meta}

    # -- tools (spec §5.5) ---------------------------------------------------------------------
    def tool_state(self, s: _Ses, name: str, agent: str | None) -> Json:
        """A finished tool: completed, or error for ~5% of the tools that can fail."""
        r, start = self.r, self.t
        if name in _TOOL_ERRORS and r.random() < 0.05:
            path = f"{s.directory}/{r.choice(s.project.paths)}"
            inp = _ERROR_INPUTS.get(name, {"filePath": path})
            if name == "edit":
                inp = inp | {"oldString": "pass", "newString": "return None"}
            state = {"status": "error", "input": inp, "error": _TOOL_ERRORS[name].format(path=path)}
            return state | {"time": {"start": start, "end": self.tick(2, 300)}}
        tool: Callable[[_Ses], Tool] = getattr(self, f"t_{name}")
        inp, out, title, meta = self.t_task(s, agent or "explore") if name == "task" else tool(s)
        meta.setdefault("truncated", False)
        if len(out) > 51_200 and s.level >= 3:  # Truncate.output: 50 KB, full text saved aside
            path = f"/home/dev/.local/share/opencode/tool-output/{self.ident('tool')}"
            more = f"\n\n...{len(out) - 51_200} bytes truncated...\n\nFull output saved to: {path}"
            out = out[:51_200] + more
            meta |= {"truncated": True, "outputPath": path}
        state = {"status": "completed", "input": inp, "output": out, "title": title}
        return state | {"metadata": meta, "time": {"start": start, "end": self.tick(20, 15_000)}}

    def cut_off(self, j: int) -> Json:
        """Tools of a crashed step: the first running, with the bash output so far, then pending."""
        if j:
            return {"status": "pending", "input": {}, "raw": ""}
        desc, out = "Wait for the build", self.c.shell.take(self.r, self.r.randint(1, 30))
        state = {"status": "running", "input": {"command": "make build", "description": desc}}
        return state | {"metadata": {"output": out, "description": desc}, "time": {"start": self.t}}

    def content(self, s: _Ses, rel: str) -> str:
        files = s.project.files
        if rel not in files:
            files[rel] = self.c.code.take(self.r, self.r.randint(15, 300))
        return files[rel]

    def touch(self, s: _Ses, rel: str, before: str, after: str, adds: int, dels: int) -> None:
        """Record a file change in the project, in session and turn diffs, and in this step."""
        path, status = f"{s.directory}/{rel}", "modified" if before else "added"
        s.project.files[rel] = after
        s.project.reads.pop(path, None)
        for diffs in (s.diffs, s.turn):
            if (d := diffs.get(rel)) is None:
                diffs[rel] = [before, after, adds, dels, status]
            else:
                d[1], d[2], d[3] = after, d[2] + adds, d[3] + dels
        s.changed.append(path)

    def t_bash(self, s: _Ses) -> Tool:
        r, size = self.r, self.r.random()
        n = r.randint(1, 40) if size < 0.7 else r.randint(40, 400)
        if size > 0.93:  # a few big outputs: tens of KB, truncated from 1.1.11 on
            n = r.randint(600, 1_500)
        out, (cmd, desc) = self.c.shell.take(r, n), r.choice(_COMMANDS)
        shown = out if len(out) <= 30_000 else out[:30_000] + "\n\n..."
        meta = {"output": shown, "exit": 0 if r.random() < 0.85 else 1, "description": desc}
        return {"command": cmd, "description": desc}, out, desc, meta

    def t_read(self, s: _Ses, rel: str = "") -> Tool:
        rel = rel or self.r.choice(s.project.paths)
        path = f"{s.directory}/{rel}"
        if (cached := s.project.reads.get(path)) is None:
            lines = self.content(s, rel).splitlines()
            body = "\n".join([f"{i}: {x}" for i, x in enumerate(lines, 1)])
            end = f"(End of file - total {len(lines)} lines)"
            out = f"<path>{path}</path>\n<type>file</type>\n<content>\n{body}\n\n{end}\n</content>"
            cached = s.project.reads[path] = out, "\n".join(lines[:20])
        meta = {"preview": cached[1], "truncated": False, "loaded": []}
        return {"filePath": path}, cached[0], rel, meta

    def t_edit(self, s: _Ses) -> Tool:
        r = self.r
        rel = r.choice(s.project.paths)
        path, before = f"{s.directory}/{rel}", self.content(s, rel)
        lines = before.splitlines(keepends=True)
        i = r.randrange(len(lines))
        k, new = min(r.randint(1, 4), len(lines) - i), self.c.code.take(r, r.randint(1, 8))
        old, m = "".join(lines[i : i + k]), new.count("\n")
        after = "".join(lines[:i]) + new + "".join(lines[i + k :])
        hunk = "".join("-" + x for x in lines[i : i + k])
        hunk += "".join("+" + x for x in new.splitlines(True))
        diff = f"Index: {path}\n{'=' * 67}\n--- {path}\n+++ {path}\n"
        diff += f"@@ -{i + 1},{k} +{i + 1},{m} @@\n{hunk}"
        self.touch(s, rel, before, after, m, k)
        filediff = {"file": path, "before": before, "after": after, "additions": m, "deletions": k}
        meta = {"diagnostics": {}, "diff": diff, "filediff": filediff}
        inp = {"filePath": path, "oldString": old.rstrip("\n"), "newString": new.rstrip("\n")}
        return inp, "Edit applied successfully.", rel, meta

    def t_write(self, s: _Ses) -> Tool:
        r = self.r
        rel = f"src/{r.choice(_WORDS)}/{r.choice(_WORDS)}_{r.randint(2, 99)}.py"
        path, before = f"{s.directory}/{rel}", s.project.files.get(rel, "")
        content = self.c.code.take(r, r.randint(5, 200))
        self.touch(s, rel, before, content, content.count("\n"), before.count("\n"))
        meta = {"diagnostics": {}, "filepath": path, "exists": bool(before)}
        return {"filePath": path, "content": content}, "Wrote file successfully.", rel, meta

    def t_grep(self, s: _Ses) -> Tool:
        r, lines, total = self.r, [], 0
        pattern = r.choice(_WORDS)
        for rel in r.sample(s.project.paths, r.randint(1, 6)):
            hits = self.c.code.take(r, r.randint(1, 5)).splitlines()
            total += len(hits)
            lines += [f"{s.directory}/{rel}:", *(f"  Line {r.randint(1, 300)}: {x}" for x in hits)]
        out = f"Found {total} matches\n" + "\n".join(lines)
        return {"pattern": pattern, "include": "*.py"}, out, pattern, {"matches": total}

    def t_glob(self, s: _Ses) -> Tool:
        hits = self.r.sample(s.project.paths, self.r.randint(1, len(s.project.paths)))
        out = "\n".join(f"{s.directory}/{x}" for x in hits)
        return {"pattern": "**/*.py", "path": s.directory}, out, "src", {"count": len(hits)}

    def t_todowrite(self, s: _Ses) -> Tool:
        r, todos = self.r, []
        n, done = r.randint(2, 7), r.randint(0, 7)
        for i in range(n):
            status = "completed" if i < done else "in_progress" if i == done else "pending"
            status = "cancelled" if i == n - 1 and r.random() < 0.1 else status
            item = {"content": self.c.prose(r, 1), "status": status}
            todos.append(item | {"priority": r.choice(("high", "medium", "low")), "id": str(i + 1)})
        s.todos = todos
        title = f"{sum(t['status'] != 'completed' for t in todos)} todos"
        out = orjson.dumps(todos, option=_INDENT).decode()
        return {"todos": todos}, out, title, {"todos": todos}

    def t_webfetch(self, s: _Ses) -> Tool:
        r = self.r
        url = f"https://docs.{r.choice(_WORDS)}.dev/{r.choice(_WORDS)}"
        out = f"# {r.choice(_TITLES)}\n\n" + self.c.prose(r, r.randint(10, 150))
        return {"url": url, "format": "markdown"}, out, f"{url} (text/html)", {}

    def t_task(self, s: _Ses, agent: str) -> Tool:
        """Run a sub-agent session now, linked by its parentID and by metadata.sessionId."""
        r = self.r
        desc = r.choice(("Explore tests", "Find config loading", "Review the diff", "Find callers"))
        prompt = self.c.prose(r, r.randint(2, 6))
        child = self.child_session(s, agent, f"{desc} (@{agent} subagent)", prompt)
        result = self.c.prose(r, r.randint(2, 12))
        out = f"task_id: {child.id} (for resuming to continue this task if needed)\n\n"
        out += f"<task_result>\n{result}\n</task_result>"
        meta = {"sessionId": child.id, "model": {"modelID": s.model[1], "providerID": s.model[0]}}
        return {"description": desc, "prompt": prompt, "subagent_type": agent}, out, desc, meta


def generate_tree(
    root: Path, spec: TreeSpec | None = None, *, files: int | None = None
) -> TreeSummary:
    """Write a whole storage tree under ``root`` (the ``storage/`` directory; best absent or empty).

    ``files`` targets a file count, as ``TreeSpec.for_file_count`` does. Same spec, same bytes.
    """
    spec = spec or TreeSpec()
    if files is not None:
        spec = replace(spec, sessions=max(files, 1), max_files=files)
    sink = _Sink(Path(root), live=False, on_write=None)
    g = _Gen(spec, sink)
    r = g.r
    projects = [g.project(git=True) for _ in range(spec.projects)] + [g.project(git=False)]
    sink.raw(f"{sink.root}/migration", "migration", b"2")
    for _ in range(spec.sessions):
        if spec.max_files is not None and sink.counts.total() + len(projects) >= spec.max_files:
            break
        g.tick(60_000, 3_600_000)
        p = projects[-1] if len(projects) == 1 or r.random() < 0.15 else r.choice(projects[:-1])
        g.session(p, crash=r.random() < spec.crashed_ratio)
    for p in projects:
        g.write_project(p)
    return TreeSummary(Path(root), dict(sink.counts), sink.bytes, tuple(g.session_ids))


class LiveWriter:
    """Writes sessions step by step like a running opencode: in place, no temp file, no rename.

    Deterministic for a seed. ``on_write(path)`` runs right after each file is closed, so a
    benchmark can stamp write times; the step, stream and delete methods also return the paths
    they wrote or removed. Sessions of the tree under ``root`` can be deleted too.
    """

    def __init__(
        self,
        root: Path,
        seed: int = 0,
        *,
        base_time_ms: int = DEFAULT_BASE_TIME_MS,
        on_write: Callable[[Path], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self._sink = _Sink(self.root, live=True, on_write=on_write)
        spec = TreeSpec(seed=seed, base_time_ms=base_time_ms, compact_ratio=0, share_ratio=0)
        self._gen = _Gen(spec, self._sink)
        self._gen.text_rate = 1.0  # every step streams a text part
        self._project = self._gen.project(git=True)
        self._sessions: dict[str, _Ses] = {}
        self.last_text_part: Path | None = None
        """The text part written by the latest ``write_step`` (a target for ``stream_text``)."""

    def new_session(self) -> str:
        """Write a new, empty session (and the project file on first use); return its ID."""
        g = self._gen
        g.tick(1_000, 60_000)
        if not self._sessions:
            g.write_project(self._project)
        s = g.open_session(self._project, None, "build", "")
        self._sessions[s.id] = s
        g.close_session(s)
        return s.id

    def write_step(self, session_id: str) -> list[Path]:
        """Write one assistant step (message + parts, then session and session_diff).

        A user message with its text part comes first when a new turn starts.
        """
        g, s = self._gen, self._sessions[session_id]
        self._sink.log.clear()
        if not s.user or g.r.random() < 0.25:
            s.user, created = g.open_turn(s)
            parts = g.user_parts(s, s.user, "plain", "explore", "")
            g.emit(s, g.user_message(s, s.user, created, summary=False), parts)
        g.step(s, s.user, "stop" if g.r.random() < 0.3 else "tools")
        self.last_text_part = Path(g.last_text)
        g.close_session(s)
        return list(self._sink.log)

    def stream_text(self, part_path: Path, deltas: int = 20) -> list[Path]:
        """Append to a text/reasoning part ``deltas`` times, rewriting it in place each time."""
        obj = orjson.loads(Path(part_path).read_bytes())
        if obj.get("type") not in ("text", "reasoning"):
            raise ValueError(f"not a text or reasoning part: {part_path}")
        g, text = self._gen, obj["text"]
        start = g.t
        self._sink.log.clear()
        for i in range(1, deltas + 1):
            now = g.tick(5, 80)
            text += " " + g.c.sentences[g.r.randrange(len(g.c.sentences))]
            obj["text"] = text
            obj["time"] = {"start": now, "end": now} if i == deltas else {"start": start}
            self._sink.raw(str(part_path), "part", orjson.dumps(obj, option=_INDENT))
        return list(self._sink.log)

    def delete_session(self, session_id: str) -> list[Path]:
        """Unlink like ``Session.remove``: children first, then parts, messages, the session.

        The emptied ``message/`` and ``part/`` directories and the todo and session_diff files
        stay behind, as they do in opencode.
        """
        removed: list[Path] = []
        session_files = sorted(self.root.glob(f"session/*/{session_id}.json"))
        for sibling in sorted({f for sf in session_files for f in sf.parent.glob("*.json")}):
            try:
                obj = orjson.loads(sibling.read_bytes())
            except (orjson.JSONDecodeError, FileNotFoundError):
                continue
            if isinstance(obj, dict) and obj.get("parentID") == session_id:
                removed += self.delete_session(sibling.stem)
        for msg in sorted((self.root / "message" / session_id).glob("*.json")):
            for part in sorted((self.root / "part" / msg.stem).glob("*.json")):
                part.unlink()
                removed.append(part)
            msg.unlink()
            removed.append(msg)
        for sf in session_files:
            sf.unlink()
            removed.append(sf)
        self._sessions.pop(session_id, None)
        return removed


class Malformed(enum.Enum):
    """Ways storage files are found broken (spec §4 and §7)."""

    EMPTY = "empty"  # created but not yet written, or disk full
    TRUNCATED = "truncated"  # torn read of a multi-page write: a strict prefix
    NUL_FILLED = "nul_filled"  # after a crash: all NUL bytes
    INVALID_UTF8 = "invalid_utf8"
    WRONG_TOP_LEVEL = "wrong_top_level"  # an array where an object belongs, or the reverse
    MISSING_ID = "missing_id"  # a valid JSON object without "id"
    TRAILING_GARBAGE = "trailing_garbage"  # shrinking in-place rewrite, seen before ftruncate


def corrupt(path: Path, kind: Malformed, seed: int = 0) -> None:
    """Damage one file in place as ``kind`` says (MISSING_ID needs a JSON object file)."""
    r, data = random.Random(seed), Path(path).read_bytes()
    option = _INDENT if data[1:2] == b"\n" else 0  # keep pretty files pretty
    if kind is Malformed.EMPTY:
        new = b""
    elif kind is Malformed.TRUNCATED:
        new = data[: r.randint(1, len(data) - 1)] if len(data) > 1 else b""
    elif kind is Malformed.NUL_FILLED:
        new = b"\0" * max(len(data), 1)
    elif kind is Malformed.INVALID_UTF8:
        i = data.find(b'"') + 1
        new = data[:i] + b"\xff\xfe" + data[i:]
    elif kind is Malformed.WRONG_TOP_LEVEL:
        obj = orjson.loads(data)
        new = orjson.dumps([obj] if isinstance(obj, dict) else {"items": obj}, option=option)
    elif kind is Malformed.MISSING_ID:
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            raise ValueError(f"MISSING_ID needs a JSON object: {path}")
        del obj["id"]
        new = orjson.dumps(obj, option=option)
    else:  # the stale tail of a longer previous version of the same document
        new = data + data[len(data) - r.randint(1, max(1, len(data) // 2)) :]
    _write(str(path), new, _INPLACE)


def corrupt_random(root: Path, kind: Malformed, n: int, seed: int = 0) -> list[Path]:
    """Damage ``n`` record files picked at random (object records only for MISSING_ID)."""
    kinds = ["project", "session", "message", "part"]
    if kind is not Malformed.MISSING_ID:
        kinds += ["todo", "session_diff"]
    files = sorted(p for k in kinds for p in (Path(root) / k).rglob("*.json"))
    picked = random.Random(seed).sample(files, min(n, len(files)))
    for i, path in enumerate(picked):
        corrupt(path, kind, seed + i)
    return picked


def add_noise(root: Path, seed: int = 0) -> list[Path]:
    """Add files an indexer must skip: migration, shares, permission, 0.x temp file, non-JSON."""
    root, r = Path(root), random.Random(seed)
    sessions = sorted(root.glob("session/*/*.json"))
    pid, sid = (sessions[0].parent.name, sessions[0].stem) if sessions else ("global", "ses_0")
    url = f"https://opncd.ai/share/{sid[-8:]}"
    rules = [{"permission": "bash", "pattern": "git status*", "action": "allow"}]
    noise = {
        "migration": b"2",
        f"session_share/{sid}.json": {"id": sid[-8:], "secret": r.randbytes(16).hex(), "url": url},
        f"share/{sid}.json": {"secret": r.randbytes(16).hex(), "url": url},
        f"permission/{pid}.json": rules,
        f"session/{pid}/{sid}.json{DEFAULT_BASE_TIME_MS - r.randrange(10**10)}.tmp": {"id": sid},
        f"message/{sid}/.DS_Store": b"\x00\x00\x00\x01Bud1" + r.randbytes(64),
    }
    for rel, obj in noise.items():
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj, option=_INDENT)
        _write(str(root / rel), data)
    return [root / rel for rel in noise]


def age_tree(root: Path, seconds: float) -> None:
    """Set the mtime of ``root`` and of every directory and file under it to ``seconds`` ago,
    as on a machine where nothing was written for that long (the reconciler's cold
    directories)."""
    ns = time.time_ns() - int(seconds * 1e9)
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns))
        os.utime(dirpath, ns=(ns, ns))
