"""What an index built from an OpenCode database must hold: every record of the database and
every message and part document, nothing more (tests' oracle for the SQLite source)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import orjson

TABLES = (
    ("project", "projects", "id"),
    ("session", "sessions", "id"),
    ("message", "messages", "id"),
    ("part", "parts", "id"),
    ("todo", "todos", "session_id"),
)


def _doc(text: str | bytes) -> bytes | None:
    """A message's or part's document as sorted JSON, without the ids its columns hold; None
    when it is not a JSON object (an error row of the index)."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in ("id", "sessionID", "messageID"):
        doc.pop(key, None)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _database(opencode: Path) -> tuple[dict[str, set[tuple[str, bytes]]], set[str]]:
    """Every record of the database, (key, document) per table (a document for messages and
    parts, empty for the rest), and the ids of the messages and parts that are not readable."""
    bad: set[str] = set()
    with sqlite3.connect(opencode) as con:
        con.text_factory = bytes
        out = {
            t: {(r[0].decode(), b"") for r in con.execute(f"SELECT {k} FROM {t}")}
            for t, _, k in TABLES
        }
        for table in ("message", "part"):
            out[table] = set()
            for ident, data in con.execute(f"SELECT id, data FROM {table}"):
                doc = _doc(data)
                if doc is None:
                    bad.add(ident.decode())
                else:
                    out[table].add((ident.decode(), doc))
    return out, bad


def _index(con: duckdb.DuckDBPyConnection, skip: set[str]) -> dict[str, set[tuple[str, bytes]]]:
    out = {t: {(r[0], b"") for r in con.execute(f"SELECT DISTINCT {k} FROM {ours}").fetchall()}
           for t, ours, k in TABLES}  # fmt: skip
    for table, ours in (("message", "messages"), ("part", "parts")):
        rows = con.execute(f"SELECT id, raw FROM {ours}").fetchall()
        out[table] = {(i, _doc(raw) or b"") for i, raw in rows if i not in skip}
    return out


def assert_index_equals(opencode: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Every record, and every message and part document, nothing more; a record that cannot
    be read is an error row (the index may keep its last good version)."""
    expected, bad = _database(opencode)
    assert _index(con, bad) == expected
    errors = {
        r[0] for r in con.execute("SELECT id FROM row_index WHERE status = 'error'").fetchall()
    }
    assert bad <= errors
