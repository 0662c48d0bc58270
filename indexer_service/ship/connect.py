"""Connections to the team database: `connect`, whose failures read as one line with no password.

The connection string goes to libpq as written, so every option in it (``sslmode``,
``sslrootcert``, ``options``...) takes effect; only ``connect_timeout`` and
``application_name`` are added, when the string has none. libpq's messages may quote the
string (an invalid one is echoed back), so a failure's text has the password taken out before
it is shown, as well as the string itself shown through `dsn.redact`.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from indexer_service.errors import ShipError
from indexer_service.settings import is_pg_url
from indexer_service.ship.dsn import redact

__all__ = ["APPLICATION_NAME", "connect", "failure_reason"]

APPLICATION_NAME = "indexer-service"
"""How the service's connections show in ``pg_stat_activity``."""

_SERVER_PREFIX = re.compile(
    r'^(connection failed: )?(connection to server at "[^"]*", port \d+ failed: )?'
)
_SEVERITY = re.compile(r"^(FATAL|ERROR):\s+")


def connect(url: str, *, timeout: float, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection to the PostgreSQL server of ``url`` (a ``postgresql://`` URL or a libpq
    key=value string), waiting at most ``timeout`` seconds for it (libpq counts whole seconds,
    2 at least). Raises `ShipError` with one line naming the server without its password: a
    wrong password, an unreachable host, a missing database, TLS refused..."""
    try:
        given = conninfo_to_dict(url)
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(2, math.ceil(timeout))
        if "application_name" not in given:
            extra["application_name"] = APPLICATION_NAME
        return psycopg.connect(url, autocommit=autocommit, **extra)
    except psycopg.Error as exc:
        raise ShipError(f"cannot connect to {redact(url)}: {failure_reason(exc, url)}") from None


def failure_reason(exc: BaseException, url: str) -> str:
    """libpq's or the server's message for ``exc`` on one line, without prefixes that repeat
    the server, and with the password of ``url`` (as written or decoded, wherever it stands
    as a word of its own) replaced by ``***``."""
    lines = []
    for raw in str(exc).splitlines():
        line = _SEVERITY.sub("", _SERVER_PREFIX.sub("", raw.strip())).strip()
        if line and line not in lines:
            lines.append(line)
    text = "; ".join(lines) or type(exc).__name__
    if "password authentication failed" in text:
        text += " (check the password: in the URL, PGPASSWORD or ~/.pgpass)"
    elif text.startswith("connection timeout expired"):
        text = "no answer from the server within the connection timeout"
    for secret in _passwords(url):  # as a whole word: "p" is no secret inside "response"
        text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
    return redact(text)


def _passwords(url: str) -> list[str]:
    """The password of ``url`` as written and decoded, longest first ([] when it has none)."""
    found: set[str] = set()
    try:
        password = conninfo_to_dict(url).get("password")
        if password:
            found.add(str(password))
    except psycopg.Error:
        pass  # an invalid string: its password is read from the URL below, as written
    if is_pg_url(url):
        try:
            userinfo = urlsplit(url).netloc.rpartition("@")[0]
        except ValueError:
            userinfo = url.partition("://")[2].rpartition("@")[0]
        if ":" in userinfo:
            written = userinfo.split(":", 1)[1]
            found.update({written, unquote(written)})
    for m in re.finditer(r"password=([^&\s]*)", url, re.IGNORECASE):
        found.update({m.group(1), unquote(m.group(1))})
    return sorted((p for p in found if p), key=len, reverse=True)
