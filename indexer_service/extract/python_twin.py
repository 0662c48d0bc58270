"""The Python twin of a spec's SQL: `python_rows` reads a small batch of plain documents with
``json`` and the specs' `Value`s, or returns None to leave the batch to DuckDB."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from indexer_service.extract.fields import ARROW, NotPlain, Value
from indexer_service.extract.specs import RecordSpec

__all__ = ["python_rows"]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):  # DuckDB reads the first of repeated keys, json the last
        raise NotPlain
    return doc


def _no_constant(name: str) -> Any:
    raise NotPlain  # NaN, Infinity


def python_rows(
    spec: RecordSpec, plan: Mapping[str, Value | str], batch: pa.Table
) -> pa.Table | None:
    """What the SQL of ``spec`` gives for ``batch``, read in Python; None (use DuckDB) unless
    every document is valid JSON without repeated keys or NaN, every value read is of a JSON
    type whose conversion the `Value` classes state, and (one document per file) its ``id``
    is the file name."""
    cols = batch.to_pydict()
    docs = []
    try:
        for i, text in enumerate(cols["content"]):
            doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
            if not isinstance(doc, dict) or (not spec.array and doc.get("id") != cols["key"][i]):
                return None
            docs.append(doc)
        out: dict[str, pa.Array] = {}
        for col in spec.table.columns:
            if col.name == "raw":  # appended below: the batch's own text
                continue
            how = plan[col.name]
            if isinstance(how, str):  # a batch column
                source = "position" if how == "position::INTEGER" else how
                out[col.name] = pa.array(cols[source], ARROW[col.type.split()[0]])
            else:
                out[col.name] = pa.array([how(d) for d in docs], how.arrow)
    except (NotPlain, ValueError, RecursionError):
        return None
    return pa.table(out).append_column("raw", batch.column("content"))
