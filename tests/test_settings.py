"""Settings: defaults, validation naming the setting, environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer_service import ConfigError, Settings
from indexer_service.settings import default_storage_path


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
        ({"log_format": "xml"}, "log_format"),
        ({"log_level": "loud"}, "log_level"),
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


def test_storage_default_follows_opencode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$OPENCODE_STORAGE wins; otherwise OpenCode's XDG data directory is used."""
    monkeypatch.setenv("OPENCODE_STORAGE", str(tmp_path / "custom"))
    assert default_storage_path() == tmp_path / "custom"
    monkeypatch.delenv("OPENCODE_STORAGE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_storage_path() == tmp_path / "opencode" / "storage"
