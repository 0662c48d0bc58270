"""The service definitions in docs/deploy parse and start the right command."""

from __future__ import annotations

import configparser
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parent.parent / "docs" / "deploy"


def test_systemd_unit_parses() -> None:
    """The systemd user unit has its sections, runs `indexer-service run`, and reads its
    settings (the team database's URL) from an optional file, not its command line."""
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "indexer-service.service")
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert unit["Service"]["ExecStart"].split()[1] == "run"
    assert "ship-to" not in unit["Service"]["ExecStart"]  # a password there shows in ps
    assert unit["Service"]["EnvironmentFile"] == "-%h/.config/indexer-service/env"
    assert int(unit["Service"]["TimeoutStopSec"]) > 10  # longer than the shutdown budget


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_unit_verifies() -> None:
    """systemd-analyze accepts the unit (where systemd is installed)."""
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(DEPLOY / "indexer-service.service")],
        capture_output=True,
        text=True,
    )
    assert "Unknown" not in done.stderr and "bad" not in done.stderr.lower()


def test_launchd_plist_parses() -> None:
    """The launchd plist is a valid property list that runs `indexer-service run`."""
    plist = plistlib.loads((DEPLOY / "com.github.indexer-service.plist").read_bytes())
    assert plist["Label"] == "com.github.indexer-service"
    assert plist["ProgramArguments"][1] == "run"
    assert plist["ExitTimeOut"] > 10
