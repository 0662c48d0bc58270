"""The ``indexer-service`` command line: argument parsing, settings, logging setup, exit codes.

The library raises; only the CLI turns errors into exit codes (here) and installs signal
handlers (`cli.serve`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

import indexer_service.cli.serve as serve
from indexer_service._version import __version__
from indexer_service.cli.logs import LOG_FORMATS, LOG_LEVELS, configure_logging, log_options
from indexer_service.cli.read import READ_COMMANDS, add_read_commands, run_read_command
from indexer_service.cli.rebuild import rebuild
from indexer_service.cli.serve import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from indexer_service.cli.ship import add_ship_options
from indexer_service.errors import IndexerError, first_of
from indexer_service.limits import add_number, option
from indexer_service.settings import Settings, warn_unknown_variables
from indexer_service.ship.dsn import redact_all
from indexer_service.sources.discover import discover

DESCRIPTION = """\
Keep a DuckDB analytics database continuously and exactly in sync with OpenCode's records:
its SQLite database (~/.local/share/opencode/opencode.db) and its legacy JSON storage tree.

commands:
  run     follow OpenCode's stores and keep the database in sync until stopped (Ctrl-C)
  index   one-shot: bring the database in line with the stores, print a summary, exit
  rebuild set the database file aside (kept, renamed) and index the stores again, e.g. when
          it is damaged
  status  counts by file type and status, latest errors, activity, whether a service runs
  query   run one read-only SELECT (through the running service, or on the file directly)
  report  daily/monthly usage, sessions, models, tools: tokens, cost, errors (read-only)
  demo    the service on a generated tree that a simulated agent keeps writing to, then reports
"""

INDEX_WRITE_FAILURE_TIMEOUT = 60.0
"""`Settings.write_failure_timeout` for ``index``: a one-shot run ends rather than wait for
space for ever (the service itself retries until it is stopped)."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a usage error on one line (exit 2) instead of the usage first,
    and without the password of a connection string it quotes (a mistyped option's URL)."""

    def error(self, message: str) -> NoReturn:
        message = redact_all(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser, paths: bool = True) -> None:
    if paths:
        p.add_argument(
            "--opencode-db",
            type=Path,
            metavar="FILE",
            help="OpenCode's SQLite database, opencode >= 1.2 (waited for if it does not exist)",
        )
        p.add_argument(
            "--storage",
            type=Path,
            metavar="DIR",
            help="OpenCode's legacy storage tree, opencode 1.0-1.1. With neither option, both "
            "are looked for: ~/.local/share/opencode/opencode*.db and .../storage "
            "(under $XDG_DATA_HOME if set)",
        )
        p.add_argument(
            "--db",
            type=Path,
            metavar="FILE",
            help="DuckDB database file (default: ~/.local/share/indexer-service/index.duckdb)",
        )
    add_number(
        p,
        "--workers",
        "workers",
        metavar="N",
        what="batches in flight; one is read and one written at a time",
        default_text="CPU count, at least 4",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log renderer (default: console on a TTY, JSON lines otherwise)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="minimum level logged (default: info)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="indexer-service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every option can also be set as an INDEXER_<NAME> environment variable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the service in the foreground")
    _common(run)
    add_number(
        run,
        "--window-ms",
        "window_ms",
        metavar="MS",
        what="batch window",
        default_text="200",
    )
    add_number(
        run,
        "--max-files",
        "max_files",
        metavar="N",
        what="files per batch",
        default_text="100",
    )
    add_number(
        run,
        "--max-file-bytes",
        "max_file_bytes",
        metavar="N",
        what="larger files get status 'error' without being read",
        default_text="67108864, 64 MiB",
    )
    add_number(
        run,
        "--reconcile-interval",
        "reconcile_interval",
        metavar="S",
        what="seconds between scans",
        default_text="30",
    )
    add_number(
        run,
        "--shutdown-timeout",
        "shutdown_timeout",
        metavar="S",
        what="clean shutdown budget",
        default_text="10",
    )
    run.add_argument("--no-watch", action="store_true", help="no file watcher: periodic scans only")
    run.add_argument(
        "--http-port",
        type=option("http_port"),
        metavar="PORT",
        help="HTTP API port on 127.0.0.1, 0 for any free one (default: 8765)",
    )
    run.add_argument("--http-host", metavar="ADDR", help="HTTP API address (default: 127.0.0.1)")
    run.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --http-host (plain HTTP: the token travels in clear)",
    )
    run.add_argument("--no-http", action="store_true", help="serve no HTTP API")
    add_ship_options(run)
    run.add_argument(
        "--demo-if-missing",
        action="store_true",
        help="run the demo instead when the storage tree does not exist and neither --storage nor "
        "INDEXER_STORAGE_PATH names one (what `make run` does)",
    )

    index = sub.add_parser("index", help="one-shot: sync the database with the tree, then exit")
    _common(index)
    index.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_number(
        index,
        "--write-failure-timeout",
        "write_failure_timeout",
        metavar="S",
        what="give up (exit 1) once database writes have kept failing this long, e.g. on a full disk",
        default_text=f"{INDEX_WRITE_FAILURE_TIMEOUT:g}",
    )
    rebuild = sub.add_parser(
        "rebuild",
        help="set the database aside as <file>.damaged-<time> and index the stores again",
    )
    _common(rebuild)
    rebuild.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_read_commands(sub)
    _add_demo(sub)
    return parser


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="watch the service index a generated OpenCode store that a simulated agent writes to",
        description="Generate an OpenCode database (opencode.db; with --legacy-tree a JSON "
        "storage tree) in a temporary directory, index it with the real service, then write to "
        "it like a working agent (new sessions, tool calls, streamed text, deletions, malformed "
        "records) while a status line shows records indexed, records/s, p95 event-to-index "
        "latency, pending records and errors. At the end (or on Ctrl-C) it prints `report "
        "daily` and `status` for the demo database and removes the directory. Options may also "
        "be set as INDEXER_DEMO_<NAME> variables.",
    )
    add_number(
        demo,
        "--sessions",
        "demo_sessions",
        metavar="N",
        what="sessions generated",
        default_text="20, ~7k records",
    )
    add_number(
        demo,
        "--rate",
        "demo_rate",
        metavar="PER_S",
        what="records the agent writes/s",
        default_text="100",
    )
    add_number(
        demo,
        "--duration",
        "demo_duration",
        metavar="S",
        what="seconds of live writing (0: until Ctrl-C)",
        default_text="60",
    )
    demo.add_argument(
        "--legacy-tree",
        action="store_true",
        default=None,
        help="generate a legacy JSON storage tree (OpenCode 1.0-1.1) instead of an opencode.db",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        default=None,
        help="keep the temporary directory and print how to query it",
    )
    _common(demo, paths=False)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "storage_path": getattr(args, "storage", None),
        "opencode_db": getattr(args, "opencode_db", None),
        "db_path": getattr(args, "db", None),
        "workers": args.workers,
        "ship_to": getattr(args, "ship_to", None),
        "machine_id": getattr(args, "machine_id", None),
    }
    for name in (
        "window_ms",
        "max_files",
        "max_file_bytes",
        "reconcile_interval",
        "shutdown_timeout",
        "write_failure_timeout",
    ):
        overrides[name] = getattr(args, name, None)
    if getattr(args, "no_watch", False):
        overrides["watch"] = False
    if getattr(args, "no_http", False):
        overrides["http_enabled"] = False
    if getattr(args, "allow_remote", False):
        overrides["http_allow_remote"] = True
    overrides["http_port"] = getattr(args, "http_port", None)
    overrides["http_host"] = getattr(args, "http_host", None)
    # unknown INDEXER_* variables are warned about once logging is set up (`main`)
    return Settings.from_env(
        defaults=_COMMAND_DEFAULTS.get(args.command), warn_unknown=False, **overrides
    )


_COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "index": {"write_failure_timeout": INDEX_WRITE_FAILURE_TIMEOUT},  # a cron job ends
    "rebuild": {"write_failure_timeout": INDEX_WRITE_FAILURE_TIMEOUT},
    # the service others find serves the API; `index` opens no port
    "run": {"http_enabled": True},
    "demo": {"http_enabled": True},
}
"""Settings a command changes from the library's defaults (its flags and INDEXER_* still win)."""


def _check_storage(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise IndexerError(
            f"storage path {path} is not a folder; pass the legacy storage folder as --storage "
            "DIR (e.g. ~/.local/share/opencode/storage), or --opencode-db FILE for a database"
        )
    if not path.is_dir():
        raise IndexerError(
            f"storage directory {path} does not exist (is OpenCode installed? pass --storage DIR)"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise IndexerError(f"storage directory {path} is not readable by this user")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return EXIT_OK
    try:
        if args.command in READ_COMMANDS:
            return run_read_command(args)
        settings = _settings(args)
        fallback = _demo_instead(args, settings)
        if fallback:
            print(
                f"indexer-service: no OpenCode data at {settings.opencode_dir}/storage or "
                f"{settings.opencode_dir}/opencode*.db; running the demo instead (pass "
                "--storage DIR or --opencode-db FILE to index)",
                file=sys.stderr,
            )
        demo = args.command == "demo" or fallback
        # the demo's status line says what the service does; logs only for problems
        configure_logging(*log_options(args.log_format, args.log_level, os.environ, quiet=demo))
        warn_unknown_variables(os.environ)
        if demo:
            return _demo(args, settings)
        if settings.storage_path is not None:  # named: it must be there
            _check_storage(settings.storage_path)
        if args.command in ("index", "rebuild") and discover(settings).existing().empty:
            raise IndexerError(
                "no OpenCode data to index: no storage tree at "
                f"{settings.storage_path or settings.opencode_dir / 'storage'} and no database "
                f"{settings.opencode_db or str(settings.opencode_dir) + '/opencode*.db'}"
            )
        if args.command == "run":
            return anyio.run(serve.run, settings)
        if args.command == "rebuild":
            return anyio.run(rebuild, settings, args.json)
        return anyio.run(serve.index, settings, args.json)
    except (IndexerError, BaseExceptionGroup) as exc:
        error = first_of(exc, IndexerError)  # looking inside task groups
        if error is None:
            raise
        print(f"indexer-service: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _demo_instead(args: argparse.Namespace, settings: Settings) -> bool:
    """`run --demo-if-missing` where OpenCode has left no data on this machine yet."""
    if args.command != "run" or not args.demo_if_missing:
        return False
    stores = discover(settings)
    # a store named on purpose is not replaced: its absence stays an error (or is waited for)
    return stores.discovered and stores.existing().empty


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from indexer_service.demo.runner import Demo, DemoOptions

    options = DemoOptions.from_env(
        **{
            k: getattr(args, k, None)
            for k in ("sessions", "rate", "duration", "keep", "legacy_tree")
        }
    )
    with Demo(options, settings) as demo:
        anyio.run(serve.until_signal, demo.run)
        db = str(demo.settings.db_path)
        for argv in (["report", "daily", "--db", db], ["status", "--db", db]):
            print(f"\n$ indexer-service {' '.join(argv)}", flush=True)
            run_read_command(build_parser().parse_args(argv), warn_unknown=False)
    return EXIT_OK
