"""Projects and sessions, and ``generate_tree``, which writes a whole storage tree for a spec."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from indexer_service.demo.synthetic.corpus import _TITLES, _WORDS
from indexer_service.demo.synthetic.files import _Sink
from indexer_service.demo.synthetic.spec import TreeSpec, TreeSummary
from indexer_service.demo.synthetic.state import _DENY, Json, Model, _file_diffs, _Project, _Ses
from indexer_service.demo.synthetic.turns import _Turns

_SLUGS = [f"{a}-{b}" for a in ("quick", "tidy", "brave", "calm", "eager", "misty", "proud")
          for b in ("harbor", "island", "falcon", "river", "meadow", "comet", "lantern")]  # fmt: skip
# providerID, modelID, USD per Mtok (input, output, cache read, cache write), emits reasoning
_MODELS: tuple[Model, ...] = (
    ("anthropic", "claude-sonnet-4-5", 3.0, 15.0, 0.3, 3.75, True),
    ("anthropic", "claude-opus-4-5", 5.0, 25.0, 0.5, 6.25, True),
    ("openai", "gpt-5.1-codex", 1.25, 10.0, 0.125, 0.0, True),
    ("google", "gemini-3-pro-preview", 2.0, 12.0, 0.2, 0.0, False),
    ("opencode", "grok-code", 0.0, 0.0, 0.0, 0.0, False),
)
# (version, level); from level 1: user agent/model, finish, subtask/compaction parts; 2: assistant
# agent; 3: session permission, tool-output truncation; 4: slug; 5: tokens.total. 0: retry parts.
_VERSIONS = (("1.1.65", 5),) * 5 + (("1.1.34", 4), ("1.1.11", 3), ("1.0.185", 2), ("1.0.61", 0))


class _Gen(_Turns):
    """The whole generator; this layer makes projects and sessions."""

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

    def history(self, migration: str) -> None:
        """Write the spec's whole history through the sink: projects, sessions (until
        ``max_files``), the ``migration`` marker; the same RNG calls whatever the sink."""
        spec, sink, r = self.spec, self.sink, self.r
        projects = [self.project(git=True) for _ in range(spec.projects)]
        projects.append(self.project(git=False))
        sink.raw(migration, "migration", b"2")
        for _ in range(spec.sessions):
            if spec.max_files is not None and sink.counts.total() + len(projects) >= spec.max_files:
                break
            self.tick(60_000, 3_600_000)
            p = projects[-1] if len(projects) == 1 or r.random() < 0.15 else r.choice(projects[:-1])
            self.session(p, crash=r.random() < spec.crashed_ratio)
        for p in projects:
            self.write_project(p)

    def child_session(self, parent: _Ses, agent: str, title: str, prompt: str) -> _Ses:
        """A sub-agent session: one prompt, then all its steps."""
        s = self.open_session(parent.project, parent, agent, title)
        self.turn(s, self.budget() - 1, False, prompt=prompt)
        self.close_session(s)
        return s


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
    g.history(f"{sink.root}/migration")
    return TreeSummary(Path(root), dict(sink.counts), sink.bytes, tuple(g.session_ids))
