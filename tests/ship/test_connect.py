"""`ship.connect.connect` on a real server: what fails says why in one line, never with the
password, and the connection string's own options (TLS...) reach libpq as written."""

from __future__ import annotations

import socket

import pytest
from pg_server import PASSWORD, PgServer

from indexer_service.errors import ShipError
from indexer_service.ship.connect import APPLICATION_NAME, connect


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _failure(url: str) -> str:
    with pytest.raises(ShipError) as caught:
        connect(url, timeout=5)
    text = str(caught.value)
    assert "\n" not in text
    assert PASSWORD not in text
    return text


def test_a_good_url_connects_and_names_the_application(pg_url: str) -> None:
    """The connection works, and shows as indexer-service in pg_stat_activity."""
    with connect(pg_url, timeout=5) as con:
        row = con.execute("SELECT current_setting('application_name')").fetchone()
    assert row == (APPLICATION_NAME,)


def test_a_wrong_password(pg_server: PgServer) -> None:
    """One line: the server (password hidden), the refusal, and where passwords come from."""
    text = _failure(pg_server.url(password=PASSWORD + "x"))
    assert text == (
        f"cannot connect to postgresql://postgres:***@127.0.0.1:{pg_server.port}/postgres: "
        'password authentication failed for user "postgres" '
        "(check the password: in the URL, PGPASSWORD or ~/.pgpass)"
    )


def test_an_unreachable_host() -> None:
    """Nothing listening: connection refused, in one line."""
    port = _closed_port()
    text = _failure(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/db")
    assert text.startswith(f"cannot connect to postgresql://postgres:***@127.0.0.1:{port}/db: ")
    assert "Connection refused" in text


def test_a_missing_database(pg_server: PgServer) -> None:
    """The server answers that the database does not exist."""
    text = _failure(pg_server.url("no_such_db"))
    assert text.endswith(': database "no_such_db" does not exist')


def test_an_invalid_url_does_not_echo_its_password() -> None:
    """libpq quotes what it cannot parse, here the password itself: it is hidden there too,
    as written and decoded."""
    text = _failure(f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1/db")
    assert "invalid percent-encoded token" in text
    assert "%zz" not in text
    text = _failure(f"host=127.0.0.1 password={PASSWORD} port={_closed_port()} user")
    assert 'missing "=" after "user"' in text and "password=***" in text


def test_tls_options_reach_libpq(pg_server: PgServer) -> None:
    """sslmode in the URL takes effect: ``disable`` connects to this server without TLS,
    ``require`` is refused by libpq because the server offers none."""
    with connect(pg_server.url() + "?sslmode=disable", timeout=5) as con:
        assert con.info.parameter_status("server_version")
    text = _failure(pg_server.url() + "?sslmode=require&sslrootcert=/nonexistent/root.crt")
    assert text.endswith("server does not support SSL, but SSL was required")
    assert "sslrootcert=/nonexistent/root.crt" in text  # the URL shown as given, but its password
