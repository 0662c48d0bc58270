"""The range of every number the service can be told: the one table (`LIMITS`) that `Settings`,
the demo's options, the command line's ``type=`` converters and docs/configuration.md follow.

A leaf: it imports nothing of the package but `errors`. Every range is finite (NaN, infinities
and absurd magnitudes are refused), except that ``write_failure_timeout`` also takes ``inf``,
its documented way of saying "retry for ever".
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indexer_service.errors import ConfigError

__all__ = ["LIMITS", "Limit", "add_number", "check", "from_text", "option"]

MAX_FILE_BYTES_LIMIT = 2**31 - 1
"""The largest ``max_file_bytes``: ``file_index.size`` is a 32-bit INTEGER."""


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


@dataclass(frozen=True)
class Limit:
    """The values one number may take: ``low`` to ``high`` inclusive (``low`` excluded when
    ``above``), whole numbers only when ``integer``, ``inf`` too when ``forever``."""

    low: float
    high: float
    integer: bool = True
    unit: str = ""
    above: bool = False
    forever: bool = False

    @property
    def kind(self) -> str:
        """What sort of number, as the messages say it."""
        return "a whole number" if self.integer else "a number"

    @property
    def text(self) -> str:
        """The range as the messages and the docs say it, e.g. ``1 to 256``."""
        low, high = _number(self.low), _number(self.high)
        span = f"above {low} and at most {high}" if self.above else f"{low} to {high}"
        unit = f" {self.unit}" if self.unit else ""
        return span + unit + (", or inf (no limit)" if self.forever else "")

    def problem(self, value: object) -> str | None:
        """None if ``value`` is in the range, else what is wrong with it (``must be ...``)."""
        kind = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"must be {self.kind}, {self.text}, got {value!r}"
        if self.forever and value == math.inf:
            return None
        low_ok = value > self.low if self.above else value >= self.low
        if low_ok and value <= self.high:  # False for NaN
            return None
        return f"must be {self.text}, got {value!r}"

    def parse(self, text: str) -> int | float:
        """``text`` as this limit's kind of number; raises ValueError."""
        return int(text) if self.integer else float(text)


LIMITS: dict[str, Limit] = {
    # Settings, INDEXER_<NAME>
    "db_poll_rows": Limit(1, 1_000_000),
    "memory_limit_mb": Limit(256, 1_048_576, unit="MB"),
    "window_ms": Limit(0, 3_600_000, integer=False, unit="ms", above=True),
    "max_files": Limit(1, 100_000),
    "max_batch_files": Limit(1, 100_000),
    "max_pending": Limit(1, 10_000_000),
    "workers": Limit(1, 256),
    "reconcile_interval": Limit(0, 86_400, integer=False, unit="s", above=True),
    "full_scan_every": Limit(1, 10_000),
    "shutdown_timeout": Limit(0, 3_600, integer=False, unit="s", above=True),
    "write_failure_timeout": Limit(0, 604_800, integer=False, unit="s", above=True, forever=True),
    "max_file_bytes": Limit(1, MAX_FILE_BYTES_LIMIT),
    "http_port": Limit(0, 65_535),
    "query_max_rows": Limit(0, 1_000_000),
    "query_timeout_s": Limit(0, 3_600, integer=False, unit="s", above=True),
    # the demo's options, INDEXER_DEMO_<NAME>
    "demo_sessions": Limit(1, 1_000),
    "demo_rate": Limit(0, 100_000, integer=False, unit="files/s", above=True),
    "demo_duration": Limit(0, 86_400, integer=False, unit="s"),
    "demo_seed": Limit(0, 2**32 - 1),
    # options of the command line alone
    "status_errors": Limit(0, 1_000),
}
"""Every number's range, by name: a `Settings` field, ``demo_<option>`` for the demo's
(``INDEXER_DEMO_<OPTION>``), ``status_errors`` for ``status --errors``."""


def check(name: str, value: object) -> None:
    """Raise `ConfigError` naming ``name``, the value and the range unless ``value`` is in it."""
    if (problem := LIMITS[name].problem(value)) is not None:
        raise ConfigError(f"{name} {problem}")


def from_text(name: str, variable: str, text: str) -> int | float:
    """The value of environment variable ``variable`` for number ``name``; a value that is not
    a number of the right kind, or out of range, raises `ConfigError` naming the variable."""
    limit = LIMITS[name]
    try:
        value = limit.parse(text)
    except ValueError:
        raise ConfigError(f"{variable}={text!r} is not {limit.kind} ({limit.text})") from None
    if limit.problem(value) is not None:
        raise ConfigError(f"{variable}={text!r} is out of range: {name} must be {limit.text}")
    return value


def option(name: str) -> Callable[[str], int | float]:
    """An argparse ``type=`` for number ``name``: a bad value is a usage error (exit 2)."""
    limit = LIMITS[name]

    def convert(text: str) -> int | float:
        try:
            value = limit.parse(text)
        except ValueError:
            msg = f"must be {limit.kind}, {limit.text}, got {text}"
            raise argparse.ArgumentTypeError(msg) from None
        if limit.problem(value) is not None:
            raise argparse.ArgumentTypeError(f"must be {limit.text}, got {text}")
        return value

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def add_number(
    parser: argparse.ArgumentParser,
    flag: str,
    name: str,
    *,
    metavar: str,
    what: str,
    default_text: str,
    **kwargs: Any,
) -> None:
    """Add option ``flag`` for number ``name`` to ``parser``: its type refuses a value out of
    range (`option`), its help says ``what``, the range and ``default_text``."""
    parser.add_argument(
        flag,
        type=option(name),
        metavar=metavar,
        help=f"{what}, {LIMITS[name].text} (default: {default_text})",
        **kwargs,
    )
