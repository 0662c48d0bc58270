"""``run``'s options for the team database (``--ship-to URL``, ``--machine-id ID``), checked as
they are parsed: a bad value is a usage error that never quotes the URL, which may hold a
password."""

from __future__ import annotations

import argparse

from indexer_service.errors import ConfigError
from indexer_service.settings import check_machine_id, is_pg_url
from indexer_service.ship.dsn import scheme_of

__all__ = ["add_ship_options"]


def add_ship_options(run: argparse.ArgumentParser) -> None:
    """Add ``--ship-to`` and ``--machine-id`` to the ``run`` command."""
    run.add_argument(
        "--ship-to",
        type=_ship_url,
        metavar="URL",
        help="also ship the index to a team PostgreSQL (postgresql://user@host:5432/db); "
        "give the password by PGPASSWORD or ~/.pgpass, it is never shown (docs/team.md)",
    )
    run.add_argument(
        "--machine-id",
        type=_machine_id,
        metavar="ID",
        help="this machine's id on the team database (default: <hostname>-<8 hex digits>, "
        "generated once and kept in the index)",
    )


def _ship_url(text: str) -> str:
    if is_pg_url(text):
        return text
    scheme = scheme_of(text)
    given = f"a {scheme}:// URL" if scheme else "the value"
    raise argparse.ArgumentTypeError(
        f"{given} is not a PostgreSQL URL: give postgresql://user@host:5432/database "
        "(the value is not shown: it may hold a password)"
    )


def _machine_id(text: str) -> str:
    try:
        check_machine_id("machine id", text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
