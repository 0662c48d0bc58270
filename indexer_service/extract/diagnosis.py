"""Says what is wrong with a file that gave no rows (`diagnose`), read with orjson."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from indexer_service.extract.specs import RecordSpec

__all__ = ["diagnose"]


def _kind(v: object) -> str:
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "boolean"
    return "null" if v is None else "number"


def diagnose(data: bytes, spec: RecordSpec, key: str) -> str:
    """What is wrong with a file that gave no rows, e.g. ``truncated JSON at byte 512``."""
    if not data:
        return "empty file"
    nul = data.find(b"\0")
    if nul >= 0:
        return "NUL bytes" + ("" if data.count(0) == len(data) else f" at byte {nul}")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.end == len(data):
            return f"truncated JSON at byte {len(data)}"  # cut inside a multi-byte character
        return f"invalid UTF-8 at byte {exc.start}"
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        at = len(text[: exc.pos].encode())  # orjson counts characters
        if exc.msg.startswith("unexpected end of data"):
            return f"truncated JSON at byte {len(data)}"
        if exc.msg.startswith("depth limit exceeded"):  # orjson parses 1024 levels at most
            return f"JSON nested deeper than 1024 levels at byte {at}"
        if exc.msg.startswith("unexpected content after document"):
            return f"trailing data after JSON at byte {at}"
        return f"invalid JSON at byte {at}: {exc.msg}"
    return _shape_error(doc, spec, key) or "rejected by DuckDB's JSON parser"


def _shape_error(doc: object, spec: RecordSpec, key: str) -> str | None:
    if spec.array:
        if not isinstance(doc, list):
            return f"expected an array, got {_kind(doc)}"
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                return f"item {i}: expected an object, got {_kind(item)}"
            if spec.item_key and not isinstance(item.get(spec.item_key), str):
                return f'item {i}: missing "{spec.item_key}"'
        return None
    if not isinstance(doc, dict):
        return f"expected an object, got {_kind(doc)}"
    if doc.get("id") is None:
        return 'missing "id"'
    if doc["id"] != key:
        shown = orjson.dumps(doc["id"]).decode()  # at most 80 characters: ids can be anything
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return f'"id" {shown} does not match the file name'
    return None
