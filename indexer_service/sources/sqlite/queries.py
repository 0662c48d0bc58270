"""The SQL that reads OpenCode's tables as documents the legacy JSON files would hold.

Each kind of record is selected as ``(key, parent, position, version, content, rowid, session)``
(``session``: the session the record belongs to). ``content`` is
the JSON document of the legacy file (a message's or part's ``data`` with its ``id``,
``sessionID`` and ``messageID`` spliced back in; sessions and projects built from their columns
with ``json_object``), so the same record specs (`extract`) turn both stores into the same
typed rows. ``version`` is ``time_updated``. Only the columns named in `reader.REQUIRED` are
ever read. A ``data`` value that is not a JSON object is passed through as it is, for the
extraction to report as that row's error; one larger than the limit is not read at all (its
size is, in SQL: `Oversize`). Text that is not UTF-8 is read as bytes; in an id, its bytes
are kept as ``\\xNN`` escapes (`escaped`), so that each such row has a key of its own.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

__all__ = [
    "KINDS",
    "Kind",
    "Oversize",
    "Row",
    "escaped",
    "fetch",
    "integer",
    "raw",
    "rows_of",
    "text",
    "unreadable",
    "versions",
]

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
    sized: bool = False
    """``content`` is opencode's ``data`` column, read only up to a size (``?1`` in the
    select: `fetch` binds it), past which its size comes instead (`Oversize`)."""

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

_DATA = "CASE WHEN length(CAST(data AS BLOB)) > ?1 THEN -1 ELSE data END"
"""``data``, or -1 when it is larger than the limit bound as ``?1`` (the later ``?`` of a
statement are numbered from 2): such a value never leaves SQLite, which loads it once to
measure it (a ``length`` of TEXT reads it whole; ``-1`` rather than the length, which would
load it a second time: 200 MB instead of 100 for a 100 MB value)."""

_MESSAGE = f"SELECT id, session_id, NULL, time_updated, {_DATA}, rowid, session_id FROM message"

_PART = f"SELECT id, message_id, NULL, time_updated, {_DATA}, rowid, session_id FROM part"

_TODO = """SELECT session_id, NULL, position, time_updated,
  json_object('content', content, 'status', status, 'priority', priority), rowid, session_id
FROM todo"""

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("project", "project", "id", _PROJECT),
        Kind("session", "session", "id", _SESSION),
        Kind(
            "message",
            "message",
            "id",
            _MESSAGE,
            by_rowid=True,
            splice=(("id", 0), ("sessionID", 6)),
            sized=True,
        ),
        Kind(
            "part",
            "part",
            "id",
            _PART,
            by_rowid=True,
            splice=(("id", 0), ("sessionID", 6), ("messageID", 1)),
            sized=True,
        ),
        Kind("todo", "todo", "session_id", _TODO),
    )
}
"""The kinds of record read, in the order a poll writes them (parents first)."""


class Oversize(bytes):
    """The ``content`` of a record whose ``data`` is over the size limit: empty, with its size
    (from SQLite's blob handle, which reads no content; -1 if unknown)."""

    size: int

    def __new__(cls, size: int) -> Oversize:
        self = super().__new__(cls)
        self.size = size
        return self


def text(value: object) -> str | None:
    """A column value as text (read as bytes: bytes that are not UTF-8 are kept as ``\\xNN``
    escapes, so that two such values stay two; see `escaped`)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def escaped(value: str | None) -> bool:
    """Whether ``value`` (an id read by `text`) held bytes that are not UTF-8. OpenCode's ids
    are plain ASCII: a backslash in one comes from `text`."""
    return value is not None and "\\x" in value


_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def raw(value: str) -> bytes:
    """The bytes an `escaped` id was read from (to find its row again)."""
    out, at = bytearray(), 0
    for m in _ESCAPE.finditer(value):
        out += value[at : m.start()].encode() + bytes([int(m.group(1), 16)])
        at = m.end()
    return bytes(out + value[at:].encode())


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
    max_record_bytes: int = sys.maxsize,
) -> list[Row]:
    """Run ``sql`` (a select of ``kind``): ids as text, ``content`` as the bytes stored, with
    ``kind.splice`` put back. The connection's ``text_factory`` is ``bytes``, so text that is
    not UTF-8 reaches the extraction, which reports it, instead of failing the whole read.
    With ``max_bytes``, rows stop soon after their contents reach that many bytes. A ``data``
    over ``max_record_bytes`` is not read: its content is `Oversize`."""
    if kind.sized:
        params = (max_record_bytes, *params)
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
    contents = [_content(con, kind, c, r) for c, r in zip(columns[4], columns[5], strict=True)]
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


def _content(con: sqlite3.Connection, kind: Kind, value: object, rowid: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if kind.sized and value == -1 and isinstance(rowid, int):  # a data over the limit
        try:
            with con.blobopen(kind.table, "data", rowid, readonly=True) as blob:
                return Oversize(len(blob))
        except sqlite3.Error:
            return Oversize(-1)
    return str(value).encode()


def _texts(values: Sequence[object]) -> list[str | None]:
    try:  # ids are ASCII: decoding all at once is the common case
        return [None if v is None else v.decode() for v in values]  # type: ignore[attr-defined]
    except (AttributeError, UnicodeDecodeError):
        return [text(v) for v in values]


def _splice(head: bytes, data: bytes) -> bytes:
    """``data`` (a JSON object's text) with ``head`` (``{"id":...``) put first; anything else
    is passed through, for the extraction to report."""
    if isinstance(data, Oversize):
        return data
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


def rows_of(
    con: sqlite3.Connection,
    kind: Kind,
    column: str,
    ids: list[str],
    *,
    max_record_bytes: int = sys.maxsize,
) -> list[Row]:
    """The rows of ``kind`` whose ``column`` is one of ``ids``; an id that was not UTF-8
    (`escaped`) is matched on its bytes."""
    plain = [i for i in ids if not escaped(i)]
    sql = kind.where(f"{column} IN (SELECT value FROM json_each(?))")
    params: list[tuple[str, Sequence[object]]] = [(sql, (orjson.dumps(plain).decode(),))]
    by_bytes = kind.where(f"CAST({column} AS BLOB) = ?")
    params += [(by_bytes, (raw(i),)) for i in ids if escaped(i)]
    return [
        row
        for query, args in params[0 if plain else 1 :]
        for row in fetch(con, kind, query, args, max_record_bytes=max_record_bytes)
    ]


def unreadable(row: Row, max_record_bytes: int) -> str | None:
    """Why a record is an error before its document is looked at: a ``data`` over the size
    limit (never read), or an id that is not UTF-8 (its key shows the bytes escaped)."""
    if isinstance(row[4], Oversize):
        size = f"{row[4].size} bytes" if row[4].size >= 0 else "size unknown"
        return f"data too large: {size} > max_file_bytes {max_record_bytes} (not read)"
    ids = {"id": row[0], "parent id": row[1], "session id": row[6]}
    bad = [name for name, value in ids.items() if escaped(value)]
    return f"{' and '.join(bad)} not valid UTF-8 (shown with \\x escapes)" if bad else None
