"""The SQL that reads OpenCode's tables as documents the legacy JSON files would hold.

Each kind of record is selected as ``(key, parent, position, version, content, rowid, session)``
(``session``: the session the record belongs to). ``content`` is
the JSON document of the legacy file (a message's or part's ``data`` with its ``id``,
``sessionID`` and ``messageID`` spliced back in; sessions and projects built from their columns
with ``json_object``), so the same record specs (`extract`) turn both stores into the same
typed rows. ``version`` is ``time_updated``. Only the columns named in `reader.REQUIRED` are
ever read. A ``data`` value that is not a JSON object is passed through as it is, for the
extraction to report as that row's error.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KINDS", "Kind", "Row", "fetch", "integer", "text", "versions"]

Row = tuple[str, str | None, int | None, int, bytes, int, str | None]
"""A record as selected: key, parent, position, version, content, rowid, session."""


def _spliced(data: str, fields: dict[str, str]) -> str:
    """SQL: ``data`` (a JSON object's text) with ``fields`` (JSON key -> column) put first."""
    head = "'{' || " + " || ',' || ".join(
        f"'\"{k}\":' || json_quote({c})" for k, c in fields.items()
    )
    return (
        f"CASE WHEN trim({data}) = '{{}}' THEN {head} || '}}' "
        f"WHEN substr(ltrim({data}), 1, 1) = '{{' THEN {head} || ',' || substr(ltrim({data}), 2) "
        f"ELSE {data} END"
    )


@dataclass(frozen=True)
class Kind:
    """How one kind of record is read from its table."""

    name: str
    """The record type: project, session, message, part or todo (the legacy file types)."""
    table: str
    key: str
    """The column that keys a record (todo: the session, whose list is replaced whole)."""
    select: str
    """``SELECT key, parent, position, version, content, rowid, session FROM ...``, no WHERE."""
    by_rowid: bool = False
    """New rows are found by rowid (large, append-mostly tables)."""

    def where(self, condition: str, order: str = "") -> str:
        """The select restricted by ``condition`` (and ordered by ``order``)."""
        return f"{self.select} WHERE {condition}" + (f" ORDER BY {order}" if order else "")


_PROJECT = """SELECT id, NULL, NULL, time_updated, json_object(
  'id', id, 'worktree', worktree, 'vcs', vcs, 'name', name,
  'time', json_object('created', time_created, 'updated', time_updated,
                      'initialized', time_initialized)
), rowid, NULL FROM project"""

_SESSION = """SELECT id, project_id, NULL, time_updated, json_object(
  'id', id, 'slug', slug, 'version', version, 'projectID', project_id, 'directory', directory,
  'parentID', parent_id, 'title', title,
  'time', json_object('created', time_created, 'updated', time_updated,
                      'compacting', time_compacting, 'archived', time_archived),
  'summary', json_object('additions', summary_additions, 'deletions', summary_deletions,
                         'files', summary_files),
  'share', CASE WHEN share_url IS NOT NULL THEN json_object('url', share_url) END
), rowid, id FROM session"""

_MESSAGE = f"""SELECT id, session_id, NULL, time_updated,
  {_spliced("data", {"id": "id", "sessionID": "session_id"})}, rowid, session_id
FROM message"""

_PART = f"""SELECT id, message_id, NULL, time_updated,
  {_spliced("data", {"id": "id", "sessionID": "session_id", "messageID": "message_id"})},
  rowid, session_id
FROM part"""

_TODO = """SELECT session_id, NULL, position, time_updated,
  json_object('content', content, 'status', status, 'priority', priority), rowid, session_id
FROM todo"""

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("project", "project", "id", _PROJECT),
        Kind("session", "session", "id", _SESSION),
        Kind("message", "message", "id", _MESSAGE, by_rowid=True),
        Kind("part", "part", "id", _PART, by_rowid=True),
        Kind("todo", "todo", "session_id", _TODO),
    )
}
"""The kinds of record read, in the order a poll writes them (parents first)."""


def text(value: object) -> str | None:
    """A column value as text (read as bytes: not UTF-8 is replaced, not an error)."""
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def integer(value: object) -> int:
    """A column value as an integer (0 when it is not one, as a stray text would be)."""
    return value if isinstance(value, int) else 0


def fetch(con: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> list[Row]:
    """Run a `Kind` select: ids as text, ``content`` as the bytes stored (the connection's
    ``text_factory`` is ``bytes``, so text that is not UTF-8 reaches the extraction, which
    reports it, instead of failing the whole read)."""
    out: list[Row] = []
    for key, parent, position, version, content, rowid, session in con.execute(sql, params):
        out.append(
            (
                text(key) or "",
                text(parent),
                position if isinstance(position, int) else None,
                integer(version),
                content if isinstance(content, bytes) else str(content).encode(),
                rowid,
                text(session),
            )
        )
    return out


def versions(kind: Kind, rows: Sequence[Row]) -> dict[str, int]:
    """The version of each record: its ``time_updated``, except for sessions (whose
    time_updated stays put through some rewrites) and todo lists: a checksum of what was read."""
    out: dict[str, int] = {}
    if kind.name in ("session", "todo"):
        for r in sorted(rows, key=lambda r: (r[0], r[2] or 0)):
            out[r[0]] = zlib.crc32(r[4], out.get(r[0], 0))
        return out
    for r in rows:
        out[r[0]] = r[3]
    return out
