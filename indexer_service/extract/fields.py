"""The column-expression DSL: `Fields` writes each column's SQL expression over the parsed
document, and the `Value` that gives the same result in Python."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = ["ARROW", "MACROS", "Fields", "NotPlain", "Value"]


class NotPlain(Exception):
    """A document the Python path leaves to DuckDB."""


_MS_MIN, _MS_MAX = -62_135_596_800_000, 253_402_300_799_999  # years 1..9999
_INT64 = range(-(2**63), 2**63)
_MS = range(_MS_MIN, _MS_MAX + 1)
"""Epoch milliseconds ``ms_ts`` and ``ms_between`` accept."""
_ODD_CONTROL = re.compile("[\x00-\x07\x0b\x0e-\x1f]")
"""Control characters yyjson escapes as ``\\u00XX`` with capital hex digits, Python with small."""

MACROS = (
    f"CREATE MACRO ms_ts(x) AS CASE WHEN x BETWEEN {_MS_MIN} AND {_MS_MAX} THEN epoch_ms(x::BIGINT) END",
    f"CREATE MACRO ms_between(a, b) AS CASE WHEN a BETWEEN {_MS_MIN} AND {_MS_MAX} "
    f"AND b BETWEEN {_MS_MIN} AND {_MS_MAX} THEN b - a END",
)
"""The SQL functions `Fields` expressions call, for the connection that runs them."""


# Each Value mirrors what its SQL gives for documents whose values have the declared JSON types
# (and for the conversions DuckDB makes that are easy to state: an object or array read as
# BOOLEAN or DOUBLE is NULL). Anything else raises NotPlain and the batch goes to DuckDB.


def _walk(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for name in path:
        if not isinstance(node, dict):  # how DuckDB reads into a non-object is its business
            raise NotPlain
        node = node.get(name)
        if node is None:
            return None
    return node


def _check_json(node: Any) -> None:
    """Raise `NotPlain` unless Python writes ``node`` as DuckDB does (yyjson: floats differ)."""
    if isinstance(node, str):
        if _ODD_CONTROL.search(node):
            raise NotPlain
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_json(key)
            _check_json(value)
    elif isinstance(node, list):
        for value in node:
            _check_json(value)
    elif type(node) is float or (type(node) is int and node not in _INT64):
        raise NotPlain


def _convert(node: Any, sql_type: str) -> Any:
    """A JSON value (not null) as ``from_json`` reads it into ``sql_type``."""
    if sql_type == "VARCHAR":
        if isinstance(node, str):
            return node
    elif sql_type == "BIGINT":
        if type(node) is int and node in _INT64:
            return node
    elif sql_type == "DOUBLE":
        if isinstance(node, dict | list):
            return None
        if type(node) is int and node in _INT64:
            return float(node)
        if type(node) is float and math.isfinite(node):
            return node
    elif sql_type == "BOOLEAN":
        if isinstance(node, dict | list):
            return None
        if isinstance(node, bool):
            return node
    elif sql_type == "JSON":
        _check_json(node)
        return json.dumps(node, ensure_ascii=False, separators=(",", ":"))
    raise NotPlain


ARROW = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "JSON": pa.string(),
}
"""Arrow type of each SQL type a column or document field may have."""


@dataclass(frozen=True)
class _Get:
    """``coalesce`` of document fields: the first of ``paths`` present and not null, read as
    ``sql_type``; with ``ms``, epoch milliseconds that become a TIMESTAMP (NULL outside years
    1..9999, ``ms_ts``)."""

    paths: tuple[tuple[str, ...], ...]
    sql_type: str
    ms: bool = False

    @property
    def arrow(self) -> pa.DataType:
        return pa.timestamp("ms") if self.ms else ARROW[self.sql_type]

    def __call__(self, doc: dict[str, Any]) -> Any:
        for path in self.paths:
            node = _walk(doc, path)
            value = None if node is None else _convert(node, self.sql_type)
            if value is not None:
                if self.ms:
                    return value if value in _MS else None
                return value
        return None


@dataclass(frozen=True)
class _Text:
    """``->>`` of an object's field (``json_extract_string``): a string, or NULL when the field
    is missing or null or the value at ``parent`` is not an object."""

    parent: tuple[str, ...]
    field: str
    arrow = pa.string()

    def __call__(self, doc: dict[str, Any]) -> Any:
        node = _walk(doc, self.parent)
        value = node.get(self.field) if isinstance(node, dict) else None
        if value is None or isinstance(value, str):
            return value
        raise NotPlain  # DuckDB writes it as JSON text


@dataclass(frozen=True)
class _When:
    """``CASE WHEN test = equals THEN then END``."""

    test: Value
    equals: str
    then: Value

    @property
    def arrow(self) -> pa.DataType:
        return self.then.arrow

    def __call__(self, doc: dict[str, Any]) -> Any:
        return self.then(doc) if self.test(doc) == self.equals else None


@dataclass(frozen=True)
class _Coalesce:
    values: tuple[Value, ...]

    @property
    def arrow(self) -> pa.DataType:
        return self.values[0].arrow

    def __call__(self, doc: dict[str, Any]) -> Any:
        for value in self.values:
            if (v := value(doc)) is not None:
                return v
        return None


@dataclass(frozen=True)
class _Between:
    """``ms_between``: end - start, both epoch milliseconds within years 1..9999."""

    start: Value
    end: Value
    arrow = pa.int64()

    def __call__(self, doc: dict[str, Any]) -> Any:
        a, b = self.start(doc), self.end(doc)
        if a is None or b is None or a not in _MS or b not in _MS:
            return None
        return b - a


Value = _Get | _Text | _When | _Coalesce | _Between
"""A column expression in Python: called with a document, it gives the column's value."""


class Fields:
    """Builds a ``from_json`` structure from the paths the expressions use, and the same
    expressions in Python (`meaning`)."""

    def __init__(self) -> None:
        self.struct: dict[str, Any] = {}
        self.meaning: dict[str, Value] = {}
        """SQL expression -> the same value in Python."""

    def _mean(self, sql: str, value: Value) -> str:
        self.meaning[sql] = value
        return sql

    def __call__(self, path: str, sql_type: str = "VARCHAR") -> str:
        *parents, leaf = path.split(".")
        node = self.struct
        for name in parents:
            node = node.setdefault(name, {})
        declared = node.setdefault(leaf, sql_type)  # the first use of a path decides its type
        sql = "j." + ".".join(f'"{name}"' for name in path.split("."))
        if isinstance(declared, dict):  # a struct: only its fields are read
            return sql
        return self._mean(sql, _Get((tuple(path.split(".")),), declared))

    def ts(self, *paths: str) -> str:
        """Epoch milliseconds -> TIMESTAMP (the first path present)."""
        get = _Get(tuple(tuple(p.split(".")) for p in paths), "BIGINT", ms=True)
        return self._mean(f"ms_ts({self.first(*paths)})", get)

    def first(self, *paths: str, sql_type: str = "BIGINT") -> str:
        exprs = [self(p, sql_type) for p in paths]
        if len(exprs) == 1:
            return exprs[0]
        get = _Get(tuple(tuple(p.split(".")) for p in paths), sql_type)
        return self._mean(f"coalesce({', '.join(exprs)})", get)

    def between(self, start: str, end: str) -> str:
        """Milliseconds from ``start`` to ``end`` (expressions made by this builder)."""
        between = _Between(self.meaning[start], self.meaning[end])
        return self._mean(f"ms_between({start}, {end})", between)

    def text(self, path: str, field: str) -> str:
        """``field`` of the JSON object at ``path`` (a JSON column) as text."""
        return self._mean(f"{self(path, 'JSON')}->>'{field}'", _Text(tuple(path.split(".")), field))

    def raw_text(self, path: str, field: str) -> str:
        """Like `text`, for a ``path`` whose struct type is not JSON: read from the raw text."""
        sql = f"json_extract_string(raw, '$.{path}.{field}')"
        return self._mean(sql, _Text(tuple(path.split(".")), field))

    def when(self, test: str, equals: str, then: str) -> str:
        """``then`` where ``test`` is the string ``equals``, else NULL."""
        sql = f"CASE WHEN {test} = '{equals}' THEN {then} END"
        return self._mean(sql, _When(self.meaning[test], equals, self.meaning[then]))

    def coalesce(self, *exprs: str) -> str:
        sql = f"coalesce({', '.join(exprs)})"
        return self._mean(sql, _Coalesce(tuple(self.meaning[e] for e in exprs)))

    def tokens(self, prefix: str = "tokens") -> dict[str, str]:
        keys = {"total": "total", "input": "input", "output": "output", "reasoning": "reasoning"}
        cols = {f"tokens_{k}": self(f"{prefix}.{v}", "BIGINT") for k, v in keys.items()}
        cols["tokens_cache_read"] = self(f"{prefix}.cache.read", "BIGINT")
        cols["tokens_cache_write"] = self(f"{prefix}.cache.write", "BIGINT")
        return cols
