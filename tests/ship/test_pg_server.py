"""The test server itself: passwords are checked, and it survives a kill."""

from __future__ import annotations

import psycopg
import pytest
from pg_server import PgServer


def test_a_wrong_password_is_refused(pg_server: PgServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.url(password="wrong"))


def test_the_server_recovers_after_a_kill(own_pg_server: PgServer) -> None:
    with psycopg.connect(own_pg_server.url(), autocommit=True) as con:
        con.execute("CREATE TABLE t (x int)")
        con.execute("INSERT INTO t VALUES (1)")
    own_pg_server.kill()
    assert not own_pg_server.running()
    own_pg_server.start()
    with psycopg.connect(own_pg_server.url()) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
