"""``indexer-service report``: usage, sessions, models and tools, from the analytics views.

Each report is parameterised read-only SQL over the views of `views` (filters ``since``,
``until``, ``project``), run through a `read.query.QueryFn`: the running service's query API, or
`query.run_query` on the database file opened read-only. Totals come from SQL too (a
``GROUPING SETS`` row, or a second query for sessions), so medians and distinct counts are exact.

A *team* report (``team=True``) reads the team database's views, which have a ``machine_id``
column (`ship.pg_views`), through a query function that speaks PostgreSQL: the same reports over
every machine (a session counts once per machine), a ``machine`` filter, a ``machine`` column in
``sessions``, and the ``machines`` report, one row per machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from indexer_service.errors import ConfigError, IndexerError, QueryFailed
from indexer_service.read.query import QueryFn, jsonable
from indexer_service.reports.table import table_lines
from indexer_service.store.views import TOOL_AGGREGATES, USAGE_AGGREGATES

__all__ = [
    "REPORTS",
    "TEAM_REPORTS",
    "Report",
    "ReportFilters",
    "check_report",
    "collect_report",
    "format_report",
    "parse_date",
]

REPORTS = ("daily", "monthly", "sessions", "models", "tools", "machines")
TEAM_REPORTS = frozenset({"machines"})
"""Reports only a team database has."""


def parse_date(text: str) -> date:
    """A ``YYYY-MM-DD`` date (an argparse ``type``)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not a date (YYYY-MM-DD): {text!r}") from None


@dataclass(frozen=True)
class ReportFilters:
    """Which records a report covers: UTC days ``since``..``until`` (both inclusive), and the
    sessions of ``project`` (a directory: worktree or working directory at or under it; or a
    project id); in a team report, the records of machine ``machine`` only."""

    since: date | None = None
    until: date | None = None
    project: str | None = None
    machine: str | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise ConfigError(f"--since {self.since} is after --until {self.until}")

    def params(self, *, team: bool = False) -> dict[str, object]:
        """Named SQL parameters (strings: they may travel as JSON to the service); a team
        report's have ``machine`` too."""
        project_dir = None
        if self.project is not None:
            path = os.path.abspath(os.path.expanduser(self.project))
            project_dir = path.rstrip("/")  # "/" -> "": every absolute path is under it
        params: dict[str, object] = {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "project": self.project,
            "project_dir": project_dir,
        }
        if team:
            params["machine"] = self.machine
        return params

    def to_json(self, *, team: bool = False) -> dict[str, Any]:
        out = {
            "since": jsonable(self.since),
            "until": jsonable(self.until),
            "project": self.project,
        }
        return {**out, "machine": self.machine} if team else out


def _where(day: str, team: bool) -> str:
    machine = " AND ($machine IS NULL OR machine_id = $machine)" if team else ""
    return (
        f"(CAST($since AS DATE) IS NULL OR {day} >= CAST($since AS DATE)) "
        f"AND (CAST($until AS DATE) IS NULL OR {day} <= CAST($until AS DATE)) "
        "AND ($project IS NULL OR project_id = $project "
        "OR starts_with(directory || '/', $project_dir || '/') "
        f"OR starts_with(worktree || '/', $project_dir || '/')){machine}"
    )


def _grouped(select: str, source: str, keys: str, aggregates: str, order: str, team: bool) -> str:
    last = keys.split(",")[-1].strip()  # 1 only in the () grouping set: the totals row
    return (
        f"SELECT GROUPING({last}) = 1 AS _total, {select},\n  {aggregates}\nFROM {source}\n"
        f"WHERE {_where('day', team)}\nGROUP BY GROUPING SETS (({keys}), ())\n"
        f"ORDER BY _total DESC, {order}"
    )


def _usage(team: bool) -> str:
    """`USAGE_AGGREGATES`; over many machines, a session is a machine's session."""
    if not team:
        return USAGE_AGGREGATES
    return USAGE_AGGREGATES.replace(
        "count(DISTINCT session_id)", "count(DISTINCT (machine_id, session_id))"
    )


_USAGE_KEYS = "provider_id, model_id, agent"
_MACHINE_KEYS = "machine_id, hostname, shipped_at"
_KEYS = {
    "daily": ("_total", "day", "provider_id", "model_id", "agent"),
    "monthly": ("_total", "month", "provider_id", "model_id", "agent"),
    "models": ("_total", "provider_id", "model_id"),
    "tools": ("_total", "tool"),
    "machines": ("_total", *_MACHINE_KEYS.split(", ")),
}
"""The columns a report groups by (absent from its totals)."""


def _build(team: bool) -> dict[str, str]:
    usage = _usage(team)
    sql = {
        "daily": _grouped(
            f"day, {_USAGE_KEYS}",
            "v_message_usage",
            f"day, {_USAGE_KEYS}",
            usage,
            f"day NULLS FIRST, cost DESC, {_USAGE_KEYS}",
            team,
        ),
        "monthly": _grouped(
            f"date_trunc('month', day)::DATE AS month, {_USAGE_KEYS}",
            "v_message_usage",
            f"month, {_USAGE_KEYS}",
            usage,
            f"month NULLS FIRST, cost DESC, {_USAGE_KEYS}",
            team,
        ),
        "models": _grouped(
            "provider_id, model_id",
            "v_message_usage",
            "provider_id, model_id",
            usage,
            "cost DESC, messages DESC, provider_id, model_id",
            team,
        ),
        "tools": _grouped(
            "tool", "v_tool_calls", "tool", TOOL_AGGREGATES, "calls DESC, tool", team
        ),
        "sessions": (
            "SELECT * FROM v_session_summary WHERE "
            + _where("started_at::DATE", team)
            + " ORDER BY started_at NULLS FIRST, "
            + ("machine_id, " if team else "")
            + "session_id"
        ),
    }
    if team:  # indexer_machines: the sink's record of each machine (`ship.pg_schema`)
        sql["machines"] = _grouped(
            "machine_id, hostname, shipped_at AT TIME ZONE 'UTC' AS shipped_at",
            "v_message_usage LEFT JOIN indexer_machines USING (machine_id)",
            _MACHINE_KEYS,
            usage,
            "cost DESC, machine_id",
            team,
        )
    return sql


_SQL = {team: _build(team) for team in (False, True)}
"""The reports' SQL: local (False) and team (True)."""
_SUMS = (
    "duration_s", "messages", "user_messages", "assistant_messages", "incomplete_messages",
    "error_messages", "parts", "tool_calls", "tool_errors", "tokens_input", "tokens_output",
    "tokens_reasoning", "tokens_cache_read", "tokens_cache_write", "tokens_total", "subagent_sessions",
    "additions", "deletions", "files_changed",
)  # fmt: skip
_SESSION_TOTALS = {
    team: "SELECT count(*) AS sessions, "
    + ", ".join(f"coalesce(sum({c}), 0)::{'DOUBLE' if c == 'duration_s' else 'BIGINT'} AS {c}" for c in _SUMS)
    + ", coalesce(sum(cost), 0)::DOUBLE AS cost FROM v_session_summary WHERE "
    + _where("started_at::DATE", team)
    for team in (False, True)
}  # fmt: skip


@dataclass(frozen=True)
class Report:
    """One report's rows and totals, values in JSON form (dates as ISO strings)."""

    kind: str
    filters: ReportFilters
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    truncated: bool = False
    team: bool = False
    """Read from a team database: rows of many machines."""

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.kind,
            "filters": self.filters.to_json(team=self.team),
            "rows": self.rows,
            "totals": self.totals,
            "truncated": self.truncated,
        }


def _dicts(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{c: jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def check_report(kind: str, filters: ReportFilters, *, team: bool) -> None:
    """Raise `ConfigError` unless report ``kind`` under ``filters`` can be run (on a team
    database when ``team``)."""
    if kind in TEAM_REPORTS and not team:
        raise ConfigError(f"the {kind} report reads a team database: add --from postgresql://...")
    if kind not in _SQL[team]:
        raise ConfigError(f"unknown report {kind!r}: choose from {', '.join(REPORTS)}")
    if filters.machine is not None and not team:
        raise ConfigError("--machine filters a team database: add --from postgresql://...")


def collect_report(
    query: QueryFn, kind: str, filters: ReportFilters | None = None, *, team: bool = False
) -> Report:
    """Run report ``kind`` (one of `REPORTS`) through ``query``: on a team database's views
    (PostgreSQL, through a query function that speaks it) when ``team``."""
    filters = filters or ReportFilters()
    check_report(kind, filters, team=team)
    params = filters.params(team=team)
    try:
        result = query(_SQL[team][kind], params)
        extra = query(_SESSION_TOTALS[team], params) if kind == "sessions" else None
    except QueryFailed as exc:
        if "v_" in exc.reason and "does not exist" in exc.reason:
            if team:
                raise IndexerError(
                    "the team database has no indexer-service views: no machine has shipped "
                    "to it yet (`indexer-service run --ship-to postgresql://...`)"
                ) from None
            raise IndexerError(
                "the database has no analytics views (written by an older indexer-service); "
                "open it once read-write with this version (`indexer-service index`) to add them"
            ) from None
        raise
    rows = _dicts(result.columns, result.rows)
    if extra is not None:
        totals = _dicts(extra.columns, extra.rows)[0]
    else:  # the GROUPING SETS total comes first; its grouping columns are NULL
        totals = rows.pop(0) if rows and rows[0]["_total"] else {}
        totals = {k: v for k, v in totals.items() if k not in _KEYS[kind]}
        for row in rows:
            del row["_total"]
    return Report(kind, filters, rows, totals, result.truncated, team)


# -- text ---------------------------------------------------------------------------------------

_TOKENS = (
    ("tokens_input", "input", "int"), ("tokens_output", "output", "int"),
    ("tokens_reasoning", "reasoning", "int"), ("tokens_cache_read", "cache read", "int"),
    ("tokens_cache_write", "cache write", "int"), ("cost", "cost USD", "usd"),
)  # fmt: skip
_USAGE_COLS = (("provider_id", "provider", "text"), ("model_id", "model", "text"),
               ("agent", "agent", "text"), ("messages", "messages", "int"), *_TOKENS)  # fmt: skip
_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "daily": (("day", "day", "text"), *_USAGE_COLS),
    "monthly": (("month", "month", "month"), *_USAGE_COLS),
    "models": (("provider_id", "provider", "text"), ("model_id", "model", "text"),
               ("sessions", "sessions", "int"), ("messages", "messages", "int"), *_TOKENS),
    "tools": (("tool", "tool", "text"), ("calls", "calls", "int"), ("errors", "errors", "int"),
              ("unfinished", "unfinished", "int"), ("error_rate", "error rate", "pct"),
              ("median_ms", "median ms", "int"), ("p95_ms", "p95 ms", "int")),
    "sessions": (("started_at", "started (UTC)", "time"), ("session_id", "session", "text"),
                 ("title", "title", "title"), ("duration_s", "duration", "dur"),
                 ("messages", "messages", "int"), ("tool_calls", "tools", "int"),
                 ("tool_errors", "tool errors", "int"), ("tokens_total", "tokens", "int"),
                 ("cost", "cost USD", "usd"), ("models_used", "models", "list")),
    "machines": (("machine_id", "machine", "text"), ("hostname", "host", "text"),
                 ("sessions", "sessions", "int"), ("messages", "messages", "int"),
                 ("errors", "errors", "int"), *_TOKENS,
                 ("shipped_at", "last shipped (UTC)", "time")),
}  # fmt: skip
_MACHINE_COLUMN = ("machine_id", "machine", "text")
_NUMERIC = frozenset(("int", "usd", "pct", "dur"))


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _cell(value: Any, fmt: str, row: Mapping[str, Any]) -> str:
    if value is None:
        return "-"
    if fmt == "int":
        return f"{round(value):,}"
    if fmt == "usd":
        return f"{value:,.2f}"
    if fmt == "pct":
        return f"{value * 100:.1f}%"
    if fmt == "dur":
        return _duration(float(value))
    if fmt == "time":
        return str(value)[:16].replace("T", " ")
    if fmt == "month":
        return str(value)[:7]
    if fmt == "list":
        text = ", ".join(map(str, value))
        return text if len(text) <= 40 else text[:39] + "…"
    text = " ".join(str(value).split())
    if fmt == "title":
        text = ("↳ " if row.get("parent_id") else "") + text
        return text if len(text) <= 40 else text[:39] + "…"
    return text


def format_report(report: Report) -> str:
    """The report as an aligned table with a totals row (numbers right-aligned)."""
    cols = _COLUMNS[report.kind]
    if report.team and report.kind == "sessions":  # which machine's session
        cols = (cols[0], _MACHINE_COLUMN, *cols[1:])
    table = [[header for _, header, _ in cols]]
    table += [[_cell(row.get(key), fmt, row) for key, _, fmt in cols] for row in report.rows]
    total = [
        _cell(report.totals.get(key), fmt, {}) if fmt in _NUMERIC else "" for key, _, fmt in cols
    ]
    label = (
        f"{report.totals.get('sessions', len(report.rows)):,} sessions"
        if report.kind == "sessions"
        else "total"
    )
    total[0] = label
    numeric = {i for i, (_, _, fmt) in enumerate(cols) if fmt in _NUMERIC}
    out = table_lines(table[0], table[1:], total=total, right=numeric)
    if report.truncated:
        out.append(
            f"(only the first {len(report.rows):,} rows; narrow with --since/--until/--project)"
        )
    return "\n".join(out)
