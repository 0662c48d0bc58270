"""Synthetic ``opencode.db`` files: the records of the JSON generator, written as opencode >= 1.2
writes them into its SQLite database (``SqliteSink``, ``generate_db``; live: ``opencode_live``).

``SqliteSink`` stands in for ``files._Sink`` under the same ``_Gen``, so a spec gives the same
records (same IDs, same content, same RNG order) in a JSON tree and in a database.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import orjson

from indexer_service.demo.synthetic.files import _Sink
from indexer_service.demo.synthetic.opencode_schema import connect, create_schema, insert_secrets
from indexer_service.demo.synthetic.spec import TreeSpec, TreeSummary
from indexer_service.demo.synthetic.state import Json
from indexer_service.demo.synthetic.tree import _Gen

_MESSAGE = """INSERT INTO message (id, session_id, time_created, time_updated, data)
VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET
session_id = excluded.session_id, time_updated = excluded.time_updated, data = excluded.data"""
_PART = """INSERT INTO part (id, message_id, session_id, time_created, time_updated, data)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET message_id = excluded.message_id,
session_id = excluded.session_id, time_updated = excluded.time_updated, data = excluded.data"""
_PROJECT_COLS = ("id", "worktree", "vcs", "name", "icon_url", "icon_color", "time_created",
                 "time_updated", "time_initialized", "sandboxes", "commands")  # fmt: skip
_SESSION_COLS = ("id", "project_id", "parent_id", "slug", "directory", "title", "version",
                 "share_url", "summary_additions", "summary_deletions", "summary_files",
                 "permission", "time_created", "time_updated", "time_compacting",
                 "time_archived")  # fmt: skip
_SHARE_COLS = ("session_id", "id", "secret", "url", "time_created", "time_updated")


def _upsert(table: str, cols: tuple[str, ...], keep: tuple[str, ...] = ()) -> str:
    """``INSERT ... ON CONFLICT DO UPDATE``: an update keeps the rowid and cascades nothing
    (``INSERT OR REPLACE`` would delete the row and its children)."""
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols[1:] if c not in keep)
    marks = ", ".join("?" * len(cols))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT ({cols[0]}) DO UPDATE SET {sets}"


_PROJECT = _upsert("project", _PROJECT_COLS)
_SESSION = _upsert("session", _SESSION_COLS)
_SHARE = _upsert("session_share", _SHARE_COLS, keep=("time_created",))
_TODO = """INSERT INTO todo (session_id, content, status, priority, position, time_created,
time_updated) VALUES (?, ?, ?, ?, ?, ?, ?)"""


def _json(obj: object) -> str | None:
    return None if obj is None else orjson.dumps(obj).decode()


def rel_id(rel: str) -> str:
    """``part/<messageID>/<id>.json`` -> ``<id>``."""
    return rel.rpartition("/")[2].removesuffix(".json")


class SqliteSink:
    """``files._Sink``'s interface, writing each record as opencode >= 1.2 stores it: an upsert
    of its row (``message``/``part`` keep the object minus its ID columns in ``data``).

    ``now_ms()`` gives the ``time_updated`` stamps; they strictly increase per sink, as every
    rewrite of a row bumps its ``time_updated``. A commit follows every ``commit_every`` stored
    puts (1: one transaction per update, as opencode writes); ``flush()`` commits the rest.
    Records opencode 1.18 does not store (``session_diff``, raw files) are counted as "other".
    When ``live``, each stored record's ``rel`` goes to ``log`` and ``on_write(rel)`` after commit.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        now_ms: Callable[[], int],
        commit_every: int = 1,
        live: bool = False,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        self.conn, self.now_ms, self.commit_every = conn, now_ms, max(1, commit_every)
        self.live, self.on_write = live, on_write
        self.counts: Counter[str] = Counter()
        self.bytes = 0
        self.log: list[str] = []
        self.last_ms = 0
        self._pending = 0
        self._writers: dict[str, Callable[[list[str], Any, int], int]] = {
            "project": self._project,
            "session": self._session,
            "message": self._message,
            "part": self._part,
            "todo": self._todo,
            "session_share": self._share,
        }

    def stamp(self) -> int:
        """The next ``time_updated``: ``now_ms()``, or 1 ms past the last stamp."""
        self.last_ms = max(self.now_ms(), self.last_ms + 1)
        return self.last_ms

    def put(self, rel: str, obj: Any, compact: bool = False) -> str:
        """Upsert the record of storage path ``rel``; return ``rel``."""
        kind, _, key = rel.partition("/")
        write = self._writers.get(kind)
        if write is None:
            self.raw(rel, kind, orjson.dumps(obj))
            return rel
        self._begin()
        size = write(key.removesuffix(".json").split("/"), obj, self.stamp())
        self._done(rel, kind, size)
        return rel

    def raw(self, path: str, kind: str, data: bytes) -> None:
        """Raw files (``migration``) have no table: counted, not stored."""
        self.counts["other"] += 1
        self.bytes += len(data)

    def rewrite(self, rel: str, data: Json) -> str:
        """``UPDATE <kind> SET data, time_updated`` of the message or part ``rel`` (a streamed
        update in place: the row keeps its rowid)."""
        kind = rel.partition("/")[0]
        if kind not in ("message", "part"):
            raise ValueError(f"not a message or part: {rel}")
        text = orjson.dumps(data).decode()
        self._begin()
        sql = f"UPDATE {kind} SET data = ?, time_updated = ? WHERE id = ?"
        self.conn.execute(sql, (text, self.stamp(), rel_id(rel)))
        self._done(rel, kind, len(text))
        return rel

    def flush(self) -> None:
        """Commit what is pending."""
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self._pending = 0

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")

    def _done(self, rel: str, kind: str, size: int) -> None:
        self.counts[kind] += 1
        self.bytes += size
        self._pending += 1
        if self._pending >= self.commit_every:
            self.flush()
        if self.live:
            self.log.append(rel)
            if self.on_write is not None:
                self.on_write(rel)

    def _project(self, key: list[str], obj: Json, now: int) -> int:
        t, icon = obj.get("time") or {}, obj.get("icon") or {}
        row = (obj["id"], obj["worktree"], obj.get("vcs"), obj.get("name"), icon.get("url"),
               icon.get("color"), t.get("created", now), t.get("updated", now),
               t.get("initialized"), _json(obj.get("sandboxes", [])), _json(obj.get("commands")))  # fmt: skip
        self.conn.execute(_PROJECT, row)
        return len(orjson.dumps(obj))

    def _session(self, key: list[str], obj: Json, now: int) -> int:
        t, summary = obj.get("time") or {}, obj.get("summary") or {}
        row = (obj["id"], key[0], obj.get("parentID"), obj.get("slug", ""), obj["directory"],
               obj["title"], obj["version"], (obj.get("share") or {}).get("url"),
               summary.get("additions"), summary.get("deletions"), summary.get("files"),
               _json(obj.get("permission")), t.get("created", now), t.get("updated", now),
               t.get("compacting"), t.get("archived"))  # fmt: skip
        self.conn.execute(_SESSION, row)
        return len(orjson.dumps(obj))

    def _message(self, key: list[str], obj: Json, now: int) -> int:
        data = orjson.dumps({k: v for k, v in obj.items() if k not in ("id", "sessionID")}).decode()
        created = (obj.get("time") or {}).get("created", now)
        self.conn.execute(_MESSAGE, (obj["id"], obj.get("sessionID", key[0]), created, now, data))
        return len(data)

    def _part(self, key: list[str], obj: Json, now: int) -> int:
        skip = ("id", "sessionID", "messageID")
        data = orjson.dumps({k: v for k, v in obj.items() if k not in skip}).decode()
        start = (obj.get("time") or {}).get("start")
        if start is None:
            start = ((obj.get("state") or {}).get("time") or {}).get("start", now)
        row = (obj["id"], obj.get("messageID", key[0]), obj["sessionID"], start, now, data)
        self.conn.execute(_PART, row)
        return len(data)

    def _todo(self, key: list[str], obj: list[Json], now: int) -> int:
        """Replace the session's todo list (delete, then one row per item by position)."""
        self.conn.execute("DELETE FROM todo WHERE session_id = ?", (key[0],))
        rows = [(key[0], x.get("content", ""), x.get("status", ""), x.get("priority", ""), i,
                 now, now) for i, x in enumerate(obj)]  # fmt: skip
        self.conn.executemany(_TODO, rows)
        return len(orjson.dumps(obj))

    def _share(self, key: list[str], obj: Json, now: int) -> int:
        self.conn.execute(_SHARE, (key[0], obj["id"], obj["secret"], obj["url"], now, now))
        return len(orjson.dumps(obj))


def generate_db(
    path: Path, spec: TreeSpec | None = None, *, files: int | None = None, secrets: bool = True
) -> TreeSummary:
    """Write a whole ``opencode.db`` at ``path`` (which must not exist): the records
    ``generate_tree`` writes for the same spec, in the same order, with the same IDs.

    ``time_updated`` stamps come from the generator's clock, so the same spec gives the same
    database content. Records come children first (a session after its messages, projects
    last), so foreign keys are checked once at the end instead of per row. With ``secrets``,
    the account tables hold ``SECRET_MARKERS``. ``files`` targets a record count.
    """
    spec = spec or TreeSpec()
    if files is not None:
        spec = replace(spec, sessions=max(files, 1), max_files=files)
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    conn = connect(path, foreign_keys=False)
    conn.execute("PRAGMA journal_mode=OFF")  # a fresh file nobody reads yet: ~30% faster;
    conn.execute("PRAGMA synchronous=OFF")  # WAL again (as opencode leaves it) at the end
    try:
        create_schema(conn)
        if secrets:
            insert_secrets(conn, spec.base_time_ms)
        sink = SqliteSink(conn, now_ms=lambda: spec.base_time_ms, commit_every=2_000)
        g = _Gen(spec, cast(_Sink, sink))
        sink.now_ms = lambda: g.t
        g.history("migration")  # the same records as generate_tree's for the same spec
        sink.flush()
        if bad := conn.execute("PRAGMA foreign_key_check").fetchmany(5):
            raise RuntimeError(f"dangling references in {path}: {bad}")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return TreeSummary(path, dict(sink.counts), sink.bytes, tuple(g.session_ids))
