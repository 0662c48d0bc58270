"""Reading the index while the real service indexes a tree: in-process and HTTP queries each
see one consistent snapshot, and agree once the service is synced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from indexer_service.demo.synthetic import generate_tree
from indexer_service.http.client import find_service
from indexer_service.read.query import QueryResult
from indexer_service.service import IndexerService
from indexer_service.settings import Settings

pytestmark = pytest.mark.asyncio_only  # queries go through the HTTP API too (aiohttp)

# In one snapshot, every file marked indexed has its record row: rows and file_index are
# written in one transaction, so a reader must never see one without the other.
CONSISTENCY_SQL = """
SELECT
  (SELECT count(*) FROM file_index WHERE status = 'indexed') AS indexed,
  (SELECT count(*) FROM file_index f WHERE f.status = 'indexed' AND f.file_type = 'message'
     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_path = f.file_path)) AS messages_missing,
  (SELECT count(*) FROM file_index f WHERE f.status = 'indexed' AND f.file_type = 'part'
     AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.file_path = f.file_path)) AS parts_missing
"""


@pytest.mark.timeout(300)
async def test_queries_during_heavy_indexing_are_consistent(tmp_path: Path) -> None:
    """While the backfill of ~6,000 files runs, in-process and HTTP readers never see a file
    marked indexed without its row, counts never go backwards, and both agree at the end."""
    storage = tmp_path / "storage"
    tree = generate_tree(storage, files=6_000)
    settings = Settings(
        storage_path=storage,
        db_path=tmp_path / "index.duckdb",
        workers=2,
        http_enabled=True,
        http_port=0,
    )
    seen: dict[str, list[int]] = {"in_process": [], "http": []}
    done = anyio.Event()

    async def read(name: str, query: Callable[[str], Awaitable[QueryResult]]) -> None:
        while not done.is_set():
            result = await query(CONSISTENCY_SQL)
            indexed, messages_missing, parts_missing = result.rows[0]
            assert (messages_missing, parts_missing) == (0, 0)
            assert not seen[name] or indexed >= seen[name][-1]
            seen[name].append(indexed)

    async with IndexerService(settings, periodic_reconcile=False) as svc:
        client = await anyio.to_thread.run_sync(find_service, settings.db_path)
        assert client is not None

        async def via_http(sql: str) -> QueryResult:
            assert client is not None
            return await anyio.to_thread.run_sync(client.query, sql)

        async with anyio.create_task_group() as readers:
            readers.start_soon(read, "in_process", svc.query)
            readers.start_soon(read, "http", via_http)
            await svc.wait_until_synced()
            done.set()
        final_local = (await svc.query(CONSISTENCY_SQL)).rows
        final_http = (await via_http(CONSISTENCY_SQL)).rows
    assert final_local == final_http
    indexed = final_local[0][0]
    assert indexed >= tree.files - tree.counts.get("other", 0) - 5  # a few may be malformed
    assert seen["in_process"] and seen["http"]
