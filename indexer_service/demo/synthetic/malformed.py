"""Damaged storage files (``corrupt``) and noise files an indexer must skip (``add_noise``)."""

from __future__ import annotations

import enum
import random
from pathlib import Path

import orjson

from indexer_service.demo.synthetic.files import _INDENT, _INPLACE, _write
from indexer_service.demo.synthetic.spec import DEFAULT_BASE_TIME_MS


class Malformed(enum.Enum):
    """Ways storage files are found broken (spec §4 and §7)."""

    EMPTY = "empty"  # created but not yet written, or disk full
    TRUNCATED = "truncated"  # torn read of a multi-page write: a strict prefix
    NUL_FILLED = "nul_filled"  # after a crash: all NUL bytes
    INVALID_UTF8 = "invalid_utf8"
    WRONG_TOP_LEVEL = "wrong_top_level"  # an array where an object belongs, or the reverse
    MISSING_ID = "missing_id"  # a valid JSON object without "id"
    TRAILING_GARBAGE = "trailing_garbage"  # shrinking in-place rewrite, seen before ftruncate


def damaged(data: bytes, kind: Malformed, seed: int = 0) -> bytes:
    """``data`` (a JSON document's bytes) damaged as ``kind`` says (MISSING_ID needs an object)."""
    r = random.Random(seed)
    option = _INDENT if data[1:2] == b"\n" else 0  # keep pretty files pretty
    if kind is Malformed.EMPTY:
        return b""
    if kind is Malformed.TRUNCATED:
        return data[: r.randint(1, len(data) - 1)] if len(data) > 1 else b""
    if kind is Malformed.NUL_FILLED:
        return b"\0" * max(len(data), 1)
    if kind is Malformed.INVALID_UTF8:
        i = data.find(b'"') + 1
        return data[:i] + b"\xff\xfe" + data[i:]
    if kind is Malformed.WRONG_TOP_LEVEL:
        obj = orjson.loads(data)
        return orjson.dumps([obj] if isinstance(obj, dict) else {"items": obj}, option=option)
    if kind is Malformed.MISSING_ID:
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("MISSING_ID needs a JSON object")
        del obj["id"]
        return orjson.dumps(obj, option=option)
    # the stale tail of a longer previous version of the same document
    return data + data[len(data) - r.randint(1, max(1, len(data) // 2)) :]


def corrupt(path: Path, kind: Malformed, seed: int = 0) -> None:
    """Damage one file in place as ``kind`` says (MISSING_ID needs a JSON object file)."""
    try:
        new = damaged(Path(path).read_bytes(), kind, seed)
    except ValueError as exc:
        raise ValueError(f"{exc}: {path}") from None
    _write(str(path), new, _INPLACE)


def corrupt_random(root: Path, kind: Malformed, n: int, seed: int = 0) -> list[Path]:
    """Damage ``n`` record files picked at random (object records only for MISSING_ID)."""
    kinds = ["project", "session", "message", "part"]
    if kind is not Malformed.MISSING_ID:
        kinds += ["todo", "session_diff"]
    files = sorted(p for k in kinds for p in (Path(root) / k).rglob("*.json"))
    picked = random.Random(seed).sample(files, min(n, len(files)))
    for i, path in enumerate(picked):
        corrupt(path, kind, seed + i)
    return picked


def add_noise(root: Path, seed: int = 0) -> list[Path]:
    """Add files an indexer must skip: migration, shares, permission, 0.x temp file, non-JSON."""
    root, r = Path(root), random.Random(seed)
    sessions = sorted(root.glob("session/*/*.json"))
    pid, sid = (sessions[0].parent.name, sessions[0].stem) if sessions else ("global", "ses_0")
    url = f"https://opncd.ai/share/{sid[-8:]}"
    rules = [{"permission": "bash", "pattern": "git status*", "action": "allow"}]
    noise = {
        "migration": b"2",
        f"session_share/{sid}.json": {"id": sid[-8:], "secret": r.randbytes(16).hex(), "url": url},
        f"share/{sid}.json": {"secret": r.randbytes(16).hex(), "url": url},
        f"permission/{pid}.json": rules,
        f"session/{pid}/{sid}.json{DEFAULT_BASE_TIME_MS - r.randrange(10**10)}.tmp": {"id": sid},
        f"message/{sid}/.DS_Store": b"\x00\x00\x00\x01Bud1" + r.randbytes(64),
    }
    for rel, obj in noise.items():
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj, option=_INDENT)
        _write(str(root / rel), data)
    return [root / rel for rel in noise]
