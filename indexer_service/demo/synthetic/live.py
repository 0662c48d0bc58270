"""``LiveWriter``: writes sessions step by step into a storage tree, as a running opencode does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from indexer_service.demo.synthetic.files import _INDENT, _Sink
from indexer_service.demo.synthetic.malformed import Malformed, corrupt
from indexer_service.demo.synthetic.spec import DEFAULT_BASE_TIME_MS, TreeSpec
from indexer_service.demo.synthetic.state import _Ses
from indexer_service.demo.synthetic.tree import _Gen


class LiveSessions:
    """The generator as a running opencode drives it: sessions opened one by one, a step at a
    time, through ``sink`` (files or database rows). Deterministic for a seed."""

    def __init__(self, sink: _Sink, seed: int, base_time_ms: int) -> None:
        self._sink = sink
        spec = TreeSpec(seed=seed, base_time_ms=base_time_ms, compact_ratio=0, share_ratio=0)
        self._gen = _Gen(spec, sink)
        self._gen.text_rate = 1.0  # every step streams a text part
        self._project = self._gen.project(git=True)
        self._sessions: dict[str, _Ses] = {}

    def new_session(self) -> str:
        """Write a new, empty session (and the project on first use); return its ID."""
        g = self._gen
        g.tick(1_000, 60_000)
        if not self._sessions:
            g.write_project(self._project)
        s = g.open_session(self._project, None, "build", "")
        self._sessions[s.id] = s
        g.close_session(s)
        return s.id

    def _step(self, session_id: str) -> str:
        """Write one assistant step (a user message first when a new turn starts), then the
        session; return where the step's text part went."""
        g, s = self._gen, self._sessions[session_id]
        self._sink.log.clear()
        if not s.user or g.r.random() < 0.25:
            s.user, created = g.open_turn(s)
            parts = g.user_parts(s, s.user, "plain", "explore", "")
            g.emit(s, g.user_message(s, s.user, created, summary=False), parts)
        g.step(s, s.user, "stop" if g.r.random() < 0.3 else "tools")
        text = g.last_text
        g.close_session(s)
        return text


class LiveWriter(LiveSessions):
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
        super().__init__(_Sink(self.root, live=True, on_write=on_write), seed, base_time_ms)
        self.last_text_part: Path | None = None
        """The text part written by the latest ``write_step`` (a target for ``stream_text``)."""

    damage_kinds: tuple[Malformed, ...] = tuple(Malformed)
    """The ways `corrupt_part` can damage a part."""

    def write_step(self, session_id: str) -> list[Path]:
        """Write one assistant step (message + parts, then session and session_diff).

        A user message with its text part comes first when a new turn starts.
        """
        self.last_text_part = Path(self._step(session_id))
        return list(self._sink.log)

    def step_parts(self, written: list[Path]) -> list[Path]:
        """The parts among ``written`` but the text part that may still stream."""
        return [p for p in written if p.parent.parent.name == "part" and p != self.last_text_part]

    def corrupt_part(self, part: Path, kind: Malformed, seed: int = 0) -> None:
        """Leave part file ``part`` damaged as ``kind`` says."""
        corrupt(part, kind, seed)

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
