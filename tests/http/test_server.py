"""The HTTP API on a real socket over a real database: token, health, status, metrics, queries,
discovery files, loopback-only binding, and the stdlib client."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from conftest import unstarted_stats
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from indexer_service import ServiceStats
from indexer_service.errors import ApiError, ConfigError, QueryRefused
from indexer_service.http.client import ServiceClient, find_service
from indexer_service.http.discovery import ServiceInfo, discovery_path, token_path
from indexer_service.http.metrics import Metrics
from indexer_service.http.server import is_loopback, serve_api
from indexer_service.model import ScanReport
from indexer_service.read.query import Params, QueryResult, ReadOnlyQueries
from indexer_service.sources.json_tree.file_index import FailedFile, FileTracker, IndexedFile
from indexer_service.store.database import Database

pytestmark = pytest.mark.asyncio_only  # aiohttp, client and server, needs asyncio

SLOW_SQL = "SELECT count(*) FROM range(100000) a, range(100000) b WHERE a.range + b.range < 0"


class FakeService:
    """The `ServedService` protocol over a real database, with a settable health; its stats
    are a real (unstarted) service's snapshot with a few values set."""

    def __init__(self, db: Database, *, timeout_s: float = 10.0, max_rows: int = 100) -> None:
        self.metrics = Metrics()
        self.queries = ReadOnlyQueries(db, max_rows=max_rows, timeout_s=timeout_s)
        self.healthy = (True, "running")
        self._stats = unstarted_stats(db.path)
        self._stats["state"], self._stats["uptime_s"] = "running", 2.5
        self._stats["files"] = {"part": {"indexed": 30, "error": 1}, "session": {"indexed": 2}}
        self._stats["accumulator"]["pending"] = 7
        self._stats["workers"]["busy"] = 1

    def stats(self) -> ServiceStats:
        return self._stats

    def health(self) -> tuple[bool, str]:
        return self.healthy

    async def query(
        self, sql: str, params: Params = None, *, max_rows: int | None = None
    ) -> QueryResult:
        return await self.queries.query(sql, params, max_rows=max_rows)


@dataclass
class Api:
    port: int
    token: str
    http: aiohttp.ClientSession

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.duckdb"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    with Database(db_path) as database:
        tracker = FileTracker(database)
        tracker.mark_indexed_batch(
            [IndexedFile(f"/s/part/m/p{i}.json", "part", 1.0, 10, f"prt_{i}") for i in range(30)]
        )
        tracker.mark_error_batch([FailedFile("/s/part/m/bad.json", "part", 1.0, 3, "not JSON")])
        yield database


@pytest.fixture
def svc(db: Database) -> FakeService:
    return FakeService(db)


@asynccontextmanager
async def running_api(svc: FakeService, db_path: Path, **kwargs: Any) -> AsyncIterator[Api]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(serve_api, svc, db_path=db_path, port=0, **kwargs))
        token = token_path(db_path).read_text().strip()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            yield Api(port, token, http)
        tg.cancel_scope.cancel()


# -- token and health ---------------------------------------------------------------------------


async def test_healthz_needs_no_token(svc: FakeService, db_path: Path) -> None:
    """/healthz answers 200 without a token while the pipeline runs."""
    async with running_api(svc, db_path) as api, api.http.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "reason": "running"}


async def test_healthz_503_with_reason_when_unhealthy(svc: FakeService, db_path: Path) -> None:
    """/healthz answers 503 with the service's reason when the pipeline is not running."""
    svc.healthy = (False, "state is stopping")
    async with running_api(svc, db_path) as api, api.http.get("/healthz") as resp:
        assert resp.status == 503
        assert (await resp.json())["reason"] == "state is stopping"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/status"), ("GET", "/metrics"), ("POST", "/query"), ("GET", "/nowhere")],
)
async def test_token_required(svc: FakeService, db_path: Path, method: str, path: str) -> None:
    """Every endpoint but /healthz answers 401 without a token and 403 with a wrong one."""
    async with running_api(svc, db_path) as api:
        async with api.http.request(method, path) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert str(token_path(db_path)) in (await resp.json())["reason"]
        wrong = {"Authorization": "Bearer " + "x" * len(api.token)}
        async with api.http.request(method, path, headers=wrong) as resp:
            assert resp.status == 403


async def test_token_file_is_private_and_files_go_away_at_stop(
    svc: FakeService, db_path: Path
) -> None:
    """The token file is mode 0600 next to the database; discovery names host, port and pid;
    both are removed when the API stops."""
    async with running_api(svc, db_path) as api:
        assert stat.S_IMODE(token_path(db_path).stat().st_mode) == 0o600
        assert stat.S_IMODE(discovery_path(db_path).stat().st_mode) == 0o600
        info = json.loads(discovery_path(db_path).read_text())
        assert info["host"] == "127.0.0.1" and info["port"] == api.port
        assert info["pid"] == os.getpid() and info["db"] == str(db_path)
        assert len(api.token) >= 32
    assert not token_path(db_path).exists()
    assert not discovery_path(db_path).exists()


# -- status and metrics -------------------------------------------------------------------------


async def test_status_is_stats_plus_recent_errors(svc: FakeService, db_path: Path) -> None:
    """/status returns stats() as JSON with the latest file errors and their messages."""
    async with running_api(svc, db_path) as api, api.http.get("/status", headers=api.auth) as r:
        assert r.status == 200
        data = await r.json()
    assert data["state"] == "running" and data["files"]["part"]["error"] == 1
    [error] = data["recent_errors"]
    assert error["file_path"] == "/s/part/m/bad.json" and error["error_message"] == "not JSON"


async def test_metrics_parse_as_prometheus_text(svc: FakeService, db_path: Path) -> None:
    """/metrics is Prometheus text format with files by type and status, errors, batches,
    latency histograms, accumulator pending and reconcile durations and findings."""
    svc.metrics.batch_done(
        indexed_by_type={"part": 40, "message": 5}, errors=2, seconds=0.03, latencies_s=[0.25, 0.4]
    )
    svc.metrics.reconcile_done(ScanReport(False, 0.8, {"new": 3, "deleted": 1}))
    async with running_api(svc, db_path) as api, api.http.get("/metrics", headers=api.auth) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("indexer_files", (("file_type", "part"), ("status", "error")))] == 1
    assert samples[("indexer_files_indexed_total", (("file_type", "part"),))] == 40
    assert samples[("indexer_file_errors_total", ())] == 2
    assert samples[("indexer_batches_total", ())] == 1
    assert families["indexer_batch_seconds"].type == "histogram"
    assert samples[("indexer_event_to_index_seconds_count", ())] == 2
    assert samples[("indexer_accumulator_pending", ())] == 7
    assert samples[("indexer_reconcile_seconds_sum", ())] == 0.8
    assert samples[("indexer_reconcile_findings_total", (("kind", "new"),))] == 3
    assert samples[("indexer_reconcile_findings_total", (("kind", "modified"),))] == 0


def test_each_metrics_instance_has_its_own_registry() -> None:
    """Two services in one process do not share or clash on metrics."""
    a, b = Metrics(), Metrics()
    a.batch_done(indexed_by_type={"part": 1}, seconds=0.1)
    assert b"indexer_batches_total 1.0" in a.render()
    assert b"indexer_batches_total 0.0" in b.render()


# -- queries ------------------------------------------------------------------------------------


async def test_query_returns_rows_as_json(svc: FakeService, db_path: Path) -> None:
    """POST /query runs a parameterised SELECT and returns columns, types and rows."""
    body = {
        "sql": "SELECT file_path, size FROM file_index WHERE record_id = ?",
        "params": ["prt_7"],
    }
    async with running_api(svc, db_path) as api:
        async with api.http.post("/query", json=body, headers=api.auth) as r:
            assert r.status == 200
            data = await r.json()
    assert data["columns"] == ["file_path", "size"] and data["types"] == ["VARCHAR", "INTEGER"]
    assert data["rows"] == [["/s/part/m/p7.json", 10]] and data["truncated"] is False


async def test_query_row_limit(svc: FakeService, db_path: Path) -> None:
    """The service's row limit caps results (truncated: true); a request may ask for fewer."""
    async with running_api(svc, db_path) as api:
        body = {"sql": "SELECT * FROM range(1000)"}
        async with api.http.post("/query", json=body, headers=api.auth) as r:
            data = await r.json()
        assert data["row_count"] == 100 and data["truncated"] is True
        async with api.http.post("/query", json={**body, "max_rows": 3}, headers=api.auth) as r:
            assert (await r.json())["rows"] == [[0], [1], [2]]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("INSERT INTO file_index (file_path) VALUES ('x')", "INSERT"),
        ("ATTACH '/tmp/other.duckdb' AS o", "ATTACH"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("COPY file_index TO '/tmp/out.csv'", "COPY"),
        ("SET threads = 1", "SET"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("SELECT * FROM read_text('/etc/passwd')", "read_text()"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
        ("SELECT * FROM read_json('/tmp/x.json')", "read_json()"),
        ("SELECT * FROM read_parquet('/tmp/x.parquet')", "read_parquet()"),
        ("SELECT * FROM glob('/etc/*')", "glob()"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
    ],
    ids=[
        "insert",
        "attach",
        "install",
        "load",
        "copy",
        "set",
        "pragma",
        "read_text",
        "read_csv",
        "read_json",
        "read_parquet",
        "glob",
        "two-statements",
    ],
)
async def test_refused_queries_answer_400_with_reason(
    svc: FakeService, db_path: Path, sql: str, reason: str
) -> None:
    """Each refused statement kind answers 400 {"error": "refused"} with the reason."""
    async with running_api(svc, db_path) as api:
        async with api.http.post("/query", json={"sql": sql}, headers=api.auth) as r:
            assert r.status == 400
            data = await r.json()
    assert data["error"] == "refused" and reason in data["reason"]


async def test_query_time_limit_answers_408(db: Database, db_path: Path) -> None:
    """A query past the service's time limit is interrupted and answers 408."""
    svc = FakeService(db, timeout_s=0.1)
    async with running_api(svc, db_path) as api:
        async with api.http.post("/query", json={"sql": SLOW_SQL}, headers=api.auth) as r:
            assert r.status == 408
            assert (await r.json())["error"] == "timeout"
        text = await (await api.http.get("/metrics", headers=api.auth)).text()
    assert 'indexer_queries_total{outcome="timeout"} 1.0' in text


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'["SELECT 1"]',
        b'{"sql": 1}',
        b'{"sql": "SELECT 1", "params": "x"}',
        b'{"sql": "SELECT 1", "max_rows": -1}',
    ],
)
async def test_malformed_query_body_answers_400(
    svc: FakeService, db_path: Path, body: bytes
) -> None:
    """A body that is not {"sql": str, "params": list|object, "max_rows": int} answers 400."""
    async with running_api(svc, db_path) as api:
        async with api.http.post("/query", data=body, headers=api.auth) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "bad_request"


# -- binding ------------------------------------------------------------------------------------


def test_is_loopback() -> None:
    """Loopback addresses and localhost count as loopback; anything else does not."""
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.10", "example.com", ""]))


async def test_default_bind_is_loopback(svc: FakeService, db_path: Path) -> None:
    """Without a host argument the API listens on 127.0.0.1."""
    async with running_api(svc, db_path):
        assert json.loads(discovery_path(db_path).read_text())["host"] == "127.0.0.1"


async def test_non_loopback_bind_needs_the_flag(svc: FakeService, db_path: Path) -> None:
    """Binding 0.0.0.0 without allow_remote raises ConfigError before listening or writing."""
    with pytest.raises(ConfigError, match="http_allow_remote"):
        await serve_api(svc, db_path=db_path, host="0.0.0.0", port=0)
    assert not token_path(db_path).exists()


async def test_non_loopback_bind_with_the_flag_warns(svc: FakeService, db_path: Path) -> None:
    """With allow_remote a non-loopback bind works and logs a warning."""
    with capture_logs() as logs:
        async with running_api(svc, db_path, host="0.0.0.0", allow_remote=True) as api:
            async with api.http.get("/healthz") as r:
                assert r.status == 200
    assert any(e["event"] == "api_remote_bind" and e["log_level"] == "warning" for e in logs)


async def test_port_in_use_is_a_clear_error(svc: FakeService, db_path: Path) -> None:
    """A port another socket listens on raises ConfigError naming the address; no files left."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve the API on 127.0.0.1:{port}"):
            await serve_api(svc, db_path=db_path, port=port)
    assert not discovery_path(db_path).exists()


@pytest.mark.parametrize("anyio_backend", ["trio"])  # the one test of this module on trio
async def test_serving_under_trio_is_a_config_error(svc: FakeService, db_path: Path) -> None:
    """aiohttp runs only on asyncio: under trio, ConfigError says so; nothing is written."""
    with pytest.raises(ConfigError, match="needs anyio's asyncio backend"):
        await serve_api(svc, db_path=db_path, port=0)
    assert not token_path(db_path).exists() and not discovery_path(db_path).exists()


# -- the client ---------------------------------------------------------------------------------


def test_find_service_without_discovery_file(db_path: Path) -> None:
    """No discovery file: no service."""
    assert find_service(db_path) is None


def test_find_service_ignores_a_dead_pid(db_path: Path) -> None:
    """A discovery file left by a process that died is ignored."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = {"host": "127.0.0.1", "port": 1, "pid": int(child.stdout), "db": str(db_path)}
    discovery_path(db_path).write_text(json.dumps(info))
    assert find_service(db_path) is None


def test_find_service_ignores_a_port_that_does_not_answer(db_path: Path) -> None:
    """A live pid whose port accepts no connection is not a service."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    info = {"host": "127.0.0.1", "port": port, "pid": os.getpid(), "db": str(db_path)}
    discovery_path(db_path).write_text(json.dumps(info))
    assert find_service(db_path) is None


async def test_client_through_the_api(svc: FakeService, db_path: Path) -> None:
    """find_service finds the running API; the client's query, status and errors match
    the in-process ones."""
    async with running_api(svc, db_path) as api:

        def use() -> None:
            client = find_service(db_path)
            assert client is not None and client.info.port == api.port
            r = client.query(
                "SELECT count(*) AS n FROM file_index WHERE status = $s", {"s": "indexed"}
            )
            assert r.columns == ("n",) and r.rows == [(30,)]
            assert client.status()["recent_errors"][0]["error_message"] == "not JSON"
            assert client.health() == (True, "running")
            assert "indexer_files" in client.metrics()
            with pytest.raises(QueryRefused, match="read_text"):
                client.query("SELECT * FROM read_text('/etc/passwd')")
            bad = ServiceClient(client.info, token="wrong")
            with pytest.raises(ApiError, match="refused the token"):
                bad.status()

        await anyio.to_thread.run_sync(use)


def test_service_info_url_brackets_ipv6() -> None:
    """IPv6 hosts are bracketed in the URL."""
    assert ServiceInfo("::1", 80, 1, "x").url == "http://[::1]:80"
