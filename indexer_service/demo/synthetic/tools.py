"""Tool calls (bash, read, edit, ..., task): their inputs, outputs, metadata and file changes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import orjson

from indexer_service.demo.synthetic.core import _Core
from indexer_service.demo.synthetic.corpus import _TITLES, _WORDS
from indexer_service.demo.synthetic.files import _INDENT
from indexer_service.demo.synthetic.state import Json, _Ses

Tool = tuple[Json, str, str, Json]  # input, output, title, metadata
_TOOL_ERRORS = {
    "read": "Error: File not found: {path}",
    "edit": "Error: oldString not found in content",
    "webfetch": "Error: Request failed with status code: 404",
    "bash": "Tool execution aborted",
}
_COMMANDS = (("pytest -q", "Run the test suite"), ("git status", "Show git status"),
             ("ls -la src", "List files"), ("ruff check .", "Lint the package"))  # fmt: skip
_ERROR_INPUTS: dict[str, Json] = {
    "bash": {"command": "make test", "description": "Run the test suite"},
    "webfetch": {"url": "https://example.com/missing", "format": "markdown"},
}


class _Tools(_Core, ABC):
    """Tool calls of a step (spec §5.5); ``task`` runs a sub-agent through ``child_session``."""

    @abstractmethod
    def child_session(self, parent: _Ses, agent: str, title: str, prompt: str) -> _Ses:
        """A sub-agent session: one prompt, then all its steps."""

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
