"""``LiveDbWriter``: writes sessions step by step into an ``opencode.db``, as a running opencode
>= 1.2 does (one commit per record, rows rewritten in place, deletes cascading)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import orjson

from indexer_service.demo.synthetic.files import _Sink
from indexer_service.demo.synthetic.live import LiveSessions
from indexer_service.demo.synthetic.malformed import Malformed, damaged
from indexer_service.demo.synthetic.opencode_db import SqliteSink, rel_id
from indexer_service.demo.synthetic.opencode_schema import connect, create_schema
from indexer_service.demo.synthetic.spec import DEFAULT_BASE_TIME_MS


def _wall_ms() -> int:
    return int(time.time() * 1000)


class LiveDbWriter(LiveSessions):
    """``LiveWriter`` on an ``opencode.db``: writes sessions step by step like a running opencode,
    one commit per record, ``time_updated`` from the wall clock.

    Deterministic content for a seed (the same records as ``LiveWriter``). Opens its own
    connection and creates the schema if the database is new; sessions already in the database
    (say from ``generate_db``) can be deleted too. ``on_write(rel)`` runs right after each commit;
    the step, stream and delete methods return what they wrote or removed, as storage paths
    (``part/<messageID>/<id>.json``...). Call ``close()`` (or use it as a context manager).
    """

    def __init__(
        self,
        path: Path,
        seed: int = 0,
        *,
        base_time_ms: int = DEFAULT_BASE_TIME_MS,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session'"
        if self.conn.execute(exists).fetchone() is None:
            create_schema(self.conn)
        self._db_sink = SqliteSink(self.conn, now_ms=_wall_ms, live=True, on_write=on_write)
        super().__init__(cast(_Sink, self._db_sink), seed, base_time_ms)
        self.last_text_part: str | None = None
        """The ID of the text part written by the latest ``write_step`` (for ``stream_text``)."""

    def close(self) -> None:
        self._db_sink.flush()
        self.conn.close()

    def __enter__(self) -> LiveDbWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_step(self, session_id: str) -> list[str]:
        """Write one assistant step (message + parts, then the session row), as ``LiveWriter``.

        A user message with its text part comes first when a new turn starts.
        """
        self.last_text_part = rel_id(self._step(session_id)) or None
        return list(self._db_sink.log)

    def stream_text(self, part: str, deltas: int = 20) -> list[str]:
        """Append to the text/reasoning part with ID ``part`` ``deltas`` times: each delta is an
        ``UPDATE part SET data, time_updated`` in its own commit."""
        row = self.conn.execute(
            "SELECT message_id, data FROM part WHERE id = ?", (part,)
        ).fetchone()
        if row is None:
            raise KeyError(part)
        obj = orjson.loads(row[1])
        if obj.get("type") not in ("text", "reasoning"):
            raise ValueError(f"not a text or reasoning part: {part}")
        g, text, rel = self._gen, obj["text"], f"part/{row[0]}/{part}.json"
        start = g.t
        self._db_sink.log.clear()
        for i in range(1, deltas + 1):
            now = g.tick(5, 80)
            text += " " + g.c.sentences[g.r.randrange(len(g.c.sentences))]
            obj["text"] = text
            obj["time"] = {"start": now, "end": now} if i == deltas else {"start": start}
            self._db_sink.rewrite(rel, obj)
        return list(self._db_sink.log)

    damage_kinds = tuple(k for k in Malformed if k is not Malformed.MISSING_ID)
    """The ways `corrupt_part` can damage a part (its id is a column: it cannot go missing)."""

    def step_parts(self, written: list[str]) -> list[str]:
        """The IDs of the parts among ``written`` but the text part that may still stream."""
        parts = [rel_id(r) for r in written if r.startswith("part/")]
        return [p for p in parts if p and p != self.last_text_part]

    def corrupt_part(self, part: str, kind: Malformed, seed: int = 0) -> None:
        """Damage the ``data`` of part ``part`` as ``kind`` says (not MISSING_ID: a row's id is
        a column), in one commit, as a crash or a bug in a writer could leave it."""
        row = self.conn.execute("SELECT data FROM part WHERE id = ?", (part,)).fetchone()
        data = row[0] if isinstance(row[0], bytes) else str(row[0]).encode()
        self.conn.execute(
            "UPDATE part SET data = CAST(? AS TEXT), time_updated = ? WHERE id = ?",
            (damaged(data, kind, seed), self._db_sink.stamp(), part),
        )

    def delete_session(self, session_id: str) -> list[str]:
        """Delete like ``Session.remove``: child sessions first, then the session row, whose
        foreign keys cascade to its messages, parts, todos and share (one commit per session).

        Returns the rows removed, as storage paths: per message its parts then itself, then the
        todo list, the share and the session.
        """
        removed: list[str] = []
        children = "SELECT id FROM session WHERE parent_id = ? ORDER BY id"
        for (child,) in self.conn.execute(children, (session_id,)).fetchall():
            removed += self.delete_session(child)
        self._db_sink.flush()
        c, key = self.conn, (session_id,)
        c.execute("BEGIN IMMEDIATE")  # what is listed is what the delete removes
        try:
            row = c.execute("SELECT project_id FROM session WHERE id = ?", key).fetchone()
            msgs = c.execute("SELECT id FROM message WHERE session_id = ? ORDER BY id", key)
            for (mid,) in msgs.fetchall():
                sql = "SELECT id FROM part WHERE message_id = ? ORDER BY id"
                removed += [f"part/{mid}/{pid}.json" for (pid,) in c.execute(sql, (mid,))]
                removed.append(f"message/{session_id}/{mid}.json")
            for kind in ("todo", "session_share"):
                if c.execute(f"SELECT 1 FROM {kind} WHERE session_id = ?", key).fetchone():
                    removed.append(f"{kind}/{session_id}.json")
            if row is not None:
                c.execute("DELETE FROM session WHERE id = ?", key)
                removed.append(f"session/{row[0]}/{session_id}.json")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._sessions.pop(session_id, None)
        return removed
