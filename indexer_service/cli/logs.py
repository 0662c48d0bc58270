"""Logging setup: structlog to stderr, console on a TTY, JSON lines otherwise.

Library modules only call ``structlog.get_logger(__name__)``; `configure_logging` is called once,
by the CLI (a host app embedding the service configures structlog its own way).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import structlog

from indexer_service.settings import one_of

LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def log_options(
    fmt: str | None, level: str | None, env: Mapping[str, str], *, quiet: bool = False
) -> tuple[str, str]:
    """The log format and level: the command line's, else ``INDEXER_LOG_FORMAT`` /
    ``INDEXER_LOG_LEVEL``, else ``auto`` and ``info`` (``warning`` when ``quiet``). Raises
    `ConfigError` for a value that is not one of the choices."""
    fmt = fmt or env.get("INDEXER_LOG_FORMAT") or "auto"
    level = level or env.get("INDEXER_LOG_LEVEL") or ("warning" if quiet else "info")
    one_of("INDEXER_LOG_FORMAT", fmt, LOG_FORMATS)
    one_of("INDEXER_LOG_LEVEL", level, LOG_LEVELS)
    return fmt, level


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Route structlog to stderr with the chosen renderer (`LOG_FORMATS`: ``auto`` is console
    on a TTY, JSON lines otherwise) and minimum level (`LOG_LEVELS`)."""
    one_of("log format", fmt, LOG_FORMATS)
    one_of("log level", level, LOG_LEVELS)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
