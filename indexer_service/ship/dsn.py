"""PostgreSQL connection strings: which ones the sink takes, and how they are shown.

A connection string may carry a password (``postgresql://user:pw@host/db`` or
``password=pw`` in the key=value form); `redact` is the only way one is shown anywhere: logs,
``status``, ``/status`` and error messages.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from indexer_service.errors import ConfigError
from indexer_service.settings import is_pg_url

__all__ = ["redact", "redact_all", "require_postgres_url", "scheme_of"]

_KEY_VALUE_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(password=)[^&]*", re.IGNORECASE)
_ANY_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_USERINFO_IN_TEXT = re.compile(r"(?<![\w/:])([\w.%+-]+):[^\s'\"@/:]+@")
_PASSWORD_IN_TEXT = re.compile(r"(password\s*=\s*)(?!\*\*\*)[^\s'\"&]+", re.IGNORECASE)


def scheme_of(text: str) -> str | None:
    """The scheme of ``text`` if it is a URL (``mysql`` for ``mysql://...``), else None."""
    found = _ANY_URL.match(text)
    return found.group(1) if found else None


def require_postgres_url(text: str, setting: str) -> str:
    """``text`` if it is a PostgreSQL URL, else a `ConfigError` naming ``setting`` (and the
    value with any password hidden)."""
    if not is_pg_url(text):
        raise ConfigError(
            f"{setting}: {redact(text)!r} is not a PostgreSQL URL "
            "(postgresql://user@host:5432/database)"
        )
    return text


def redact(text: str) -> str:
    """``text`` with every password in it replaced by ``***`` (URL, its query, key=value);
    a URL of another scheme too, as one given by mistake is shown in the error."""
    if scheme_of(text) is not None:
        try:
            parts = urlsplit(text)
            netloc = parts.netloc
        except ValueError:
            return text.split("://", 1)[0] + "://***"
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return _KEY_VALUE_PASSWORD.sub(r"\1***", text)


def redact_all(text: str) -> str:
    """``text`` (a message that may quote what a person typed) with the password of every
    connection string in it replaced by ``***``: URLs anywhere in it, ``password=...``, and a
    ``user:password@host`` written without its scheme."""
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
    text = _USERINFO_IN_TEXT.sub(r"\1:***@", text)
    return _PASSWORD_IN_TEXT.sub(r"\1***", text)
