"""Read-only queries: the guard refuses every kind of write, file access and setting change;
allowed SELECTs run with parameters, a row limit and a time limit."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import pyarrow as pa
import pytest

from indexer_service.errors import QueryFailed, QueryRefused, QueryTimeout
from indexer_service.read import guard
from indexer_service.read.guard import check_read_only
from indexer_service.read.query import QueryResult, ReadOnlyQueries, jsonable, run_query
from indexer_service.sources.json_tree.file_index import FailedFile, FileTracker, IndexedFile
from indexer_service.store.database import Database

SLOW_SQL = "SELECT count(*) FROM range(100000) a, range(100000) b WHERE a.range + b.range < 0"
"""Ten billion rows: runs far longer than any time limit used here, until interrupted."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "index.duckdb") as database:
        tracker = FileTracker(database)
        tracker.mark_indexed_batch(
            [IndexedFile(f"/s/part/m/p{i}.json", "part", 1.0, 10, f"prt_{i}") for i in range(30)]
        )
        tracker.mark_error_batch([FailedFile("/s/part/m/bad.json", "part", 1.0, 3, "not JSON")])
        yield database


def refused(db: Database, sql: str) -> str:
    with pytest.raises(QueryRefused) as info:
        run_query(db, sql)
    return info.value.reason


# -- refused: statements that are not a single SELECT ------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        (
            "INSERT INTO file_index (file_path, file_type, mtime, size) VALUES ('x', 'p', 1, 1)",
            "INSERT",
        ),
        ("UPDATE file_index SET status = 'pending'", "UPDATE"),
        ("DELETE FROM file_index", "DELETE"),
        ("TRUNCATE file_index", "DELETE"),
        ("CREATE TABLE t (a INT)", "CREATE"),
        ("CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
        ("CREATE MACRO m(x) AS x", "CREATE"),
        ("DROP TABLE file_index", "DROP"),
        ("ALTER TABLE file_index ADD COLUMN c INT", "ALTER"),
    ],
    ids=[
        "insert",
        "update",
        "delete",
        "truncate",
        "create",
        "create-temp",
        "macro",
        "drop",
        "alter",
    ],
)
def test_writes_and_ddl_are_refused(db: Database, sql: str, kind: str) -> None:
    """Every data or schema change is refused by statement type, naming the type."""
    assert kind in refused(db, sql)
    assert run_query(db, "SELECT count(*) FROM file_index").rows == [(31,)]


def test_attach_is_refused(db: Database, tmp_path: Path) -> None:
    """ATTACH (and so any other database file) is refused."""
    assert "ATTACH" in refused(db, f"ATTACH '{tmp_path / 'other.duckdb'}' AS other")
    assert not (tmp_path / "other.duckdb").exists()


def test_install_and_load_are_refused(db: Database) -> None:
    """INSTALL and LOAD of extensions are refused."""
    assert "LOAD" in refused(db, "INSTALL httpfs")
    assert "LOAD" in refused(db, "LOAD httpfs")


def test_copy_to_a_file_is_refused(db: Database, tmp_path: Path) -> None:
    """COPY ... TO (copying data out) and EXPORT DATABASE are refused; no file appears."""
    out = tmp_path / "out.csv"
    assert "COPY" in refused(db, f"COPY file_index TO '{out}'")
    assert "COPY" in refused(db, f"COPY (SELECT * FROM file_index) TO '{out}'")
    assert "EXPORT" in refused(db, f"EXPORT DATABASE '{tmp_path / 'dump'}'")
    assert not out.exists()


@pytest.mark.parametrize(
    "sql",
    ["SET threads = 1", "RESET threads", "SET GLOBAL enable_external_access = true", "USE memory"],
)
def test_set_is_refused(db: Database, sql: str) -> None:
    """SET, RESET and USE, which change settings or the session, are refused."""
    assert "SET" in refused(db, sql)


@pytest.mark.parametrize("sql", ["PRAGMA threads = 1", "PRAGMA enable_profiling", "CHECKPOINT"])
def test_pragma_and_call_are_refused(db: Database, sql: str) -> None:
    """PRAGMA and CALL statements (settings, checkpoints) are refused."""
    refused(db, sql)


def test_transaction_control_is_refused(db: Database) -> None:
    """BEGIN/COMMIT cannot escape the read-only transaction the query runs in."""
    assert "TRANSACTION" in refused(db, "COMMIT")
    assert "TRANSACTION" in refused(db, "BEGIN TRANSACTION")


def test_multiple_statements_are_refused(db: Database) -> None:
    """A SELECT followed by a write is refused as a whole, before anything runs."""
    assert "exactly one statement" in refused(db, "SELECT 1; DELETE FROM file_index")
    assert run_query(db, "SELECT count(*) FROM file_index").rows == [(31,)]


# -- refused: SELECTs that would read files or have effects -------------------------------------


def test_read_text_of_etc_passwd_is_refused(db: Database) -> None:
    """read_text('/etc/passwd') is refused: queries cannot read files outside the index."""
    assert "read_text()" in refused(db, "SELECT content FROM read_text('/etc/passwd')")


def test_read_csv_is_refused(db: Database) -> None:
    """read_csv (and its _auto variant) is refused."""
    assert "read_csv()" in refused(db, "SELECT * FROM read_csv('/etc/passwd')")
    assert "read_csv_auto()" in refused(db, "SELECT * FROM read_csv_auto('/etc/passwd')")


def test_read_json_is_refused(db: Database) -> None:
    """read_json, also inside a subquery or CTE, is refused."""
    assert "read_json()" in refused(db, "SELECT * FROM read_json('/tmp/x.json')")
    sql = "WITH j AS (SELECT * FROM read_json('/tmp/x.json')) SELECT count(*) FROM j"
    assert "read_json()" in refused(db, sql)


def test_read_parquet_is_refused(db: Database) -> None:
    """read_parquet and parquet_metadata are refused."""
    assert "read_parquet()" in refused(db, "SELECT * FROM read_parquet('/tmp/x.parquet')")
    assert "parquet_metadata()" in refused(db, "SELECT * FROM parquet_metadata('/tmp/x.parquet')")


def test_read_blob_is_refused(db: Database) -> None:
    """read_blob is refused, even hidden in a scalar subquery."""
    sql = "SELECT (SELECT count(*) FROM read_blob('/etc/passwd')) AS n"
    assert "read_blob()" in refused(db, sql)


def test_glob_is_refused(db: Database) -> None:
    """glob() is refused (it lists files)."""
    assert "glob()" in refused(db, "SELECT * FROM glob('/etc/*')")


def test_file_path_as_table_name_is_refused(db: Database) -> None:
    """FROM '/etc/passwd' and FROM 'x.csv' (DuckDB's replacement scans of files) are refused."""
    assert "/etc/passwd" in refused(db, "SELECT * FROM '/etc/passwd'")
    assert "x.csv" in refused(db, "SELECT * FROM 'x.csv'")


def test_dynamic_sql_is_refused(db: Database) -> None:
    """query() and query_table() are refused: they run SQL the guard cannot see."""
    assert "query()" in refused(db, "SELECT * FROM query('SELECT * FROM read_text(''/x'')')")
    assert "query_table()" in refused(db, "SELECT * FROM query_table('file_index')")


def test_functions_with_side_effects_are_refused(db: Database) -> None:
    """checkpoint(), nextval() and setseed() are refused."""
    assert "checkpoint()" in refused(db, "SELECT * FROM checkpoint()")
    assert "nextval()" in refused(db, "SELECT nextval('s')")
    assert "setseed()" in refused(db, "SELECT setseed(0.5)")


def test_syntax_error_is_a_failure_not_a_refusal() -> None:
    """Text DuckDB cannot parse raises QueryFailed with DuckDB's message."""
    with pytest.raises(QueryFailed, match="syntax error"):
        check_read_only("SELEC 1")


# -- the other two fences hold on their own -----------------------------------------------------


def test_external_access_is_off_even_if_the_parse_check_is_bypassed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the guard disabled, DuckDB itself refuses to read /etc/passwd after a query ran."""
    monkeypatch.setattr("indexer_service.read.query.check_read_only", lambda sql: None)
    reason = refused(db, "SELECT content FROM read_text('/etc/passwd')")
    assert "external access is disabled" in reason
    assert "file system operations are disabled" in reason


def test_read_only_transaction_holds_if_the_parse_check_is_bypassed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the guard disabled, a write fails in the read-only transaction and changes nothing."""
    monkeypatch.setattr("indexer_service.read.query.check_read_only", lambda sql: None)
    assert "tried to write" in refused(db, "DELETE FROM file_index")
    assert run_query(db, "SELECT count(*) FROM file_index").rows == [(31,)]


def test_indexer_writes_still_work_after_the_fence(db: Database) -> None:
    """After a query turned external access off, Arrow registration, upserts and checkpoints
    (what the loader and reconciler do) still work."""
    run_query(db, "SELECT 1")
    flag = db.cursor().execute("SELECT current_setting('enable_external_access')").fetchall()
    assert flag == [(False,)]
    FileTracker(db).mark_indexed_batch([IndexedFile("/s/part/m/new.json", "part", 2.0, 5, "n")])
    cur = db.cursor()
    cur.register("_t", pa.table({"x": [1, 2, 3]}))
    assert cur.execute("SELECT sum(x) FROM _t").fetchall() == [(6,)]
    cur.unregister("_t")
    db.checkpoint()
    assert run_query(db, "SELECT count(*) FROM file_index").rows == [(32,)]


# -- allowed ------------------------------------------------------------------------------------


def test_select_with_positional_and_named_parameters(db: Database) -> None:
    """`?` and `$name` parameters are bound; columns and DuckDB types are reported."""
    r = run_query(db, "SELECT file_path, size FROM file_index WHERE record_id = ?", ["prt_3"])
    assert r.columns == ("file_path", "size")
    assert r.types == ("VARCHAR", "INTEGER")
    assert r.rows == [("/s/part/m/p3.json", 10)]
    r = run_query(db, "SELECT count(*) AS n FROM file_index WHERE status = $s", {"s": "error"})
    assert r.rows == [(1,)]
    assert r.truncated is False


@pytest.mark.parametrize(
    "sql",
    [
        "DESCRIBE file_index",
        "SUMMARIZE file_index",
        "SHOW TABLES",
        "FROM file_index SELECT count(*)",
        "WITH e AS (SELECT * FROM file_index WHERE status = 'error') SELECT count(*) FROM e",
        "SELECT table_name FROM duckdb_tables() ORDER BY 1",
        "SELECT * FROM range(3) r, unnest([1, 2]) u(x)",
        "SELECT key FROM json_each('{\"a\": 1}')",
        "SELECT file_type, count(*) FROM main.file_index GROUP BY ALL",
    ],
)
def test_ordinary_reads_are_allowed(db: Database, sql: str) -> None:
    """Inspection statements, CTEs, catalog functions, generators and JSON helpers run."""
    assert run_query(db, sql).rows


def test_row_limit_truncates_and_says_so(db: Database) -> None:
    """More rows than max_rows: exactly max_rows come back with truncated=True."""
    r = run_query(db, "SELECT * FROM range(1000000000)", max_rows=5)
    assert r.rows == [(0,), (1,), (2,), (3,), (4,)]
    assert r.truncated is True
    exact = run_query(db, "SELECT * FROM range(5)", max_rows=5)
    assert len(exact.rows) == 5 and exact.truncated is False


def test_time_limit_interrupts_a_slow_query(db: Database) -> None:
    """A query past its time limit is interrupted with QueryTimeout; the next query runs."""
    with pytest.raises(QueryTimeout, match="time limit"):
        run_query(db, SLOW_SQL, timeout_s=0.1)
    assert run_query(db, "SELECT 42").rows == [(42,)]


def test_queries_run_concurrently_with_writes(db: Database) -> None:
    """Queries in several threads each see a consistent snapshot while another thread writes."""
    tracker = FileTracker(db)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        for n in range(40):
            rows = [IndexedFile(f"/s/part/w/{n}-{i}.json", "part", 1.0, 1, None) for i in range(50)]
            with db.transaction():
                tracker.mark_indexed_batch(rows)
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                # within one snapshot, two scans of the table agree
                r = run_query(
                    db,
                    "SELECT (SELECT count(*) FROM file_index), "
                    "(SELECT count(*) FROM file_index WHERE status IN ('indexed', 'error'))",
                )
                ((a, b),) = r.rows
                assert a == b and (a - 31) % 50 == 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert run_query(db, "SELECT count(*) FROM file_index").rows == [(31 + 40 * 50,)]


async def test_async_queries_use_their_own_limit(db: Database) -> None:
    """ReadOnlyQueries runs in threads; max_rows may lower but never raise the service limit."""
    queries = ReadOnlyQueries(db, max_rows=10, timeout_s=5)
    r = await queries.query("SELECT * FROM range(100)", max_rows=3)
    assert len(r.rows) == 3 and r.truncated
    r = await queries.query("SELECT * FROM range(100)", max_rows=1000)
    assert len(r.rows) == 10 and r.truncated


async def test_cancelling_an_async_query_interrupts_it(db: Database) -> None:
    """Cancelling the caller interrupts the running query, so shutdown need not wait for it."""
    queries = ReadOnlyQueries(db, timeout_s=600)
    with anyio.move_on_after(0.2) as scope:
        await queries.query(SLOW_SQL)
    assert scope.cancelled_caught
    assert (await queries.query("SELECT 1")).rows == [(1,)]


def test_result_to_json_converts_values(db: Database) -> None:
    """Times become ISO strings, JSON columns parsed values, and from_json reads it back."""
    sql = (
        "SELECT TIMESTAMP '2026-01-02 03:04:05' AS t, DATE '2026-01-02' AS d, "
        "INTERVAL 90 SECOND AS i, 1.5::DECIMAL(4,2) AS m, '{\"a\": [1]}'::JSON AS j, "
        "'\\x01'::BLOB AS b, [1, 2] AS l, {'k': 'v'} AS s"
    )
    data = run_query(db, sql).to_json()
    assert data["rows"] == [
        ["2026-01-02T03:04:05", "2026-01-02", 90.0, 1.5, {"a": [1]}, "AQ==", [1, 2], {"k": "v"}]
    ]
    back = QueryResult.from_json(data)
    assert back.columns == ("t", "d", "i", "m", "j", "b", "l", "s")
    assert jsonable(Decimal("2.5")) == 2.5
    assert jsonable(dt.timedelta(minutes=1)) == 60.0


def test_allow_list_names_real_table_functions() -> None:
    """Every allow-listed table function exists in this DuckDB (catches renames on upgrade)."""
    import duckdb

    con = duckdb.connect()
    names = {
        r[0]
        for r in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table'"
        ).fetchall()
    }
    assert guard.ALLOWED_TABLE_FUNCTIONS <= names
