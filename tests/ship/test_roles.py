"""The team setup of docs/operations.md, run as written: its roles ship and report with no more
rights than it grants them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import anyio
import psycopg
import pytest
from conftest import LogEvents, TreeFactory
from pg_server import PgServer

from indexer_service import IndexerService, Settings
from indexer_service.cli.main import main
from ship.shipped import index_rows, shipped_everything, team_rows, until_logged

pytestmark = pytest.mark.asyncio_only  # the sink's own code is backend-neutral; one is enough

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"


def _documented_sql() -> list[list[str]]:
    """The SQL blocks of the team section, each as its statements."""
    section = OPERATIONS.read_text().split("\n## A team database")[1].split("\n## ")[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    return [[s.strip() for s in block.split(";") if s.strip()] for block in blocks]


def _url(server: PgServer, role: str) -> str:
    return f"postgresql://{role}:pw-{role}@127.0.0.1:{server.port}/opencode_team"


async def _until_failing(svc: IndexerService, events: LogEvents) -> str:
    await until_logged(events, "sink_failed", lambda: svc.stats()["sink"]["state"] == "failing")
    return str(svc.stats()["sink"]["error"])


async def test_the_documented_roles_ship_and_report(
    own_pg_server: PgServer,
    storage_tree: TreeFactory,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    log_events: LogEvents,
) -> None:
    """The sink's role cannot create the schema (its service says so and keeps indexing);
    once the owner's first start did, it ships; it cannot drop or create a table; the
    reader's role reports over both machines and cannot write."""
    as_superuser, in_team_database = _documented_sql()
    with psycopg.connect(own_pg_server.url(), autocommit=True) as con:
        for statement in as_superuser:
            con.execute(statement)
        for role in ("indexer_owner", "indexer_sink", "indexer_reader"):
            con.execute(f"ALTER ROLE {role} PASSWORD 'pw-{role}'")
    with psycopg.connect(own_pg_server.url("opencode_team"), autocommit=True) as con:
        for statement in in_team_database:
            con.execute(statement)

    storage_tree(sessions=1)
    machines = {"admin": "indexer_owner", "ada": "indexer_sink"}
    settings = {
        machine: make_settings(
            ship_to=_url(own_pg_server, role),
            machine_id=machine,
            db_path=tmp_path / f"{machine}.duckdb",
        )
        for machine, role in machines.items()
    }
    async with IndexerService(settings["ada"]) as svc:  # before the schema exists
        await svc.wait_until_synced()
        error = await _until_failing(svc, log_events)
    assert "refused the schema: permission denied for schema public" in error

    for machine in machines:
        async with IndexerService(settings[machine]) as svc:
            await svc.wait_until_synced()
            await shipped_everything(svc)
            assert svc.health() == (True, "running")
    team = own_pg_server.url("opencode_team")
    for machine in machines:
        assert team_rows(team, machine) == index_rows(settings[machine].db_path)

    with psycopg.connect(_url(own_pg_server, "indexer_sink"), autocommit=True) as con:
        for statement in ("DROP TABLE parts", "CREATE TABLE mine (a int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(statement)
    reader = _url(own_pg_server, "indexer_reader")
    with psycopg.connect(reader, autocommit=True) as con:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("DELETE FROM parts")
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, ["report", "machines", "--from", reader, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sorted(row["machine_id"] for row in report["rows"]) == ["ada", "admin"]
