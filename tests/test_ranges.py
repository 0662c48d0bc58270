"""Every number the service can be told has a finite range (`limits.LIMITS`): out of it, a
`Settings` or demo option raises `ConfigError`, an ``INDEXER_*`` variable ends the command with
one line and exit 1, a command-line option with one line and exit 2; the bounds themselves are
accepted; docs/configuration.md lists every range. An ``INDEXER_*`` variable that names nothing
is warned about."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from indexer_service import ConfigError, Settings
from indexer_service.cli.main import build_parser, main
from indexer_service.demo.runner import DemoOptions
from indexer_service.limits import LIMITS, Limit
from indexer_service.settings import COMMAND_LINE_VARIABLES, unknown_variables
from indexer_service.store.database import Database

DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"

SETTINGS = {f.name for f in dataclasses.fields(Settings)} & set(LIMITS)
DEMO = {f"demo_{f.name}" for f in dataclasses.fields(DemoOptions)} & set(LIMITS)

FLAGS: dict[str, tuple[list[str], str, str]] = {
    # name: (the command before the option, the option, its dest)
    "workers": (["run"], "--workers", "workers"),
    "window_ms": (["run"], "--window-ms", "window_ms"),
    "max_files": (["run"], "--max-files", "max_files"),
    "max_file_bytes": (["run"], "--max-file-bytes", "max_file_bytes"),
    "reconcile_interval": (["run"], "--reconcile-interval", "reconcile_interval"),
    "shutdown_timeout": (["run"], "--shutdown-timeout", "shutdown_timeout"),
    "http_port": (["run"], "--http-port", "http_port"),
    "write_failure_timeout": (["index"], "--write-failure-timeout", "write_failure_timeout"),
    "query_max_rows": (["query", "SELECT 1"], "--max-rows", "max_rows"),
    "query_timeout_s": (["query", "SELECT 1"], "--timeout", "timeout"),
    "status_errors": (["status"], "--errors", "errors"),
    "demo_sessions": (["demo"], "--sessions", "sessions"),
    "demo_rate": (["demo"], "--rate", "rate"),
    "demo_duration": (["demo"], "--duration", "duration"),
}
"""The numbers the command line takes as options (the others only as variables)."""


def _outside(limit: Limit) -> list[float]:
    """Values just out of ``limit`` and absurd ones: NaN, infinities, huge magnitudes."""
    values: list[float] = [limit.low if limit.above else limit.low - 1, limit.high + 1]
    if limit.integer:
        return [*values, -1, 10**20]
    return [*values, math.nan, -math.inf, 1e300, *([] if limit.forever else [math.inf])]


def _bounds(limit: Limit) -> list[float]:
    """The values at both ends of ``limit`` that it accepts."""
    low = limit.low + (1e-3 if limit.above else 0)
    return [low, limit.high, *([math.inf] if limit.forever else [])]


def _cases(names: set[str], values: Any) -> list[tuple[str, float]]:
    return [(name, value) for name in sorted(names) for value in values(LIMITS[name])]


CHAIN = ("max_files", "max_batch_files", "max_pending")  # each at least the one before


def _settings(name: str, value: float) -> dict[str, float]:
    """``{name: value}`` with the settings that must stay in order around it made to fit."""
    kwargs = {name: value}
    if name in CHAIN:
        at = CHAIN.index(name)
        kwargs.update({below: 1 for below in CHAIN[:at]})
        kwargs.update({above: LIMITS[above].high for above in CHAIN[at + 1 :]})
    return kwargs


def test_every_number_has_a_range() -> None:
    """No int or float setting or demo option is without a range (a new one must get one)."""
    numbers = {
        f.name for f in dataclasses.fields(Settings) if re.match(r"(int|float)\b", str(f.type))
    }
    assert numbers == SETTINGS
    demo = {f"demo_{f.name}" for f in dataclasses.fields(DemoOptions) if f.type in ("int", "float")}
    assert demo == DEMO
    assert set(LIMITS) == SETTINGS | DEMO | {"status_errors"}
    assert all(math.isfinite(limit.low) and math.isfinite(limit.high) for limit in LIMITS.values())


@pytest.mark.parametrize(("name", "value"), _cases(SETTINGS, _outside))
def test_settings_refuse_a_value_out_of_range(name: str, value: float) -> None:
    """`Settings(...)` itself refuses it (a library host gets the check too), naming the
    setting, the value and the range."""
    with pytest.raises(ConfigError) as info:
        Settings(**_settings(name, value))  # type: ignore[arg-type]
    assert str(info.value) == f"{name} must be {LIMITS[name].text}, got {value!r}"


@pytest.mark.parametrize(("name", "value"), _cases(DEMO, _outside))
def test_demo_options_refuse_a_value_out_of_range(name: str, value: float) -> None:
    """The demo's options are checked against the same table."""
    with pytest.raises(ConfigError, match=f"^{name} must be "):
        DemoOptions(**{name.removeprefix("demo_"): value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), _cases(SETTINGS, _bounds))
def test_settings_accept_the_bounds(name: str, value: float) -> None:
    """Both ends of each range are accepted, as the field and as its variable."""
    assert getattr(Settings(**_settings(name, value)), name) == value  # type: ignore[arg-type]
    env = {f"INDEXER_{k.upper()}": str(v) for k, v in _settings(name, value).items()}
    assert getattr(Settings.from_env(env), name) == value


@pytest.mark.parametrize(("name", "value"), _cases(DEMO, _bounds))
def test_demo_options_accept_the_bounds(name: str, value: float) -> None:
    """Both ends of each demo option's range are accepted, as the variable too."""
    field = name.removeprefix("demo_")
    options = DemoOptions.from_env({f"INDEXER_{name.upper()}": str(value)})
    assert getattr(options, field) == value


@pytest.mark.parametrize(("name", "value"), _cases(SETTINGS, _outside))
def test_a_variable_out_of_range_is_one_line_and_exit_1(
    name: str,
    value: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``INDEXER_<NAME>`` out of range: the command exits 1 with one line naming the variable,
    its value and the range, before anything is opened."""
    variable = f"INDEXER_{name.upper()}"
    monkeypatch.setenv(variable, str(value))
    assert main(["status", "--db", str(tmp_path / "i.duckdb")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and list(tmp_path.iterdir()) == []
    assert err == (
        f"indexer-service: error: {variable}={str(value)!r} is out of range: "
        f"{name} must be {LIMITS[name].text}\n"
    )


@pytest.mark.parametrize(("name", "value"), _cases(DEMO, _outside))
def test_a_demo_variable_out_of_range_names_itself(name: str, value: float) -> None:
    """``INDEXER_DEMO_<OPTION>`` out of range is refused naming the variable (the command then
    exits 1 with that line: tests/demo/test_runner.py)."""
    variable = f"INDEXER_{name.upper()}"
    with pytest.raises(ConfigError) as info:
        DemoOptions.from_env({variable: str(value)})
    assert str(info.value) == (
        f"{variable}={str(value)!r} is out of range: {name} must be {LIMITS[name].text}"
    )


@pytest.mark.parametrize("name", sorted(SETTINGS | DEMO))
def test_a_variable_that_is_not_a_number_names_itself(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``INDEXER_<NAME>=many`` (or ``2.5`` for a whole number) is refused naming the variable,
    on one line, exit 1."""
    variable = f"INDEXER_{name.upper()}"
    garbage = "2.5" if LIMITS[name].integer else "many"
    expected = f"{variable}='{garbage}' is not a "
    if name in DEMO:
        with pytest.raises(ConfigError, match=f"^{expected}.*{re.escape(LIMITS[name].text)}"):
            DemoOptions.from_env({variable: garbage})
        return
    monkeypatch.setenv(variable, garbage)
    assert main(["status", "--db", "/nonexistent/i.db"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"indexer-service: error: {expected}")
    assert err.count("\n") == 1 and LIMITS[name].text in err


@pytest.mark.parametrize(("name", "value"), _cases(set(FLAGS), _outside))
def test_an_option_out_of_range_is_one_line_and_exit_2(
    name: str, value: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """The option out of range (``--workers 100000000``, ``--timeout inf``, ``--max-rows
    1e20``...) is a usage error: exit 2, one line naming the option, the value and the range."""
    command, flag, _ = FLAGS[name]
    with pytest.raises(SystemExit) as info:  # what `main` parses first (and, parsed, runs)
        build_parser().parse_args([*command, f"{flag}={value}"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    prog = f"indexer-service {command[0]}"
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"{prog}: error: argument {flag}: must be ")
    assert f"{LIMITS[name].text}, got {value} (see {prog} --help)\n" in err


@pytest.mark.parametrize(("name", "value"), _cases(set(FLAGS), _bounds))
def test_an_option_takes_the_bounds(name: str, value: float) -> None:
    """Both ends of each option's range are accepted."""
    command, flag, dest = FLAGS[name]
    args = build_parser().parse_args([*command, f"{flag}={value}"])
    assert getattr(args, dest) == value


def test_query_options_at_their_bounds_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`query` honours ``--max-rows 0`` (the columns, no row) and the largest limits."""
    db = str(tmp_path / "i.duckdb")
    with Database(Path(db)):  # an empty index
        pass
    capsys.readouterr()  # its log lines
    sql = "SELECT 1 AS one"
    assert main(["query", sql, "--db", db, "--format", "json", "--max-rows", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []
    big = ["--max-rows", "1000000", "--timeout", "3600", "--format", "json"]
    assert main(["query", sql, "--db", db, *big]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == [[1]]
    assert main(["status", "--db", db, "--errors", "0", "--json"]) == 0


def test_docs_list_every_range() -> None:
    """docs/configuration.md's "Ranges" table has a row per number, with its range as here."""
    section = DOCS.read_text().split("\n## Ranges\n")[1].split("\n## ")[0]
    rows = {
        cells[1].strip("`"): cells[-2]
        for line in section.splitlines()
        if line.startswith("| `") and (cells := [c.strip() for c in line.split("|")])
    }
    assert {name: rows.get(name) for name in LIMITS} == {n: lim.text for n, lim in LIMITS.items()}


def test_unknown_variables_are_warned_about_by_name() -> None:
    """A misspelled ``INDEXER_*`` variable is logged (``unknown_setting_variable``) with the
    variable it most resembles; one like nothing is logged too; known ones are not."""
    env = {
        "INDEXER_WORKER": "3",
        "INDEXER_RECONCILE_INTERVALS": "5",
        "INDEXER_ZZZ": "1",
        "INDEXER_WORKERS": "3",
        "INDEXER_LOG_LEVEL": "debug",
        "INDEXER_DEMO_RATE": "5",
        "OTHER_WORKER": "1",
    }
    with capture_logs() as logs:
        settings = Settings.from_env(env)
    assert settings.workers == 3
    warned = [
        (e["variable"], e["did_you_mean"])
        for e in logs
        if e["event"] == "unknown_setting_variable" and e["log_level"] == "warning"
    ]
    assert warned == [
        ("INDEXER_RECONCILE_INTERVALS", "INDEXER_RECONCILE_INTERVAL"),
        ("INDEXER_WORKER", "INDEXER_WORKERS"),
        ("INDEXER_ZZZ", None),
    ]
    with capture_logs() as logs:
        Settings.from_env(env, warn_unknown=False)
    assert logs == []


def test_the_command_lines_variables_are_known() -> None:
    """Every variable the command line reads (its logging, the demo's options) is known."""
    demo = {f"INDEXER_DEMO_{f.name.upper()}" for f in dataclasses.fields(DemoOptions)}
    assert COMMAND_LINE_VARIABLES == demo | {"INDEXER_LOG_FORMAT", "INDEXER_LOG_LEVEL"}
    assert unknown_variables(dict.fromkeys(COMMAND_LINE_VARIABLES, "1")) == {}


@pytest.mark.parametrize(
    "argv", [["index", "--storage", "/nonexistent/tree"], ["status", "--db", "/nonexistent/i.db"]]
)
def test_the_command_line_warns_about_unknown_variables(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands log the warning once, as a log line on stderr, and go on."""
    monkeypatch.setenv("INDEXER_WORKER", "3")
    assert main([*argv, *(["--log-format", "json"] if argv[0] == "index" else [])]) == 1
    lines = capsys.readouterr().err.splitlines()
    warnings = [json.loads(line) for line in lines if "unknown_setting_variable" in line]
    assert [(w["variable"], w["did_you_mean"]) for w in warnings] == [
        ("INDEXER_WORKER", "INDEXER_WORKERS")
    ]
    assert lines[-1].startswith("indexer-service: error: ")  # what it went on to say
