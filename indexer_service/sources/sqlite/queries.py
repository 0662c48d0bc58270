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

import orjson

__all__ = ["KINDS", "Kind", "Row", "fetch", "integer", "text", "versions"]

Row = tuple[str, str | None, int | None, int, bytes, int, str | None]
"""A record as selected: key, parent, position, version, content, rowid, session."""


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
    splice: tuple[tuple[str, int], ...] = ()
    """Fields put back at the front of ``content`` (JSON key, index of the selected column):
    opencode keeps a message's and a part's ids in columns, not in ``data``."""

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

_MESSAGE = "SELECT id, session_id, NULL, time_updated, data, rowid, session_id FROM message"

_PART = "SELECT id, message_id, NULL, time_updated, data, rowid, session_id FROM part"

_TODO = """SELECT session_id, NULL, position, time_updated,
  json_object('content', content, 'status', status, 'priority', priority), rowid, session_id
FROM todo"""

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("project", "project", "id", _PROJECT),
        Kind("session", "session", "id", _SESSION),
        Kind("message", "message", "id", _MESSAGE, True, (("id", 0), ("sessionID", 6))),
        Kind("part", "part", "id", _PART, True, (("id", 0), ("sessionID", 6), ("messageID", 1))),
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


def fetch(
    con: sqlite3.Connection,
    kind: Kind,
    sql: str,
    params: Sequence[object] = (),
    *,
    max_bytes: int | None = None,
) -> list[Row]:
    """Run ``sql`` (a select of ``kind``): ids as text, ``content`` as the bytes stored, with
    ``kind.splice`` put back. The connection's ``text_factory`` is ``bytes``, so text that is
    not UTF-8 reaches the extraction, which reports it, instead of failing the whole read.
    With ``max_bytes``, rows stop soon after their contents reach that many bytes."""
    cursor = con.execute(sql, params)
    if max_bytes is None:
        rows = cursor.fetchall()
    else:
        rows, size = [], 0
        while size < max_bytes and (more := cursor.fetchmany(256)):
            rows += more
            size += sum(len(r[4]) for r in more if isinstance(r[4], bytes))
        cursor.close()
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    keys = [k or "" for k in _texts(columns[0])]
    parents, sessions = _texts(columns[1]), _texts(columns[6])
    positions = [p if isinstance(p, int) else None for p in columns[2]]
    versions = [v if isinstance(v, int) else 0 for v in columns[3]]
    contents = [c if isinstance(c, bytes) else str(c).encode() for c in columns[4]]
    if kind.splice:
        values = {0: keys, 1: parents, 6: sessions}
        columns_of = [values[i] for _, i in kind.splice]
        head = b"{" + b",".join(b'"%s":%%b' % name.encode() for name, _ in kind.splice)
        dumps = orjson.dumps
        contents = [
            _splice(head % tuple(map(dumps, ids)), c)
            for ids, c in zip(zip(*columns_of, strict=True), contents, strict=True)
        ]
    return list(
        zip(keys, parents, positions, versions, contents, columns[5], sessions, strict=True)
    )


def _texts(values: Sequence[object]) -> list[str | None]:
    try:  # ids are ASCII: decoding all at once is the common case
        return [None if v is None else v.decode() for v in values]  # type: ignore[attr-defined]
    except (AttributeError, UnicodeDecodeError):
        return [text(v) for v in values]


def _splice(head: bytes, data: bytes) -> bytes:
    """``data`` (a JSON object's text) with ``head`` (``{"id":...``) put first; anything else
    is passed through, for the extraction to report."""
    body = data.lstrip()
    if body[:1] != b"{":
        return data
    rest = body[1:]
    if rest.lstrip()[:1] == b"}":
        return head + rest.lstrip()
    return head + b"," + rest


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
