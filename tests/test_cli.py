"""The command line: version, help, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from indexer_service import __version__
from indexer_service.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_module_entry_point_prints_help() -> None:
    """`python -m indexer_service --help` explains the command and its subcommands."""
    out = subprocess.run(
        [sys.executable, "-m", "indexer_service", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: indexer-service" in out
    assert "OpenCode" in out
