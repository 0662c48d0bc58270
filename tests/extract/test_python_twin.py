"""The Python path of `extract.Extractor` gives what its SQL gives, or steps aside."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer_service.demo.synthetic import generate_tree
from indexer_service.extract import SPECS, Extracted, Extractor, RecordSpec, array_items

PLAIN = [t for t, spec in SPECS.items() if spec.plan is not None]


def test_every_type_can_take_the_python_path() -> None:
    """Every column expression of every type has its Python twin."""
    assert sorted(PLAIN) == sorted(SPECS)


@pytest.fixture(scope="module")
def extractors() -> Iterator[tuple[Extractor, Extractor]]:
    sql, python = Extractor(python_max_rows=0), Extractor()
    yield sql, python
    sql.close()
    python.close()


_SCALARS = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.integers(-(2**63), 2**64 - 1),  # what orjson writes; past int64 is not BIGINT
    st.integers(-62_135_596_800_001, 253_402_300_800_000),  # around the TIMESTAMP range
    st.floats(allow_nan=False),
    st.booleans(),
)
_VALUES = st.recursive(_SCALARS, lambda v: st.lists(v, max_size=2) | st.dictionaries(st.text(max_size=3), v, max_size=2), max_leaves=4)  # fmt: skip


_JSON = st.recursive(
    st.none() | st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1) | st.booleans(),
    lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=3), v, max_size=3),
    max_leaves=6,
)
_OF_TYPE = {
    "BIGINT": st.integers(-(2**63), 2**63 - 1),
    "DOUBLE": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    "BOOLEAN": st.booleans(),
    "JSON": _JSON,
    "VARCHAR": st.text(max_size=12),
}
_WORDS = {  # values that CASE expressions test, so their THEN branches run
    "role": st.sampled_from(["user", "assistant"]),
    "tool": st.sampled_from(["task", "bash"]),
    "type": st.sampled_from(["subtask", "tool", "text"]),
    "input": st.fixed_dictionaries(
        {},
        optional={
            k: st.text(max_size=5) | _VALUES
            for k in ("subagent_type", "prompt", "description", "command")
        },
    ),
    "summary": st.fixed_dictionaries({}, optional={"title": st.text(max_size=5) | _VALUES}),
}


def _doc(struct: dict[str, Any], wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Documents shaped like ``struct``: each field missing, of its type, or (``wild``)
    anything."""
    fields = {}
    for name, kind in struct.items():
        inner = _doc(kind, wild) if isinstance(kind, dict) else _OF_TYPE[kind]
        fields[name] = inner | _WORDS.get(name, inner)
        if wild:
            fields[name] |= _VALUES
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def _files(draw: st.DrawFn, file_type: str, wild: bool = True) -> list[tuple[str, bytes]]:
    spec = SPECS[file_type]
    out = []
    for i in range(draw(st.integers(1, 4))):
        key = f"k{i}"
        if spec.array:
            doc: Any = draw(st.lists(_doc(dict(spec.struct), wild), max_size=3))
            if spec.item_key:
                for n, item in enumerate(doc):
                    item.setdefault(spec.item_key, f"f{n}")
        else:
            doc = draw(_doc(dict(spec.struct), wild))
            doc["id"] = draw(st.sampled_from([key, key, key, "other", 7]))
        text = orjson.dumps(doc)
        if draw(st.booleans()):
            text = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        out.append((key, text))
    return out


def _batch(file_type: str, files: list[tuple[str, bytes]]) -> pa.Table | None:
    """The batch the loader builds (one row per item for list files)."""
    spec = SPECS[file_type]
    keys, positions, texts = [], [], []
    for key, text in files:
        if spec.array:
            items = array_items(spec, text)
            if items is None:
                continue
            for pos, item in items:
                keys.append(key)
                positions.append(pos)
                texts.append(item.decode())
        else:
            keys.append(key)
            texts.append(text.decode())
    if not keys:
        return None
    cols: dict[str, Any] = {
        "file_path": [f"/s/{file_type}/{k}.json" for k in keys],
        "key": keys,
        "parent": pa.array(["p1"] * len(keys), pa.string()),
    }
    if spec.array:
        cols["position"] = pa.array(positions, pa.int64())
    cols["content"] = pa.array(texts, pa.large_string())
    return pa.table(cols)


def _rows(extracted: Extracted) -> tuple[list[dict[str, Any]] | None, list[int]]:
    rows = None if extracted.rows is None else extracted.rows.to_pylist()
    return rows, sorted(extracted.bad)


@pytest.mark.parametrize("wild", [False, True], ids=["typed", "wild"])
@pytest.mark.parametrize("file_type", PLAIN)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_python_path_equals_sql(
    extractors: tuple[Extractor, Extractor], file_type: str, wild: bool, data: st.DataObject
) -> None:
    """Any document of the shape of its type, with fields of the right type (or, wild, of any
    other), ids that match or not: the rows and the rejected files are the same both ways."""
    batch = _batch(file_type, data.draw(_files(file_type, wild)))
    if batch is None:
        return
    sql, python = extractors
    spec = SPECS[file_type]
    assert _rows(python.extract(spec, batch)) == _rows(sql.extract(spec, batch))


def test_plain_documents_skip_duckdb(
    extractors: tuple[Extractor, Extractor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session file with every field of its declared type is read without a query, and a
    repeated key, NaN or a number where a string is declared sends it to DuckDB."""
    _, python = extractors
    queries: list[str] = []
    real = Extractor._run

    def run(self: Extractor, spec: RecordSpec, batch: pa.Table) -> Extracted:
        queries.append(spec.file_type)
        return real(self, spec, batch)

    monkeypatch.setattr(Extractor, "_run", run)
    doc = {
        "id": "k0",
        "title": "t",
        "time": {"created": 1_795_903_779_310},
        "summary": {"files": 2},
    }
    for text, query in [
        (orjson.dumps(doc), False),
        (orjson.dumps(doc)[:-1] + b',"title":"again"}', True),
        (orjson.dumps({**doc, "title": 5}), True),
        (orjson.dumps(doc)[:-1] + b',"x":NaN}', True),
    ]:
        queries.clear()
        got = python.extract(SPECS["session"], _batch("session", [("k0", text)]))
        assert got.rows is not None and got.rows.num_rows == 1
        assert (queries == ["session"]) == query, text


def test_documents_as_opencode_writes_them_skip_duckdb(
    extractors: tuple[Extractor, Extractor], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message and part of a generated tree (all part and tool kinds) is read in Python,
    and gives the rows DuckDB gives."""
    sql, python = extractors
    generate_tree(tmp_path, files=2_000)
    queries: list[str] = []
    real = Extractor._run

    def run(self: Extractor, spec: RecordSpec, batch: pa.Table) -> Extracted:
        if self is python:
            queries.append(spec.file_type)
        return real(self, spec, batch)

    monkeypatch.setattr(Extractor, "_run", run)
    for file_type in ("message", "part"):
        paths = sorted(tmp_path.glob(f"{file_type}/*/*.json"))
        assert len(paths) > 100
        for i in range(0, len(paths), 100):
            files = [(p.stem, p.read_bytes()) for p in paths[i : i + 100]]
            batch = _batch(file_type, files)
            assert batch is not None
            spec = SPECS[file_type]
            assert _rows(python.extract(spec, batch)) == _rows(sql.extract(spec, batch))
    assert queries == []
