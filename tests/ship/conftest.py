"""Fixtures for the sink's tests: a real PostgreSQL server (`tests/pg_server.py`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pg_server import PgServer


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
