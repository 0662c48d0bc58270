"""Arbitrary bytes as record files and as database rows, through the real loaders into a real
index (issue #24): a batch never raises, and every input that is not a record is an error row
naming what is wrong, while the records beside it are indexed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer_service.demo.synthetic import OPENCODE_SCHEMA
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.layout import FILE_TYPES, NESTED
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.sources.sqlite.batch import DbKeys
from indexer_service.sources.sqlite.loader import DbLoader
from indexer_service.sources.sqlite.progress import RowTracker
from indexer_service.sources.sqlite.reader import Reader
from indexer_service.store.database import Database

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda v: st.lists(v, max_size=4) | st.dictionaries(st.text(max_size=8), v, max_size=4),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    ["id", "sessionID", "messageID", "type", "time", "tokens", "cost", "state", "text", "role"]
)
_RECORDISH = st.dictionaries(_FIELDS, _JSON, max_size=6)


def _dumps(value: object) -> bytes:
    """JSON as any writer may leave it: integers past 64 bits, ``Infinity`` for an infinite
    float (not JSON at all)."""
    return json.dumps(value).encode()


_DOCUMENTS = st.one_of(
    st.binary(max_size=300),  # anything at all, mostly not UTF-8 or not JSON
    _JSON.map(_dumps),  # JSON of any shape
    _RECORDISH.map(_dumps),  # shaped like a record, fields of any type
    _RECORDISH.map(lambda d: _dumps(d)[: len(_dumps(d)) // 2]),  # cut short
    st.lists(_RECORDISH, max_size=3).map(_dumps),  # an array, as todo files are
)
_FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _status(db: Database, path: str) -> tuple[str, str | None]:
    row = (
        db.cursor()
        .execute("SELECT status, error_message FROM file_index WHERE file_path = ?", [path])
        .fetchone()
    )
    assert row is not None, f"no file_index row for {path}"
    return row[0], row[1]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with Database(tmp_path_factory.mktemp("fuzz") / "index.duckdb") as db:
        yield db


@_FUZZ
@given(data=_DOCUMENTS, file_type=st.sampled_from(FILE_TYPES), n=st.integers(0, 10**9))
def test_any_bytes_as_a_record_file_are_indexed_or_an_error_row(
    index: Database, tmp_path_factory: pytest.TempPathFactory, data: bytes, file_type: str, n: int
) -> None:
    """A record file of any content beside a good one: one batch, no exception; the good
    file is indexed, the fuzzed one is indexed or an error row with a message."""
    root = tmp_path_factory.mktemp("storage")
    folder = root / file_type / "ses_fuzz" if file_type in NESTED else root / file_type
    folder.mkdir(parents=True)
    fuzzed = folder / f"x{n}.json"
    fuzzed.write_bytes(data)
    good = root / "project" / f"prj_good{n}.json"
    good.parent.mkdir(exist_ok=True)
    good.write_bytes(orjson.dumps({"id": f"prj_good{n}", "worktree": "/w", "time": {}}))
    loader = Loader(index, FileTracker(index), root)
    try:
        result = loader.write(loader.prepare([str(fuzzed), str(good)]))
    finally:
        loader.close()
    assert result.indexed + result.errors == 2
    assert _status(index, str(good)) == ("indexed", None)
    status, message = _status(index, str(fuzzed))
    assert status in ("indexed", "error")
    assert (status == "error") == bool(message)


def _opencode(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.executescript(OPENCODE_SCHEMA)
        con.execute(
            "INSERT INTO project (id, worktree, time_created, time_updated, sandboxes)"
            " VALUES ('prj_1', '/w', 1, 1, '[]')"
        )
        con.execute(
            "INSERT INTO session (id, project_id, slug, directory, title, version, time_created,"
            " time_updated) VALUES ('ses_1', 'prj_1', 's', '/w', 't', '1', 1, 1)"
        )
        con.execute(
            "INSERT INTO message (id, session_id, time_created, time_updated, data)"
            " VALUES ('msg_1', 'ses_1', 1, 1, '{\"role\": \"user\"}')"
        )


@_FUZZ
@given(data=_DOCUMENTS, as_text=st.booleans(), kind=st.sampled_from(["part", "message"]))
def test_any_bytes_as_a_database_row_are_indexed_or_an_error_row(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, as_text: bool, kind: str
) -> None:
    """A row whose ``data`` is anything (stored as TEXT or as a BLOB) beside a good one: the
    poll's batch raises nothing, the good row is indexed, the fuzzed one indexed or an error."""
    folder = tmp_path_factory.mktemp("opencode")
    opencode = folder / "opencode.db"
    _opencode(opencode)
    with sqlite3.connect(opencode) as con:
        cast = "CAST(? AS TEXT)" if as_text else "?"
        if kind == "part":
            con.execute(
                "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data)"
                f" VALUES ('prt_fuzz', 'msg_1', 'ses_1', 2, 2, {cast})",
                [data],
            )
        else:
            con.execute(
                "INSERT INTO message (id, session_id, time_created, time_updated, data)"
                f" VALUES ('msg_fuzz', 'ses_1', 2, 2, {cast})",
                [data],
            )
    name = f"sqlite:{opencode}"
    with Database(folder / "index.duckdb") as db:
        loader = DbLoader(db, Reader(opencode), DbKeys(name + "|"), RowTracker(name))
        try:
            result = loader.write(loader.prepare([loader.keys.poll]))
        finally:
            loader.close()
        rows = dict(
            db.cursor()
            .execute("SELECT id, status FROM row_index WHERE kind IN ('part', 'message')")
            .fetchall()
        )
        messages = dict(
            db.cursor()
            .execute("SELECT id, error_message FROM row_index WHERE status = 'error'")
            .fetchall()
        )
    fuzzed = "prt_fuzz" if kind == "part" else "msg_fuzz"
    assert result.indexed + result.errors >= 2
    assert rows["msg_1"] == "indexed"
    assert rows[fuzzed] in ("indexed", "error")
    if rows[fuzzed] == "error":
        assert messages[fuzzed]
