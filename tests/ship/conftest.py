"""Fixtures for the sink's tests: a real PostgreSQL server (`tests/pg_server.py`), and a team
database filled from a generated local index (`team_data.fill`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_server import PgServer
from team_data import fill
from usage_truth import build_tree, load


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One server for the whole run (initdb once, ~0.7 s); tests get a database each."""
    server = PgServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The connection string of a new, empty database on the shared server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def own_pg_server() -> Iterator[PgServer]:
    """A server of the test's own, which it may stop, kill and start again."""
    server = PgServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def local_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local index of two months of generated sessions (sub-agents, crashes, errors)."""
    base = tmp_path_factory.mktemp("team")
    build_tree(base / "storage")
    load(base / "storage", base / "index.duckdb")
    return base / "index.duckdb"


@pytest.fixture(scope="session")
def team_url(pg_server: PgServer, local_db: Path) -> Iterator[str]:
    """A team database holding ``local_db``'s rows as machine m1 and again as m2 (read only:
    tests that write use `pg_url`)."""
    name = f"team_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    fill(local_db, pg_server.url(name))
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"DROP DATABASE {name} WITH (FORCE)")
