"""Database: open, migrate, cursors, transactions, clear errors."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from conftest import held_by_another_process

from indexer_service.errors import DatabaseError, DatabaseLockedError, SchemaVersionError
from indexer_service.settings import default_db_path
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.store.cursors import ThreadCursors
from indexer_service.store.database import ROW_GROUP_ROWS, Database
from indexer_service.store.schema import SCHEMA_VERSION

V1_SCHEMA = """
CREATE TABLE file_index (
    file_path VARCHAR PRIMARY KEY, file_type VARCHAR NOT NULL, mtime DOUBLE NOT NULL,
    size INTEGER NOT NULL, record_id VARCHAR, indexed_at TIMESTAMP, error_message VARCHAR
)
"""


def _columns(db: Database, table: str) -> list[str]:
    rows = (
        db.cursor()
        .execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
            [table],
        )
        .fetchall()
    )
    return [r[0] for r in rows]


def test_open_creates_parent_directories_and_schema(tmp_path: Path) -> None:
    """A new database in a missing directory is created with file_index and the schema version."""
    path = tmp_path / "a" / "b" / "index.duckdb"
    with Database(path) as db:
        assert path.exists()
        assert db.schema_version == SCHEMA_VERSION
        assert "status" in _columns(db, "file_index")
        assert _columns(db, "file_index")[0] == "file_path"


def test_v3_database_loses_the_status_index_and_keeps_its_rows(tmp_path: Path) -> None:
    """Version 4 drops the index on file_index.status that version 2 created; rows stay."""
    path = tmp_path / "v3.duckdb"
    with Database(path) as db:
        FileTracker(db).mark_indexed("/s/part/m/p.json", "part", 1.0, 2, "p")
    con = duckdb.connect(str(path))
    con.execute("CREATE INDEX idx_file_index_status ON file_index (status)")
    con.execute("UPDATE schema_meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with Database(path) as db:
        assert db.schema_version == SCHEMA_VERSION
        idx = db.cursor().execute("SELECT index_name FROM duckdb_indexes()").fetchall()
        assert ("idx_file_index_status",) not in idx
        assert FileTracker(db).get("/s/part/m/p.json") is not None


def test_v1_database_migrates_without_losing_rows(tmp_path: Path) -> None:
    """A populated v1 database gains status='indexed' on its rows and v1 inserts keep working."""
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    con.execute(V1_SCHEMA)
    con.executemany(
        "INSERT INTO file_index VALUES (?, 'part', 1.5, 10, ?, now(), NULL)",
        [(f"/s/part/m/p{i}.json", f"prt_{i}") for i in range(500)],
    )
    con.close()

    with Database(path) as db:
        cur = db.cursor()
        assert cur.execute(
            "SELECT count(*), min(status), max(status) FROM file_index"
        ).fetchall() == [(500, "indexed", "indexed")]
        assert cur.execute(
            "SELECT record_id, mtime, size FROM file_index WHERE file_path = '/s/part/m/p7.json'"
        ).fetchall() == [("prt_7", 1.5, 10)]
        cur.execute(
            "INSERT INTO file_index (file_path, file_type, mtime, size, record_id) "
            "VALUES ('/s/project/x.json', 'project', 2.0, 3, 'x')"
        )
        assert cur.execute(
            "SELECT status FROM file_index WHERE file_path = '/s/project/x.json'"
        ).fetchall() == [("indexed",)]
        assert db.schema_version == SCHEMA_VERSION


_SCHEMA_SQL = (
    "SELECT table_name, column_name, data_type, column_default, is_nullable "
    "FROM duckdb_columns() ORDER BY ALL"
)


def test_reopen_is_a_no_op(tmp_path: Path) -> None:
    """Opening an up-to-date database again changes neither rows nor schema."""
    path = tmp_path / "x.duckdb"
    with Database(path) as db:
        db.cursor().execute(
            "INSERT INTO file_index (file_path, file_type, mtime, size) VALUES ('p', 'part', 1, 1)"
        )
        before = db.cursor().execute(_SCHEMA_SQL).fetchall()
    with Database(path) as db:
        after = db.cursor().execute(_SCHEMA_SQL).fetchall()
        assert after == before
        assert db.cursor().execute("SELECT count(*) FROM file_index").fetchall() == [(1,)]


def test_not_a_duckdb_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a DuckDB database raises DatabaseError naming the file and the reason."""
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError) as info:
        Database(path).open()
    assert str(path) in str(info.value)
    assert "not a DuckDB database file" in str(info.value)


def test_locked_by_another_process_names_the_pid(tmp_path: Path) -> None:
    """A database held by another process raises DatabaseLockedError with that process's PID."""
    path = tmp_path / "locked.duckdb"
    Database(path).open().close()
    with held_by_another_process(path) as pid:
        with pytest.raises(DatabaseLockedError) as info:
            Database(path).open()
    assert info.value.pid == pid
    assert f"locked by process {pid}" in str(info.value)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer schema version is refused rather than downgraded."""
    path = tmp_path / "new.duckdb"
    with Database(path) as db:
        db.cursor().execute("UPDATE schema_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="newer"):
        Database(path).open()


def test_read_only_open_of_missing_file_fails_clearly(tmp_path: Path) -> None:
    """Opening a missing database read-only says there is no such file instead of creating one."""
    with pytest.raises(DatabaseError, match="no such file"):
        Database(tmp_path / "missing.duckdb", read_only=True).open()
    assert not (tmp_path / "missing.duckdb").exists()


def test_each_thread_gets_its_own_cursor(tmp_path: Path) -> None:
    """Cursors are per thread, and the same thread always gets the same cursor."""
    with Database(tmp_path / "x.duckdb") as db:
        mine = db.cursor()
        assert db.cursor() is mine
        seen: list[object] = []
        t = threading.Thread(target=lambda: seen.append(db.cursor()))
        t.start()
        t.join()
        assert seen and seen[0] is not mine


def test_transaction_rolls_back_on_error_and_nests(tmp_path: Path) -> None:
    """A failing transaction leaves nothing behind; a nested block joins its outer transaction."""
    with Database(tmp_path / "x.duckdb") as db:
        ins = "INSERT INTO file_index (file_path, file_type, mtime, size) VALUES (?, 'part', 1, 1)"
        with pytest.raises(RuntimeError), db.transaction() as cur:
            cur.execute(ins, ["a"])
            with db.transaction() as inner:
                assert inner is cur
                inner.execute(ins, ["b"])
            raise RuntimeError("boom")
        assert db.cursor().execute("SELECT count(*) FROM file_index").fetchall() == [(0,)]
        with db.transaction() as cur:
            cur.execute(ins, ["c"])
        assert db.cursor().execute("SELECT file_path FROM file_index").fetchall() == [("c",)]


def test_checkpoint_and_close_twice(tmp_path: Path) -> None:
    """Checkpoint succeeds on an open database and close is idempotent."""
    db = Database(tmp_path / "x.duckdb").open()
    db.checkpoint()
    db.close()
    db.close()
    assert not db.is_open
    with pytest.raises(DatabaseError, match="not open"):
        db.cursor()


def test_the_writer_keeps_row_groups_small_and_the_file_readable(tmp_path: Path) -> None:
    """Row groups of `ROW_GROUP_ROWS` (a checkpoint rewrites at most one per table), on every
    cursor of the writer; another reader opens the same file as a plain DuckDB database."""
    path = tmp_path / "x.duckdb"
    with Database(path) as db:
        with db.transaction() as cur:
            cur.execute("CREATE TABLE t AS SELECT range AS i FROM range(3 * ?)", [ROW_GROUP_ROWS])
        db.checkpoint()
        own = db.own_cursor()
        try:
            groups = own.execute(
                "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')"
            ).fetchall()
            assert groups == [(3,)]
            other = tmp_path / "other.csv"
            other.write_text("a\n1\n")
            with pytest.raises(duckdb.PermissionException):
                own.execute("SELECT * FROM read_csv(?)", [str(other)])
        finally:
            own.close()
    with duckdb.connect(str(path), read_only=True) as reader:
        assert reader.execute("SELECT count(*) FROM t").fetchall() == [(3 * ROW_GROUP_ROWS,)]


class _HeldScan:
    """A table whose scan blocks inside DuckDB until `release`: a statement that runs as long
    as the test wants."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.scanning, self._go = threading.Event(), threading.Event()
        schema = pa.schema([("x", pa.int64())])

        def batches() -> Iterator[pa.RecordBatch]:
            self.scanning.set()
            self._go.wait()
            yield pa.record_batch([pa.array([1, 2])], schema=schema)

        cur.register("held", pa.RecordBatchReader.from_batches(schema, batches()))

    def release(self) -> None:
        self._go.set()


def test_close_waits_for_a_statement_running_on_another_thread(tmp_path: Path) -> None:
    """DuckDB refuses to close a cursor while a call runs on it: the close waits for the
    statement to end, which gets its rows, then closes."""
    db = Database(tmp_path / "x.duckdb").open()
    rows: list[object] = []
    started: queue.Queue[_HeldScan] = queue.Queue()

    def reader() -> None:
        cur = db.cursor()
        started.put(_HeldScan(cur))
        rows.extend(cur.execute("SELECT sum(x) FROM held").fetchall())

    thread = threading.Thread(target=reader)
    thread.start()
    held = started.get()
    held.scanning.wait()
    closer = threading.Thread(target=db.close)
    closer.start()
    assert closer.is_alive() and not rows  # the statement still runs: nothing can be closed
    held.release()
    closer.join()
    thread.join()
    assert rows == [(3,)]
    assert not db.is_open


def test_close_gives_up_on_a_statement_that_does_not_end(tmp_path: Path) -> None:
    """Past its timeout the close raises DuckDB's refusal; the statement is not disturbed."""
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    cursors = ThreadCursors(con)
    cur = cursors.get()
    held = _HeldScan(cur)
    rows: list[object] = []
    thread = threading.Thread(
        target=lambda: rows.extend(cur.execute("SELECT sum(x) FROM held").fetchall())
    )
    thread.start()
    held.scanning.wait()
    with pytest.raises(duckdb.ResourceInUseException):
        cursors.close(timeout_s=0.01)
    held.release()
    thread.join()
    assert rows == [(3,)]
    con.close()


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default database lives in the user data directory ($XDG_DATA_HOME on Linux)."""
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_db_path({"XDG_DATA_HOME": str(tmp_path)}) == (
        tmp_path / "indexer-service" / "index.duckdb"
    )


def test_json_documents_of_a_few_kb_are_stored_compressed(tmp_path: Path) -> None:
    """Documents of 3.5 KB on average, some of them long (tool outputs), as the ``raw`` column
    holds them: DuckDB's own rule (zstd only from 4 KB on average) stored such a column
    uncompressed, 88 MB for these 69 MB of text; the index stores it in a fraction of that."""
    path = tmp_path / "x.duckdb"
    db = Database(path).open()
    try:
        with db.transaction() as cur:
            cur.execute("CREATE TABLE docs (raw VARCHAR)")
            cur.execute(
                """INSERT INTO docs SELECT '{"id": "prt_' || range || '", "text": "'
                || repeat('line ' || (range % 97) || ' of the output ',
                          CASE WHEN range % 50 = 0 THEN 3000 ELSE 100 END) || '"}'
                FROM range(20000)"""
            )
        db.checkpoint()
        text_bytes = db.cursor().execute("SELECT sum(strlen(raw)) FROM docs").fetchall()[0][0]
    finally:
        db.close()
    assert text_bytes > 60_000_000
    assert path.stat().st_size < text_bytes / 10
