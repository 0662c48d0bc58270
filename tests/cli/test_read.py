"""``indexer-service status`` and ``query``: directly on the database file when no service
runs, through the HTTP API when one does, and a clear error when neither is possible."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import pytest
from conftest import held_by_another_process, unstarted_stats

from indexer_service import ServiceStats
from indexer_service.cli.main import main
from indexer_service.http.metrics import Metrics
from indexer_service.http.server import serve_api
from indexer_service.read.query import Params, QueryResult, ReadOnlyQueries
from indexer_service.sources.json_tree.file_index import FailedFile, FileTracker, IndexedFile
from indexer_service.stats import scan_counts
from indexer_service.store.database import Database


def _fill(db: Database) -> None:
    tracker = FileTracker(db)
    tracker.mark_indexed_batch(
        [IndexedFile(f"/s/part/m/p{i}.json", "part", 1.0, 10, f"prt_{i}") for i in range(30)]
        + [IndexedFile("/s/session/p/ses_1.json", "session", 1.0, 10, "ses_1")]
    )
    tracker.mark_error_batch([FailedFile("/s/part/m/bad.json", "part", 1.0, 3, "not JSON")])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "index.duckdb"
    with Database(path) as db:
        _fill(db)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- no service: the file is opened read-only ---------------------------------------------------


def test_status_directly_on_the_file(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status without a service: counts by type and status, the latest error, not running."""
    code, out, _ = run(capsys, "status", "--db", str(db_path))
    assert code == 0
    assert "service:  not running" in out
    part = next(line for line in out.splitlines() if line.startswith("part "))
    assert part.split() == ["part", "1", "30", "31"]  # error, indexed, total
    assert "/s/part/m/bad.json" in out and "not JSON" in out
    assert "31 in the last hour" in out


def test_status_json_directly(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status --json: the same report as JSON."""
    code, out, _ = run(capsys, "status", "--db", str(db_path), "--json")
    report = json.loads(out)
    assert code == 0 and report["service"] == {"running": False}
    assert report["files"] == {"part": {"error": 1, "indexed": 30}, "session": {"indexed": 1}}
    assert report["recent_errors"][0]["error_message"] == "not JSON"
    assert report["last_reconcile"] is None


def test_query_table_format(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """query prints an aligned table with a row count."""
    sql = "SELECT file_type, count(*) AS n FROM file_index GROUP BY ALL ORDER BY n DESC"
    code, out, _ = run(capsys, "query", sql, "--db", str(db_path))
    assert code == 0
    assert out.splitlines() == [
        "file_type | n",
        "----------+---",
        "part      | 31",
        "session   | 1",
        "(2 rows)",
    ]


def test_query_json_and_csv_formats(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--format json prints the result object; --format csv a header and rows."""
    sql = "SELECT record_id, size FROM file_index WHERE record_id IN ('prt_1', 'prt_2') ORDER BY 1"
    code, out, _ = run(capsys, "query", sql, "--db", str(db_path), "--format", "json")
    assert code == 0 and json.loads(out)["rows"] == [["prt_1", 10], ["prt_2", 10]]
    code, out, _ = run(capsys, "query", sql, "--db", str(db_path), "--format", "csv")
    assert code == 0 and out == "record_id,size\nprt_1,10\nprt_2,10\n"


def test_query_params_and_row_limit(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--params binds values; --max-rows truncates and says so."""
    sql = "SELECT file_path FROM file_index WHERE file_type = ? ORDER BY 1"
    code, out, _ = run(
        capsys, "query", sql, "--db", str(db_path), "--params", '["part"]', "--max-rows", "2"
    )
    assert code == 0
    assert out.splitlines()[-1] == "(2 rows (truncated: more rows exist; raise --max-rows))"


def test_refused_query_exits_1(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused statement exits 1 with the reason on stderr and nothing on stdout."""
    code, out, err = run(capsys, "query", "DELETE FROM file_index", "--db", str(db_path))
    assert code == 1 and out == ""
    assert "query refused: DELETE statements are not allowed" in err


def test_missing_database_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status on a database that does not exist exits 1 and says so."""
    code, _, err = run(capsys, "status", "--db", str(tmp_path / "none.duckdb"))
    assert code == 1 and "no such file" in err


def test_locked_by_a_process_without_api(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A process holding the file without serving HTTP is reported, with its pid."""
    with held_by_another_process(db_path) as pid:
        code, _, err = run(capsys, "query", "SELECT 1", "--db", str(db_path))
    assert code == 1
    assert f"held by process {pid}, which serves no HTTP API" in err


# -- a running service: through its HTTP API ----------------------------------------------------


class Served:
    """A minimal served service over an open database (the file is then locked to others)."""

    def __init__(self, db: Database) -> None:
        self.metrics = Metrics()
        self._queries = ReadOnlyQueries(db, timeout_s=10)
        self._stats = unstarted_stats(db.path)
        self._stats["state"], self._stats["uptime_s"] = "running", 10.0
        workers = self._stats["workers"]
        workers["files_indexed"], workers["files_errors"] = 31, 1
        workers["batch_ms"] = {"p50": 4.0}
        reconciler = self._stats["reconciler"]
        reconciler["last_scan_at"], reconciler["last_scan_full"] = 1.8e9, True
        reconciler["last_duration_s"] = 0.2
        reconciler["last"] = scan_counts({"new": 2, "retried": 1})

    def stats(self) -> ServiceStats:
        return self._stats

    def health(self) -> tuple[bool, str]:
        return True, "running"

    async def query(
        self, sql: str, params: Params = None, *, max_rows: int | None = None
    ) -> QueryResult:
        return await self._queries.query(sql, params, max_rows=max_rows)


@pytest.mark.asyncio_only  # the HTTP API (aiohttp)
async def test_status_and_query_through_the_service(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a service running, status and query go through its API (the file is locked)."""
    with Database(db_path) as db:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_api, Served(db), db_path=db_path, port=0))
            status = await anyio.to_thread.run_sync(main, ["status", "--db", str(db_path)])
            s_out, _ = capsys.readouterr()
            args = ["query", "SELECT count(*) AS n FROM file_index", "--db", str(db_path)]
            query = await anyio.to_thread.run_sync(main, [*args, "--format", "csv"])
            q_out, q_err = capsys.readouterr()
            refused = await anyio.to_thread.run_sync(
                main, ["query", "DROP TABLE x", "--db", str(db_path)]
            )
            _, r_err = capsys.readouterr()
            tg.cancel_scope.cancel()
    assert status == 0
    assert "service:  running (pid" in s_out and "state running" in s_out
    assert "last reconciliation: 2027-01-15 08:00:00 UTC" in s_out
    assert "2 new, 0 modified, 1 retried, 0 deleted" in s_out
    assert "3.2 files/s since start" in s_out
    assert "not JSON" in s_out
    assert (query, q_out, q_err) == (0, "n\n32\n", "")
    assert refused == 1 and "query refused: DROP statements are not allowed" in r_err
