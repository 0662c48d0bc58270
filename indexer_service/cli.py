"""The ``indexer-service`` command line: argument parsing, logging setup, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

DESCRIPTION = """\
Keep a DuckDB analytics database continuously and exactly in sync with OpenCode's JSON
storage tree (~/.local/share/opencode/storage).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indexer-service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    return 0
