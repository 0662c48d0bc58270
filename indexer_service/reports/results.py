"""What ``indexer-service query`` prints: a `QueryResult` as an aligned table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from indexer_service.read.query import QueryResult, jsonable
from indexer_service.reports.table import table_lines

__all__ = ["format_result"]


def _cell(value: Any, width: int = 60) -> str:
    if value is None:
        return "NULL"
    value = jsonable(value)
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_result(result: QueryResult, fmt: str = "table") -> str:
    """Rows as ``table`` (aligned text), ``json`` (`QueryResult.to_json`) or ``csv``."""
    if fmt == "json":
        return json.dumps(result.to_json(), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow(["" if v is None else _cell(v, width=1 << 30) for v in row])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"format must be table, json or csv, not {fmt!r}")
    cells = [[_cell(v) for v in row] for row in result.rows]
    lines = table_lines(result.columns, cells, sep=" | ", rule_sep="-+-")
    n = len(result.rows)
    more = " (truncated: more rows exist; raise --max-rows)" if result.truncated else ""
    lines.append(f"({n:,} row{'s' if n != 1 else ''}{more})")
    return "\n".join(lines)
