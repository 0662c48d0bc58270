"""What ``indexer-service status`` prints: collected with read-only SQL, so the same code works
through a running service's API and directly on the database file."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from indexer_service.read.query import QueryFn, QueryResult, jsonable

__all__ = ["RECENT_ERRORS_SQL", "collect_status", "format_status"]

_FILE_ERRORS = (
    "SELECT file_path, file_type, error_message, attempts, updated_at FROM file_index "
    "WHERE status = 'error'"
)
_ROW_ERRORS = (
    "SELECT source || ' ' || kind || ' ' || id, kind, error_message, attempts, updated_at "
    "FROM row_index WHERE status = 'error'"
)
_LATEST = " ORDER BY updated_at DESC NULLS LAST, file_path LIMIT $n"

RECENT_ERRORS_SQL = f"{_FILE_ERRORS} UNION ALL {_ROW_ERRORS}{_LATEST}"
"""The latest failures of either store first (a database row as ``<source> <kind> <id>``);
parameter ``n``."""

_DB_COUNTS_SQL = "SELECT source, kind, status, count(*) FROM row_index GROUP BY ALL ORDER BY ALL"
_DB_STATE_SQL = (
    "SELECT source, max(value) FILTER (WHERE ends_with(key, '.updated')), max(updated_at) "
    "FROM source_state GROUP BY source"
)
_HAS_ROW_INDEX = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'row_index'"
_COUNTS_SQL = "SELECT file_type, status, count(*) FROM file_index GROUP BY ALL ORDER BY ALL"
_ALL_COUNTS_SQL = (
    "SELECT type, status, sum(n)::BIGINT FROM ("
    "SELECT file_type AS type, status, count(*) AS n FROM file_index GROUP BY ALL UNION ALL "
    "SELECT kind, status, count(*) FROM row_index GROUP BY ALL) GROUP BY ALL ORDER BY ALL"
)
"""Records by type and status, files of the legacy tree and rows of the databases together."""
_ACTIVITY = (
    "SELECT count(*) FILTER (WHERE indexed_at >= CAST($minute AS TIMESTAMP)), "
    "count(*) FILTER (WHERE indexed_at >= CAST($hour AS TIMESTAMP)), max(indexed_at) FROM {}"
)
_ACTIVITY_SQL = _ACTIVITY.format("file_index")
_ALL_ACTIVITY_SQL = _ACTIVITY.format(
    "(SELECT indexed_at FROM file_index UNION ALL SELECT updated_at FROM row_index "
    "WHERE status = 'indexed')"
)
"""Records indexed in the last minute and hour, and the latest, of both stores."""


def _rows(result: QueryResult) -> list[dict[str, Any]]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def collect_status(
    query: QueryFn,
    *,
    db: str,
    service: Mapping[str, Any] | None = None,
    errors: int = 10,
) -> dict[str, Any]:
    """The status report: file counts, latest errors and recent activity from SQL, plus, when
    ``service`` holds a running service's ``/status`` answer, its state, last reconciliation
    and throughput."""
    databases = query(_HAS_ROW_INDEX, None).rows[0][0] > 0  # an index of an older version: no
    files: dict[str, dict[str, int]] = {}
    for ftype, status, n in query(_ALL_COUNTS_SQL if databases else _COUNTS_SQL, None).rows:
        files.setdefault(str(ftype), {})[str(status)] = int(n)
    totals: dict[str, int] = {}
    for by_status in files.values():
        for status, n in by_status.items():
            totals[status] = totals.get(status, 0) + n
    now = datetime.now(UTC).replace(tzinfo=None)  # indexed_at holds naive UTC
    window = {
        "minute": (now - timedelta(minutes=1)).isoformat(),  # strings: params may travel as JSON
        "hour": (now - timedelta(hours=1)).isoformat(),
    }
    activity = _ALL_ACTIVITY_SQL if databases else _ACTIVITY_SQL
    minute, hour, last = query(activity, window).rows[0]
    report: dict[str, Any] = {
        "db": db,
        "service": {"running": False},
        "files": files,
        "totals": totals,
        "databases": _databases(query) if databases else {},
        "recent_errors": _rows(
            query(RECENT_ERRORS_SQL if databases else _FILE_ERRORS + _LATEST, {"n": errors})
        ),
        "last_reconcile": None,
        "throughput": {
            "indexed_last_minute": int(minute),
            "indexed_last_hour": int(hour),
            "last_indexed_at": jsonable(last),
        },
    }
    if service is not None:
        _add_service(report, service)
    return jsonable(report)  # type: ignore[no-any-return]


def _databases(query: QueryFn) -> dict[str, dict[str, Any]]:
    """Per OpenCode database: rows by kind and status, and the newest change indexed."""
    out: dict[str, dict[str, Any]] = {}
    for source, kind, status, n in query(_DB_COUNTS_SQL, None).rows:
        rows = out.setdefault(str(source), {"rows": {}})["rows"]
        rows.setdefault(str(kind), {})[str(status)] = int(n)
    for source, newest_ms, written in query(_DB_STATE_SQL, None).rows:
        entry = out.setdefault(str(source), {"rows": {}})
        entry["newest_change_indexed"] = (
            None
            if newest_ms is None
            else datetime.fromtimestamp(newest_ms / 1000, UTC).isoformat(timespec="seconds")
        )
        entry["last_written_at"] = jsonable(written)
    return out


_SINK_KEYS = (
    "target", "machine_id", "state", "shipped_seq", "committed_seq", "behind_changes",
    "behind_seconds", "rows_shipped", "windows", "last_shipped_at", "error",
)  # fmt: skip
"""What ``status`` shows of the sink's stats (`stats.SinkStats`)."""


def _add_service(report: dict[str, Any], stats: Mapping[str, Any]) -> None:
    report["service"] = {
        "running": True,
        **{k: stats[k] for k in ("state", "uptime_s", "pid", "url", "health") if k in stats},
    }
    for path, db in (stats.get("databases") or {}).items():
        entry = report["databases"].setdefault(f"sqlite:{path}", {"rows": {}})
        entry["service"] = {
            k: db.get(k)
            for k in ("exists", "unavailable", "polls", "polls_skipped", "last_poll_at",
                      "longest_read_s", "connection_open")
        }  # fmt: skip
    if sink := stats.get("sink"):
        report["sink"] = {k: sink.get(k) for k in _SINK_KEYS}
    rec = stats.get("reconciler") or {}
    if rec:
        report["legacy_tree"] = {
            "path": stats.get("storage_path"),
            "unavailable": rec.get("unavailable"),
            "skipped": {k: n for k, n in (rec.get("skipped") or {}).items() if n},
        }
    if rec.get("last_scan_at"):
        report["last_reconcile"] = {
            "at": datetime.fromtimestamp(rec["last_scan_at"], UTC).isoformat(timespec="seconds"),
            "full": rec.get("last_scan_full"),
            "duration_s": rec.get("last_duration_s"),
            "found": rec.get("last", {}),
            "scans": {k: rec.get(f"scans_{k}", 0) for k in ("full", "partial", "failed")},
        }
    workers = stats.get("workers") or {}
    uptime = float(stats.get("uptime_s") or 0.0)
    done = sum(int(workers.get(k, 0)) for k in ("files_indexed", "files_errors", "files_deleted"))
    report["throughput"]["files_per_s_since_start"] = round(done / uptime, 1) if uptime else None
    report["throughput"].update(
        {f"batch_ms_{k}": v for k, v in (workers.get("batch_ms") or {}).items()}
    )


def _ago(iso: str | None) -> str:
    if not iso:
        return "never"
    at = datetime.fromisoformat(iso)
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    secs = max(0.0, time.time() - at.timestamp())
    span = (
        f"{secs:.0f}s"
        if secs < 120
        else f"{secs / 60:.0f}m"
        if secs < 7200
        else f"{secs / 3600:.1f}h"
    )
    return f"{at.strftime('%Y-%m-%d %H:%M:%S')} UTC ({span} ago)"


def format_status(report: Mapping[str, Any]) -> str:
    """The status report as text for a terminal."""
    out: list[str] = [f"database: {report['db']}"]
    svc = report["service"]
    if svc.get("running"):
        extra = ", ".join(
            f"{k} {svc[k]}" for k in ("pid", "url", "state", "health") if svc.get(k) is not None
        )
        up = svc.get("uptime_s")
        out.append(f"service:  running ({extra}{f', up {up:,.0f}s' if up is not None else ''})")
    else:
        out.append("service:  not running (read the database file directly)")
    files: Mapping[str, Mapping[str, int]] = report["files"]
    statuses = sorted(report["totals"]) or ["indexed"]
    out.append("")
    out.append(f"{'record type':<14}" + "".join(f"{s:>12}" for s in statuses) + f"{'total':>12}")
    for ftype, by in sorted(files.items()):
        cells = "".join(f"{by.get(s, 0):>12,}" for s in statuses)
        out.append(f"{ftype:<14}{cells}{sum(by.values()):>12,}")
    tot = report["totals"]
    out.append(
        f"{'all':<14}"
        + "".join(f"{tot.get(s, 0):>12,}" for s in statuses)
        + f"{sum(tot.values()):>12,}"
    )
    out.append("")
    rec = report.get("last_reconcile")
    if rec:
        found = ", ".join(f"{n} {k}" for k, n in rec["found"].items())
        kind = "full" if rec["full"] else "partial"
        out.append(
            f"last reconciliation: {_ago(rec['at'])}, {kind}, {rec['duration_s']} s: {found}"
        )
    else:
        out.append("last reconciliation: unknown (no service running)")
    tp = report["throughput"]
    line = f"throughput: {tp['indexed_last_minute']:,} records indexed in the last minute, "
    line += f"{tp['indexed_last_hour']:,} in the last hour; last {_ago(tp['last_indexed_at'])}"
    if tp.get("files_per_s_since_start") is not None:
        line += f"; {tp['files_per_s_since_start']:,} files/s since start"
    out.append(line)
    if tree := report.get("legacy_tree"):
        out.append("")
        out.extend(_tree_lines(tree))
    for source, db in report.get("databases", {}).items():
        out.append("")
        out.extend(_database_lines(source, db))
    if sink := report.get("sink"):
        out.append("")
        out.extend(_sink_lines(sink))
    errors = report["recent_errors"]
    out.append("")
    out.append(f"latest errors ({len(errors)}):" if errors else "latest errors: none")
    for e in errors:
        out.append(f"  {e['updated_at'] or '-'}  {e['file_type']}  {e['file_path']}")
        out.append(f"      {e['error_message']} (attempts: {e['attempts']})")
    return "\n".join(out)


def _tree_lines(tree: Mapping[str, Any]) -> list[str]:
    """The legacy tree: whether it can be listed, and the entries skipped without a read."""
    state = f"source unavailable: {tree['unavailable']}" if tree.get("unavailable") else "listed"
    skipped: Mapping[str, int] = tree.get("skipped") or {}
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(skipped.items()))
    return [
        f"legacy tree {tree.get('path')}: {state}",
        f"  skipped entries (not opened, not indexed): {kinds or 'none'}",
    ]


def _database_lines(source: str, db: Mapping[str, Any]) -> list[str]:
    """One OpenCode database: rows by kind, errors, the newest change indexed, the polls."""
    rows: Mapping[str, Mapping[str, int]] = db.get("rows", {})
    kinds = ", ".join(f"{k} {by.get('indexed', 0):,}" for k, by in sorted(rows.items()))
    errors = sum(by.get("error", 0) for by in rows.values())
    out = [
        f"opencode database {source.removeprefix('sqlite:')}",
        f"  rows indexed: {kinds or 'none yet'}; {errors:,} error{'s' if errors != 1 else ''}",
        f"  newest change indexed: {_ago(db.get('newest_change_indexed'))}",
    ]
    svc = db.get("service")
    if svc:
        state = f"unreadable: {svc['unavailable']}" if svc.get("unavailable") else "readable"
        if not svc.get("exists"):
            state = "waiting for opencode to create it"
        out.append(
            f"  {state}; polls {svc.get('polls', 0):,} ({svc.get('polls_skipped', 0):,} found "
            f"no commit), last {_ago(_iso(svc.get('last_poll_at')))}; longest read "
            f"{svc.get('longest_read_s', 0)} s"
        )
    return out


def _sink_lines(sink: Mapping[str, Any]) -> list[str]:
    """The team database: where, as which machine, its state, how far behind, the error."""
    shipped = sink.get("shipped_seq")
    windows = sink.get("windows", 0)
    done = "not reached yet" if shipped is None else f"change {shipped:,}"
    out = [
        f"sink {sink.get('target')} as machine {sink.get('machine_id') or '(not read yet)'}: "
        f"{str(sink.get('state')).replace('_', ' ')}",
        f"  shipped {done} of {sink.get('committed_seq', 0):,}; behind "
        f"{sink.get('behind_changes', 0):,} changes, {sink.get('behind_seconds', 0):g} s; "
        f"{sink.get('rows_shipped', 0):,} rows in {windows:,} "
        f"transaction{'s' if windows != 1 else ''} "
        f"this run, last {_ago(_iso(sink.get('last_shipped_at')))}",
    ]
    if sink.get("error"):
        out.append(f"  error: {sink['error']}")
    return out


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()
