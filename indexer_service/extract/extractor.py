"""Runs the specs over a batch of files: `Extractor` gives typed rows per batch, in one DuckDB
query (or in Python for small plain batches), and `array_items` splits array files into items."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from indexer_service.extract.fields import MACROS
from indexer_service.extract.python_twin import python_rows
from indexer_service.extract.specs import RecordSpec
from indexer_service.store.cursors import ThreadCursors

__all__ = [
    "Extracted",
    "Extractor",
    "array_items",
    "utf8_column",
]

_BATCH = "_records_batch"


@dataclass(frozen=True)
class Extracted:
    """Rows of one batch of files of one type."""

    rows: pa.Table | None
    """The table's columns in schema order, JSON columns typed ``arrow.json``; None if no rows."""
    bad: Mapping[int, str | None]
    """Indices of input files that gave no rows -> DuckDB's error, or None (see `diagnose`)."""


class Extractor:
    """Runs `RecordSpec` SQL on a private in-memory DuckDB; thread-safe (a cursor per thread).

    yyjson in C++ parses and extracts while the GIL is free, much faster than walking parsed
    documents in Python; only small batches of plain documents take the Python path.
    ``python_max_rows``: batches up to this many rows may take the Python path (0: never).
    """

    def __init__(self, *, python_max_rows: int = 200) -> None:
        self.python_max_rows = python_max_rows
        # One thread per query: each worker extracts its own batch on its own cursor, and
        # DuckDB's intra-query parallelism only adds scheduling to queries of a few ms (live
        # batches at 1,000 files/s: p50 latency ~15% lower, measured with bench_service).
        self._con = duckdb.connect(":memory:", config={"threads": 1})
        for sql in MACROS:
            self._con.execute(sql)
        self._cursors = ThreadCursors(self._con)
        self._prepared = threading.local()  # names of the statements this thread prepared

    def close(self) -> None:
        self._cursors.close()

    def extract(self, spec: RecordSpec, batch: pa.Table) -> Extracted:
        """Rows from ``batch``: columns ``file_path, key, parent, content`` (valid UTF-8), and
        for array files one row per item (see `array_items`) with its ``position``.

        One query for the whole batch; if DuckDB rejects it, the files are retried one by one,
        so one file that trips DuckDB cannot fail the others. A live batch (up to
        ``python_max_rows``) skips DuckDB when every document is plain (`python_rows`):
        DuckDB binds and optimizes the query anew on every call, which costs more than reading
        a few dozen documents in Python.
        """
        if batch.num_rows <= self.python_max_rows and (plan := spec.plan) is not None:
            rows = python_rows(spec, plan, batch)
            if rows is not None:
                return Extracted(_typed_json(spec, rows), {})
        try:
            return self._run(spec, batch)
        except duckdb.Error:
            pass
        parts: list[pa.Table] = []
        bad: dict[int, str | None] = {}
        for i in range(batch.num_rows):
            try:
                one = self._run(spec, batch.slice(i, 1))
            except duckdb.Error as exc:
                bad[i] = f"cannot extract: {str(exc).splitlines()[0]}"
                continue
            if one.bad:
                bad[i] = None
            if one.rows is not None:
                parts.append(one.rows)
        rows = pa.concat_tables(parts) if parts else None
        return Extracted(rows, bad)

    def _run(self, spec: RecordSpec, batch: pa.Table) -> Extracted:
        cur = self._cursors.get()
        try:
            result = self._query(cur, spec, batch, safe=False)
        except duckdb.Error:  # some file is not JSON: TRY() turns its row into NULL
            result = self._query(cur, spec, batch, safe=True)
        ok = pc.fill_null(result.column("_ok"), False)
        # raw is the input text itself: no copy through DuckDB
        rows = result.drop_columns(["_ok"]).append_column("raw", batch.column("content"))
        bad = pc.indices_nonzero(pc.invert(ok)).to_pylist()
        if bad:
            rows = rows.filter(ok)
        return Extracted(_typed_json(spec, rows), dict.fromkeys(bad))

    def _query(
        self, cur: duckdb.DuckDBPyConnection, spec: RecordSpec, batch: pa.Table, *, safe: bool
    ) -> pa.Table:
        # Planning the ~40 column expressions, not parsing JSON, is most of a small batch's
        # cost; a relation over the query text would bind it twice (to describe, then to
        # run), a prepared statement skips the parse and one of the binds (~25% less CPU).
        name = f"_extract_{spec.file_type}_{'safe' if safe else 'strict'}"
        prepared: set[str] | None = getattr(self._prepared, "names", None)
        if prepared is None:
            prepared = self._prepared.names = set()
        cur.register(_BATCH, batch)
        try:
            if name not in prepared:
                cur.execute(f"PREPARE {name} AS {_select_sql(spec, safe=safe)}").fetchall()
                prepared.add(name)
            return cur.sql(f"EXECUTE {name}").to_arrow_table()
        finally:
            cur.unregister(_BATCH)


def _typed_json(spec: RecordSpec, rows: pa.Table) -> pa.Table:
    """Type JSON columns as arrow.json: DuckDB validated them, so the database stores them
    without parsing again (a plain string would be re-parsed on the cast to JSON)."""
    for col in spec.table.columns:
        if col.type == "JSON":
            i = rows.schema.get_field_index(col.name)
            column = rows.column(i)
            json_type = pa.json_(column.type)
            chunks = [pa.ExtensionArray.from_storage(json_type, c) for c in column.chunks]
            rows = rows.set_column(i, col.name, pa.chunked_array(chunks, type=json_type))
    return rows


def _columns(spec: RecordSpec) -> str:
    cols = (c.name for c in spec.table.columns if c.name != "raw")
    return ", ".join(f'{spec.exprs[name]} AS "{name}"' for name in cols)


def _struct(spec: RecordSpec) -> str:
    return orjson.dumps(spec.struct).decode().replace("'", "''")


def _select_sql(spec: RecordSpec, *, safe: bool) -> str:
    parse = f"from_json(content, '{_struct(spec)}')"
    ok = "j IS NOT NULL" if spec.array else 'j IS NOT NULL AND j.id IS NOT DISTINCT FROM "key"'
    return (
        f"SELECT ({ok}) AS _ok, {_columns(spec)} FROM (SELECT *, content AS raw, "
        f"{f'TRY({parse})' if safe else parse} AS j FROM {_BATCH})"
    )


def array_items(spec: RecordSpec, data: bytes) -> list[tuple[int, bytes]] | None:
    """The items of an array file as ``(position, compact JSON)``, the last of items repeating
    ``spec.item_key``; None when the file is not an array of objects (`diagnose` says why)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, list):
        return None
    items: dict[object, tuple[int, bytes]] = {}
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            return None
        key: object = i
        if spec.item_key:
            key = item.get(spec.item_key)
            if not isinstance(key, str):
                return None
        items[key] = (i, orjson.dumps(item))
    return list(items.values())


def utf8_column(texts: list[bytes], owners: list[int], failed: dict[int, str | None]) -> pa.Array:
    """``texts`` as one string array (a single copy). A text that is not valid UTF-8 is blanked
    and its owner (``owners[row]``: a file, a database row) marked failed for `diagnose`."""
    offsets = pa.array(itertools.accumulate(map(len, texts), initial=0), pa.int64())
    data = pa.py_buffer(b"".join(texts))
    array = pa.Array.from_buffers(pa.large_string(), len(texts), [None, offsets.buffers()[1], data])
    try:
        array.validate(full=True)
        return array
    except pa.ArrowInvalid:
        pass
    for row, text in enumerate(texts):
        try:
            text.decode()
        except UnicodeDecodeError:
            failed[owners[row]] = None
            texts[row] = b""
    return pa.array(texts, pa.large_binary()).cast(pa.large_string())
