"""``indexer-service status`` for the SQLite source: each database with its rows, errors and
newest change, on the file directly and through a running service."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import anyio
import pytest

from indexer_service import IndexerService, Settings
from indexer_service.cli import main
from indexer_service.demo.synthetic import TreeSpec, generate_db


def _database_with_a_bad_part(tmp_path: Path) -> tuple[Path, str]:
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=2, seed=9))
    with sqlite3.connect(opencode) as con:
        bad = con.execute("SELECT id FROM part ORDER BY rowid LIMIT 1").fetchone()[0]
        con.execute("UPDATE part SET data = '{\"type\": ' WHERE id = ?", [bad])
    return opencode, bad


async def test_status_on_the_file_shows_each_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No service running: the counts by kind, the error row and the newest change are read
    from the index file."""
    opencode, bad = _database_with_a_bad_part(tmp_path)
    index = tmp_path / "index.duckdb"
    settings = Settings(opencode_db=opencode, db_path=index, http_enabled=False)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        parts = (await svc.file_counts())["part"]["indexed"]
    assert main(["status", "--db", str(index)]) == 0
    out = capsys.readouterr().out
    assert f"opencode database {opencode}" in out
    assert f"part {parts:,}" in out and "; 1 error" in out
    assert f"sqlite:{opencode} part {bad}" in out and "truncated JSON" in out
    assert "newest change indexed: never" not in out
    assert re.search(r"^throughput: [1-9][\d,]* records indexed in the last minute", out, re.M)
    assert main(["status", "--db", str(index), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["databases"][f"sqlite:{opencode}"]["rows"]
    assert rows["part"] == {"indexed": parts, "error": 1}


@pytest.mark.asyncio_only  # the HTTP API (aiohttp)
async def test_status_through_the_service_shows_its_polls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running service adds whether each database is readable and what its polls did."""
    opencode, _ = _database_with_a_bad_part(tmp_path)
    index = tmp_path / "index.duckdb"
    settings = Settings(opencode_db=opencode, db_path=index, http_enabled=True, http_port=0)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        code = await anyio.to_thread.run_sync(main, ["status", "--db", str(index), "--json"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])  # after the service's own log lines
    assert report["service"]["running"] is True
    service = report["databases"][f"sqlite:{opencode}"]["service"]
    assert service["exists"] is True and service["unavailable"] is None
    assert service["polls"] >= 1
