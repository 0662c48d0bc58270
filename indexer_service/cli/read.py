"""``indexer-service status``, ``query`` and ``report``: read the index while it is served.

All ask the running service over its HTTP API when one holds the database (found through
``<db>.api.json``), and otherwise open the database file read-only. A process that holds the
file without serving the API leaves no way in; that is reported as an error. ``report --from
postgresql://...`` reads a team database instead (psycopg is imported only then).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from indexer_service.cli.logs import configure_logging
from indexer_service.errors import (
    ConfigError,
    DatabaseLockedError,
    IndexerError,
    QueryError,
    ShipError,
)
from indexer_service.http.client import ServiceClient, find_service
from indexer_service.limits import add_number
from indexer_service.read.query import (
    DEFAULT_MAX_ROWS,
    Params,
    QueryFn,
    QueryResult,
    run_query,
)
from indexer_service.reports.results import format_result
from indexer_service.reports.status import collect_status, format_status
from indexer_service.reports.usage import (
    REPORTS,
    ReportFilters,
    check_report,
    collect_report,
    format_report,
    parse_date,
)
from indexer_service.settings import Settings
from indexer_service.store.database import Database

__all__ = ["READ_COMMANDS", "add_read_commands", "run_read_command"]

READ_COMMANDS = ("status", "query", "report")

_DB_HELP = "DuckDB database file (default: ~/.local/share/indexer-service/index.duckdb)"


def add_read_commands(sub: Any) -> None:
    """Add ``status``, ``query`` and ``report`` to the CLI's subparsers."""
    status = sub.add_parser(
        "status", help="counts by type and status, latest errors, activity; service or not"
    )
    status.add_argument("--db", type=Path, metavar="FILE", help=_DB_HELP)
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    add_number(
        status,
        "--errors",
        "status_errors",
        metavar="N",
        what="latest errors shown",
        default_text="10",
        default=10,
    )

    query = sub.add_parser("query", help="run one read-only SELECT on the index")
    query.add_argument("sql", help="one SELECT statement (writes, files and settings are refused)")
    query.add_argument("--db", type=Path, metavar="FILE", help=_DB_HELP)
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    query.add_argument(
        "--params",
        metavar="JSON",
        help="parameters as a JSON list (?) or object ($name): '[\"x\"]'",
    )
    add_number(
        query,
        "--max-rows",
        "query_max_rows",
        metavar="N",
        what="row limit",
        default_text="10000",
    )
    add_number(
        query,
        "--timeout",
        "query_timeout_s",
        metavar="S",
        what="time limit without a service",
        default_text="30",
    )

    report = sub.add_parser("report", help="usage, cost, sessions, models, tools (analytics views)")
    report.add_argument(
        "kind", choices=REPORTS, help="which report (machines: per machine, with --from only)"
    )
    report.add_argument("--since", type=_date, metavar="DATE", help="from this UTC day on")
    report.add_argument("--until", type=_date, metavar="DATE", help="up to this UTC day")
    report.add_argument(
        "--project", metavar="DIR", help="sessions in DIR or under it (or a project id)"
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    source = report.add_mutually_exclusive_group()
    source.add_argument("--db", type=Path, metavar="FILE", help=_DB_HELP)
    source.add_argument(
        "--from",
        dest="from_url",
        metavar="URL",
        help="a team database (postgresql://user@host/db) the machines ship to: the team report",
    )
    report.add_argument(
        "--machine", metavar="ID", help="with --from: the records of this machine only"
    )


def _date(text: str) -> date:
    try:
        return parse_date(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_read_command(args: argparse.Namespace, *, warn_unknown: bool = True) -> int:
    """Run ``status``, ``query`` or ``report``; errors are raised as `IndexerError` for the CLI.
    ``warn_unknown``: log the ``INDEXER_*`` variables that name nothing (not twice in a run)."""
    configure_logging("auto", "warning")
    settings = Settings.from_env(db_path=args.db, warn_unknown=warn_unknown)
    db_path = settings.db_path
    if args.command == "report":
        filters = ReportFilters(args.since, args.until, args.project, args.machine)
        check_report(args.kind, filters, team=args.from_url is not None)
        if args.from_url is not None:
            return _team_report(args.from_url, args, filters, settings.query_timeout_s)
        return _report(find_service(db_path), db_path, args, filters)
    client = find_service(db_path)
    if args.command == "status":
        report = _status(client, db_path, args.errors)
        _out(json.dumps(report, indent=2) if args.json else format_status(report))
        return 0
    params = _params(args.params)
    max_rows = settings.query_max_rows if args.max_rows is None else args.max_rows
    timeout_s = settings.query_timeout_s if args.timeout is None else args.timeout
    if client is not None:
        result = client.query(args.sql, params, max_rows=max_rows)
    else:
        with _open_direct(db_path) as db:
            result = run_query(db, args.sql, params, max_rows=max_rows, timeout_s=timeout_s)
    _out(format_result(result, args.format))
    return 0


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _params(raw: str | None) -> Params:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"--params is not JSON: {exc}") from None
    if not isinstance(value, list | dict):
        raise ConfigError("--params must be a JSON list or object")
    return value


def _open_direct(db_path: Path) -> Database:
    db = Database(db_path, read_only=True)
    try:
        return db.open()
    except DatabaseLockedError as exc:
        holder = f"process {exc.pid}" if exc.pid is not None else "another process"
        raise IndexerError(
            f"database {db_path} is held by {holder}, which serves no HTTP API to read through "
            "(was it started with the API disabled?); stop it or enable its API"
        ) from None


def _report(
    client: ServiceClient | None, db_path: Path, args: argparse.Namespace, filters: ReportFilters
) -> int:
    if client is not None:
        result = collect_report(client.query, args.kind, filters)
    else:
        with _open_direct(db_path) as db:

            def direct(sql: str, params: Params) -> QueryResult:
                return run_query(db, sql, params, max_rows=DEFAULT_MAX_ROWS)

            result = collect_report(direct, args.kind, filters)
    _out(json.dumps(result.to_json(), indent=2) if args.json else format_report(result))
    return 0


_TEAM_CONNECT_TIMEOUT_S = 10.0


def _team_report(
    url: str, args: argparse.Namespace, filters: ReportFilters, timeout_s: float
) -> int:
    """``report --from URL``: the report over the team database (a `ShipError` if it cannot
    be read, saying which without the password)."""
    from indexer_service.ship.connect import connect
    from indexer_service.ship.dsn import redact, require_postgres_url
    from indexer_service.ship.pg_query import pg_query_fn

    require_postgres_url(url, "--from")
    with connect(url, timeout=_TEAM_CONNECT_TIMEOUT_S, autocommit=True) as con:
        query = pg_query_fn(con, timeout_s=timeout_s)
        try:
            result = collect_report(query, args.kind, filters, team=True)
        except QueryError as exc:
            raise ShipError(f"team database {redact(url)}: {exc.reason}") from None
    _out(json.dumps(result.to_json(), indent=2) if args.json else format_report(result))
    return 0


def _status(client: ServiceClient | None, db_path: Path, errors: int) -> dict[str, Any]:
    if client is not None:
        stats = client.status()
        _, reason = client.health()
        stats.update(pid=client.info.pid, url=client.info.url, health=reason)
        query: QueryFn = client.query
        return collect_status(query, db=str(db_path), service=stats, errors=errors)
    with _open_direct(db_path) as db:

        def direct(sql: str, params: Params) -> QueryResult:
            return run_query(db, sql, params, max_rows=DEFAULT_MAX_ROWS)

        return collect_status(direct, db=str(db_path), errors=errors)
