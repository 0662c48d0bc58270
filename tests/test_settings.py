"""Settings: defaults, validation naming the setting, environment variables."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from indexer_service import ConfigError, Settings
from indexer_service.settings import default_workers
from indexer_service.sources.json_tree.sharded import child_min_files


def test_defaults_match_the_design() -> None:
    """Batches of 100 files or 200 ms, a 30 s reconcile interval, a 10 s shutdown budget."""
    s = Settings(storage_path=Path("/s"), db_path=Path("/d.duckdb"))
    assert (s.max_files, s.window_ms, s.reconcile_interval, s.shutdown_timeout) == (
        100,
        200.0,
        30.0,
        10.0,
    )
    assert s.workers >= 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window_ms": 0}, "window_ms"),
        ({"max_files": 0}, "max_files"),
        ({"workers": 0}, "workers"),
        ({"reconcile_interval": -1}, "reconcile_interval"),
        ({"max_batch_files": 10}, "max_batch_files"),
        ({"max_pending": 100}, "max_pending"),
        ({"listing_process": "sometimes"}, "listing_process"),
        ({"write_failure_timeout": 0}, "write_failure_timeout"),
    ],
)
def test_invalid_values_name_the_setting(kwargs: dict[str, object], name: str) -> None:
    """An invalid value fails at construction with a message naming the setting."""
    with pytest.raises(ConfigError, match=name):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_from_env_reads_indexer_variables(tmp_path: Path) -> None:
    """INDEXER_* variables set the matching settings, converted to their types."""
    env = {
        "INDEXER_STORAGE_PATH": str(tmp_path / "st"),
        "INDEXER_DB_PATH": str(tmp_path / "x.duckdb"),
        "INDEXER_WINDOW_MS": "50",
        "INDEXER_WORKERS": "3",
        "INDEXER_WATCH": "false",
        "INDEXER_WRITE_FAILURE_TIMEOUT": "90",
        "UNRELATED": "1",
    }
    s = Settings.from_env(env, max_files=7)
    assert s.storage_path == tmp_path / "st"
    assert (s.window_ms, s.workers, s.watch, s.max_files) == (50.0, 3, False, 7)
    assert s.write_failure_timeout == 90.0  # an optional number is converted too


def test_from_env_rejects_garbage() -> None:
    """A variable that does not convert names itself in the error."""
    with pytest.raises(ConfigError, match="INDEXER_WORKERS"):
        Settings.from_env({"INDEXER_WORKERS": "many"})


def test_plain_defaults_do_not_read_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`Settings()` is the same whatever the environment says; `from_env` follows
    $XDG_DATA_HOME for OpenCode's data folder and the index, and INDEXER_* over both."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("INDEXER_WORKERS", "3")
    plain = Settings()
    assert plain.opencode_dir == Path.home() / ".local" / "share" / "opencode"
    assert tmp_path not in plain.db_path.parents
    assert plain.workers == default_workers()  # not INDEXER_WORKERS
    from_env = Settings.from_env()
    assert from_env.opencode_dir == tmp_path / "xdg" / "opencode"
    assert from_env.workers == 3
    if sys.platform != "darwin":
        assert from_env.db_path == tmp_path / "xdg" / "indexer-service" / "index.duckdb"
    named = Settings.from_env({"XDG_DATA_HOME": "/x", "INDEXER_DB_PATH": str(tmp_path / "i.db")})
    assert (named.opencode_dir, named.db_path) == (Path("/x/opencode"), tmp_path / "i.db")


def test_log_settings_belong_to_the_command_line() -> None:
    """A library host configures its own logging: `Settings` has no log fields, and an
    INDEXER_LOG_* variable is not one of its settings."""
    names = {f.name for f in dataclasses.fields(Settings)}
    assert not {n for n in names if n.startswith("log")}
    assert Settings.from_env({"INDEXER_LOG_LEVEL": "debug"}) == Settings.from_env({})


@pytest.mark.parametrize(
    ("mode", "cpus", "expected"),
    [("auto", 2, 50_000), ("auto", 1, None), ("off", 8, None), ("always", 1, 0)],
)
def test_listing_process_modes(mode: str, cpus: int, expected: int | None) -> None:
    """``auto`` lists trees of 50,000 files or more in two processes on two or more CPUs;
    ``off`` never does, ``always`` from the first full pass whatever the machine."""
    assert Settings(listing_process=mode).listing_process == mode
    assert child_min_files(mode, cpus) == expected
