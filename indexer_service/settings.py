"""Settings: one frozen dataclass with plain defaults; `Settings.from_env()` is the one reader of
the environment (``INDEXER_*`` and ``XDG_DATA_HOME``).

A leaf: it imports nothing of the package but `errors` and `limits` (the range of every number).
The range checks every stage applies to its own parameters (`positive`, `at_least`) live here
too, so a value is judged one way. ``INDEXER_*`` variables that name no setting are warned about.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from indexer_service.errors import ConfigError
from indexer_service.limits import LIMITS, check, from_text

log = structlog.get_logger(__name__)

MAX_FILE_BYTES = 64 * 2**20
"""Default limit on the size of one storage file (`Settings.max_file_bytes`): indexing a file
costs about 5x its size in memory at its peak, and OpenCode's files are far smaller (a 100 MB
file is a pathology, e.g. a runaway tool output)."""

BATCH_BYTES = 32 << 20
"""Bytes of records one batch reads at most (the rest follow as a batch of their own): DuckDB
holds a batch's rows in memory until its commit, so this keeps a batch well inside
``memory_limit_mb``."""

LISTING_PROCESS_MODES = ("off", "auto", "always")

_PG_SCHEMES = ("postgresql://", "postgres://")
_MACHINE_ID = re.compile(r"[A-Za-z0-9._@-]{1,100}")

LISTING_PROCESS_MIN_FILES = 50_000
"""With ``listing_process="auto"``, trees whose full listing holds this many files or more are
listed by two processes (docs/benchmarks.md, "Reconciler")."""


def positive(name: str, value: float, unit: str = "") -> None:
    """Raise `ConfigError` unless ``value > 0`` (NaN is refused too)."""
    if not value > 0:
        raise ConfigError(f"{name} must be > 0{unit}, got {value!r}")


def one_of(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise `ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def at_least(name: str, value: float, minimum: float, what: str = "") -> None:
    """Raise `ConfigError` unless ``value >= minimum``; ``what`` names the minimum."""
    if not value >= minimum:
        raise ConfigError(f"{name} must be >= {what or minimum}, got {value!r}")


def is_pg_url(text: str) -> bool:
    """Whether ``text`` is a ``postgresql://`` (or ``postgres://``) URL, as ``ship_to`` must be."""
    return text.lower().startswith(_PG_SCHEMES)


def check_machine_id(name: str, value: str) -> None:
    """Raise `ConfigError` naming ``name`` unless ``value`` is a valid ``machine_id``."""
    if not _MACHINE_ID.fullmatch(value):
        raise ConfigError(f"{name} {value!r}: 1 to 100 letters, digits, '.', '_', '-' or '@'")


def data_home(env: Mapping[str, str] | None = None) -> Path:
    """The XDG data directory: ``$XDG_DATA_HOME`` in ``env`` if given and set, else
    ``~/.local/share``."""
    if env is not None and (value := env.get("XDG_DATA_HOME")):
        return Path(value)
    return Path.home() / ".local" / "share"


def default_opencode_dir(env: Mapping[str, str] | None = None) -> Path:
    """OpenCode's data folder, ``<data home>/opencode``: its database and legacy tree."""
    return data_home(env) / "opencode"


def default_db_path(env: Mapping[str, str] | None = None) -> Path:
    """The platform's per-user data directory, e.g. ``~/.local/share/indexer-service/index.duckdb``."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = data_home(env)
    return base / "indexer-service" / "index.duckdb"


def default_workers() -> int:
    """The CPU count, at least 4 (one batch read, one written, two waiting between them) and
    at most the largest ``workers``."""
    return min(max(4, os.cpu_count() or 1), int(LIMITS["workers"].high))


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Invalid values raise `ConfigError` naming the setting."""

    storage_path: Path | None = None
    """The legacy OpenCode storage tree to follow. With ``opencode_db`` also None, OpenCode's
    stores are looked for in ``opencode_dir`` (`sources.discover`): its tree and its databases."""
    opencode_dir: Path = field(default_factory=default_opencode_dir)
    """OpenCode's data folder (``~/.local/share/opencode``; `from_env` follows
    ``$XDG_DATA_HOME``), where its stores are looked for when none is named."""
    opencode_db: Path | None = None
    """OpenCode's SQLite database to follow (waited for if it does not exist yet)."""
    db_poll_rows: int = 10_000
    """Rows a poll of a database reads per table at most (the backfill goes on in the next):
    bounds the memory of a batch, each read transaction and each commit."""
    db_path: Path = field(default_factory=default_db_path)
    """The DuckDB database file the service owns."""
    memory_limit_mb: int | None = 512
    """DuckDB's memory limit for the index, in MB (None: DuckDB's own default, 80% of RAM); past
    it DuckDB evicts and spills to ``<db>.tmp``. A 1M-record backfill peaked at 0.86 GB with 512
    (docs/benchmarks.md); at least 256."""
    window_ms: float = 200.0
    """A batch is cut at most this long after its first file arrived."""
    max_files: int = 100
    """A batch is cut as soon as it holds this many distinct files."""
    max_batch_files: int = 5_000
    """Batches waiting for a worker are merged up to this size (bulk loads, bursts). Each
    batch costs ~30 ms of fixed DuckDB planning: a 100k-file backfill with 5,000 took 6-27%
    less time than with 2,000, for 70-150 MB more peak memory. Legacy-tree batches of 1,000
    files or more share write transactions; smaller ones (live batches) commit on their own."""
    max_pending: int = 100_000
    """Files waiting (pending + in ready batches) before producers are made to wait."""
    workers: int = field(default_factory=default_workers)
    """Batches in flight: one is read at a time, one written at a time, the others wait
    (memory grows with ``workers * max_batch_files``)."""
    reconcile_interval: float = 30.0
    """Seconds between reconciliation scans of the whole tree."""
    full_scan_every: int = 10
    """Every Nth scan stats every file; the others skip directories whose mtime is unchanged."""
    shutdown_timeout: float = 10.0
    """Seconds a clean shutdown may take to flush and write what is in flight."""
    write_failure_timeout: float | None = None
    """Seconds database writes may keep failing (a full disk) before the service gives up:
    it stops through its clean shutdown and the host gets `WriteFailedError`. None: retry for
    ever, reported by `health` (a long-running service waits for space to be freed); the
    one-shot ``index`` command gives up after 60 s."""
    max_file_bytes: int = MAX_FILE_BYTES
    """Files larger than this (64 MiB) get status 'error' ("file too large") without being read;
    indexing a file costs about 5x its size in memory at its peak (docs/operations.md)."""
    watch: bool = True
    """Follow changes with a file watcher (off: reconciliation only)."""
    listing_process: str = "auto"
    """Whether a child process lists half of a legacy tree in each full pass (`sharded`):
    ``auto`` from 50,000 files on a machine with two or more CPUs (a 1M-file pass took
    3.1-4.2 s instead of 5.7-8.0 s, for ~95 MB and ~10% more CPU), ``off`` never, ``always``
    whatever the size."""
    http_enabled: bool = False
    """Serve the HTTP API (health, status, metrics, read-only queries) and write its token and
    discovery files next to the database. Off for a library host unless asked for; the
    ``run`` command turns it on (``--no-http`` keeps it off)."""
    http_host: str = "127.0.0.1"
    """Address the API listens on; a non-loopback address needs ``http_allow_remote``."""
    http_port: int = 8765
    """Port of the API (0: any free port)."""
    http_allow_remote: bool = False
    """Allow binding the API to a non-loopback address (plain HTTP: the token travels in clear)."""
    query_max_rows: int = 10_000
    """Rows a read-only query returns at most (the result says ``truncated``)."""
    query_timeout_s: float = 30.0
    """Seconds a read-only query may run before it is interrupted."""
    ship_to: str | None = field(default=None, repr=False)
    """A PostgreSQL URL (``postgresql://user:password@host:5432/db?sslmode=...``) to ship the
    record tables to (`ship.sink`), tagged with ``machine_id``; None: nothing leaves the
    machine. Never shown with its password (not in ``repr`` either)."""
    machine_id: str | None = None
    """This machine's id on the team database (None: one generated once and kept in the
    index, ``<hostname>-<8 hex digits>``)."""

    def __post_init__(self) -> None:
        # absolute (not resolved: a symlinked storage keeps the paths the watcher reports)
        for name in ("storage_path", "opencode_db", "db_path", "opencode_dir"):
            if (value := getattr(self, name)) is not None:
                object.__setattr__(self, name, Path(os.path.abspath(Path(value).expanduser())))
        for name in _NUMBERS:  # in docs/configuration.md's "Ranges"
            if (value := getattr(self, name)) is not None:  # None: an optional one left unset
                check(name, value)
        at_least(
            "max_batch_files", self.max_batch_files, self.max_files, f"max_files ({self.max_files})"
        )
        at_least(
            "max_pending", self.max_pending, self.max_batch_files,
            f"max_batch_files ({self.max_batch_files})",
        )  # fmt: skip
        one_of("listing_process", self.listing_process, LISTING_PROCESS_MODES)
        if self.ship_to is not None and not is_pg_url(self.ship_to):
            raise ConfigError("ship_to: not a PostgreSQL URL (postgresql://user@host:5432/db)")
        if self.machine_id is not None:
            check_machine_id("machine_id", self.machine_id)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        warn_unknown: bool = True,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``env`` (default: the process environment): ``INDEXER_<NAME>``
        variables (e.g. ``INDEXER_WINDOW_MS=100``), ``$XDG_DATA_HOME`` for ``opencode_dir`` and
        ``db_path``, then keyword overrides (None: not given). ``defaults`` are the caller's
        own defaults, below the environment; anything unset keeps the field's default. An
        ``INDEXER_*`` variable that names nothing is logged (`warn_unknown_variables`) unless
        ``warn_unknown`` is False (the CLI warns once its logging is set up)."""
        env = os.environ if env is None else env
        if warn_unknown:
            warn_unknown_variables(env)
        values: dict[str, Any] = {
            "opencode_dir": default_opencode_dir(env),
            "db_path": default_db_path(env),
            **(defaults or {}),
        }
        from_vars = env_values(cls, "INDEXER_", env)
        url = from_vars.get("ship_to")
        if url is not None and overrides.get("ship_to") is None and not is_pg_url(url):
            raise ConfigError(  # the value is not shown: it may hold a password
                "INDEXER_SHIP_TO is not a PostgreSQL URL (postgresql://user@host:5432/db)"
            )
        values.update(from_vars)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_NUMBERS = tuple(f.name for f in dataclasses.fields(Settings) if f.name in LIMITS)
"""The numeric settings, each checked against its range in `limits.LIMITS`."""

COMMAND_LINE_VARIABLES = frozenset(
    {
        "INDEXER_LOG_FORMAT",
        "INDEXER_LOG_LEVEL",
        *(f"INDEXER_DEMO_{name}" for name in ("SESSIONS", "RATE", "DURATION", "SEED")),
        *("INDEXER_DEMO_KEEP", "INDEXER_DEMO_LEGACY_TREE"),
    }
)
"""``INDEXER_*`` variables the command line reads besides the settings: its logging and the
demo's options (`demo.runner.DemoOptions`)."""


def unknown_variables(env: Mapping[str, str]) -> dict[str, str | None]:
    """The ``INDEXER_*`` variables of ``env`` that name no setting nor command-line option, each
    with the known variable it most resembles (a misspelling), if one does."""
    known = {f"INDEXER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    known |= COMMAND_LINE_VARIABLES
    suffixes = {name.removeprefix("INDEXER_"): name for name in known}
    unknown: dict[str, str | None] = {}
    for name in sorted(env):
        if name.startswith("INDEXER_") and name not in known:
            close = difflib.get_close_matches(name.removeprefix("INDEXER_"), suffixes, n=1)
            unknown[name] = suffixes[close[0]] if close else None
    return unknown


def warn_unknown_variables(env: Mapping[str, str] | None = None) -> None:
    """Log ``unknown_setting_variable`` for each ``INDEXER_*`` variable of ``env`` (default: the
    process environment) that names nothing: it is ignored, and a misspelling would be silent."""
    for name, closest in unknown_variables(os.environ if env is None else env).items():
        log.warning(
            "unknown_setting_variable",
            variable=name,
            did_you_mean=closest,
            effect="ignored: no setting has this name",
        )


def env_values(cls: Any, prefix: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields of dataclass ``cls`` set as ``<prefix><FIELD>`` variables of ``env`` (default:
    the process environment), converted to the field's type (int, float, bool or str); empty
    variables count as unset. A value of the wrong type, or a number out of its range
    (`limits.LIMITS`, under the variable's name without ``INDEXER_``), raises `ConfigError`
    naming the variable."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name.upper()}"
        raw = env.get(name)
        if not raw:
            continue
        number = name.removeprefix("INDEXER_").lower()
        if number in LIMITS:
            values[f.name] = from_text(number, name, raw)
        else:
            values[f.name] = _convert(name, raw, f.type)
    return values


def _convert(name: str, raw: str, typ: Any) -> Any:
    kind = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    kind = kind.removesuffix(" | None")  # an optional number is still a number
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw
