"""Synthetic OpenCode storage trees: format, layout, IDs, proportions, damage, live writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from indexer_service.demo.synthetic import (
    LiveWriter,
    Malformed,
    TreeSpec,
    TreeSummary,
    add_noise,
    corrupt,
    corrupt_random,
    generate_tree,
)

ID = re.compile(r"^(ses|msg|prt)_[0-9a-f]{12}[0-9A-Za-z]{14}$")
MASK48 = (1 << 48) - 1
# A richer mix than the defaults, and a seed picked so that every rare shape (subtask,
# compaction, retry, image, pending tool...) shows up in a small tree: re-pick the seed
# if a generator change makes test_all_part_types_tools_and_states miss one.
RICH = TreeSpec(
    sessions=10,
    seed=7,
    messages_per_session=24,
    subagent_ratio=0.5,
    crashed_ratio=0.3,
    error_ratio=0.1,
    compact_ratio=0.2,
)


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def load(root: Path, pattern: str) -> dict[Path, Any]:
    return {p: orjson.loads(p.read_bytes()) for p in root.glob(pattern)}


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> TreeSummary:
    return generate_tree(tmp_path_factory.mktemp("rich") / "storage", RICH)


@pytest.fixture(scope="module")
def records(rich: TreeSummary) -> dict[str, dict[Path, Any]]:
    kinds = {"session": "session/*/*.json", "message": "message/*/*.json", "part": "part/*/*.json"}
    return {kind: load(rich.root, pattern) for kind, pattern in kinds.items()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """Two trees from the same spec are byte-identical; another seed gives another tree."""
    spec = TreeSpec(sessions=2, messages_per_session=15, seed=7)
    generate_tree(tmp_path / "a", spec)
    generate_tree(tmp_path / "b", spec)
    generate_tree(tmp_path / "c", TreeSpec(sessions=2, messages_per_session=15, seed=8))
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")
    sessions = [{p.stem for p in (tmp_path / x).glob("session/*/*.json")} for x in "ac"]
    assert sessions[0].isdisjoint(sessions[1])


def test_summary_counts_match_disk(rich: TreeSummary) -> None:
    """The summary counts every file written, by kind, and lists every session."""
    on_disk = Counter(
        p.parts[0] if p.parts[0] in rich.counts and p.parts[0] != "other" else "other"
        for p in (f.relative_to(rich.root) for f in rich.root.rglob("*") if f.is_file())
    )
    assert on_disk == Counter(rich.counts)
    assert rich.files == sum(on_disk.values())
    assert {p.stem for p in rich.root.glob("session/*/*.json")} == set(rich.session_ids)
    assert (rich.root / "migration").read_bytes() == b"2"


def test_ids_agree_with_paths(rich: TreeSummary, records: dict[str, dict[Path, Any]]) -> None:
    """Every record's id and parent ids are the ones its path says."""
    root = rich.root
    for path, obj in load(root, "project/*.json").items():
        assert obj["id"] == path.stem
    for path, obj in records["session"].items():
        assert (obj["id"], obj["projectID"]) == (path.stem, path.parent.name)
    sessions = {path.stem for path in records["session"]}
    for path, obj in records["message"].items():
        assert (obj["id"], obj["sessionID"]) == (path.stem, path.parent.name)
        assert obj["sessionID"] in sessions
    message_session = {path.stem: obj["sessionID"] for path, obj in records["message"].items()}
    for path, obj in records["part"].items():
        assert (obj["id"], obj["messageID"]) == (path.stem, path.parent.name)
        assert obj["sessionID"] == message_session[obj["messageID"]]
    for kind in ("todo", "session_diff"):
        for path, obj in load(root, f"{kind}/*.json").items():
            assert isinstance(obj, list) and path.stem in sessions
    for path in root.glob("session_share/*.json"):
        assert path.stem in sessions and orjson.loads(path.read_bytes()).keys() == {
            "id",
            "secret",
            "url",
        }


def test_json_stringify_formatting(rich: TreeSummary) -> None:
    """Files are JSON.stringify(x, null, 2) bytes (or one-line JSON when migrated), no newline."""
    styles: Counter[str] = Counter()
    for path in rich.root.rglob("*.json"):
        data = path.read_bytes()
        obj = orjson.loads(data)
        assert not data.endswith(b"\n")
        assert b"\\u00" not in data.replace(b"\\u001b", b"")  # non-ASCII written raw
        if data == orjson.dumps(obj, option=orjson.OPT_INDENT_2):
            styles["pretty"] += 1
        else:
            assert data == orjson.dumps(obj)
            styles["compact"] += 1
    assert styles["pretty"] > styles["compact"] > 0
    assert any("é".encode() in p.read_bytes() for p in rich.root.glob("part/*/*.json"))


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_json_stringify_agrees(rich: TreeSummary) -> None:
    """Node's own JSON.stringify reproduces every file byte for byte."""
    script = """
    const fs = require('fs'); let bad = 0;
    for (const p of fs.readFileSync(0, 'utf8').split('\\n').filter(Boolean)) {
      const raw = fs.readFileSync(p, 'utf8'), obj = JSON.parse(raw);
      if (raw !== JSON.stringify(obj, null, 2) && raw !== JSON.stringify(obj)) bad++;
    }
    console.log(bad);
    """
    paths = "\n".join(str(p) for p in rich.root.rglob("*.json"))
    out = subprocess.run(["node", "-e", script], input=paths, capture_output=True, text=True)
    assert out.stdout.strip() == "0", out.stderr


def test_all_part_types_tools_and_states(records: dict[str, dict[Path, Any]]) -> None:
    """A small rich tree holds every written part type, the common tools and all tool states."""
    parts = records["part"].values()
    types = {p["type"] for p in parts}
    expected = (
        "text reasoning tool step-start step-finish patch file agent subtask compaction retry"
    )
    assert types == set(expected.split())
    tools = {p["tool"] for p in parts if p["type"] == "tool"}
    assert tools >= {
        "bash",
        "read",
        "edit",
        "write",
        "grep",
        "glob",
        "task",
        "todowrite",
        "webfetch",
    }
    states = {p["state"]["status"] for p in parts if p["type"] == "tool"}
    assert states == {"pending", "running", "completed", "error"}
    assert any(p["type"] == "file" and p["url"].startswith("data:image/png;base64,") for p in parts)
    edits = [p for p in parts if p.get("tool") == "edit" and p["state"]["status"] == "completed"]
    assert all({"before", "after"} <= p["state"]["metadata"]["filediff"].keys() for p in edits)
    big_bash = [
        p for p in parts if p.get("tool") == "bash" and len(p["state"].get("output", "")) > 20_000
    ]
    assert big_bash and all(p["state"]["metadata"]["output"] for p in big_bash)
    errors = {m["error"]["name"] for m in records["message"].values() if "error" in m}
    assert "APIError" in errors


def test_id_format_and_order(records: dict[str, dict[Path, Any]]) -> None:
    """IDs encode their ms and counter: ses_ descending, msg_/prt_ ascending in creation order."""
    for kind in ("session", "message", "part"):
        assert all(ID.match(obj["id"]) for obj in records[kind].values())
    for obj in records["session"].values():
        value = int(obj["id"][4:16], 16) ^ MASK48
        assert value >> 12 == obj["time"]["created"] % (1 << 36)
    sessions = sorted(records["session"].values(), key=lambda s: s["time"]["created"])
    assert [s["id"] for s in sessions] == sorted((s["id"] for s in sessions), reverse=True)
    by_session: dict[str, list[Any]] = {}
    for obj in records["message"].values():
        assert int(obj["id"][4:16], 16) >> 12 == obj["time"]["created"] % (1 << 36)
        by_session.setdefault(obj["sessionID"], []).append(obj)
    for messages in by_session.values():
        by_time = sorted(messages, key=lambda m: (m["time"]["created"], m["id"]))
        assert [m["id"] for m in by_time] == sorted(m["id"] for m in messages)
    for obj in records["part"].values():
        assert obj["id"][4:] > obj["messageID"][4:]
    call_ids = [p["callID"] for p in records["part"].values() if p["type"] == "tool"]
    assert all(re.match(r"^(toolu_01|call_|01)[0-9A-Za-z]+$", c) for c in call_ids)


def test_steps_and_messages_agree(records: dict[str, dict[Path, Any]]) -> None:
    """Each finished step's tokens, cost and reason are its message's; crashed steps have none."""
    parts_of: dict[str, list[Any]] = {}
    for part in records["part"].values():
        parts_of.setdefault(part["messageID"], []).append(part)
    crashed = 0
    for msg in records["message"].values():
        if msg["role"] != "assistant":
            continue
        finishes = [p for p in parts_of.get(msg["id"], []) if p["type"] == "step-finish"]
        if finishes:
            (fin,) = finishes
            assert (fin["tokens"], fin["cost"]) == (msg["tokens"], msg["cost"])
            assert msg.get("finish", fin["reason"]) == fin["reason"]
        if "completed" not in msg["time"]:
            crashed += 1
            assert not finishes and "finish" not in msg and msg["cost"] == 0
            assert msg["tokens"] == {
                "input": 0,
                "output": 0,
                "reasoning": 0,
                "cache": {"read": 0, "write": 0},
            }
    assert crashed > 0


def test_subagent_sessions_are_linked(records: dict[str, dict[Path, Any]]) -> None:
    """A task tool's metadata.sessionId names a child session whose parentID is the caller."""
    sessions = {obj["id"]: obj for obj in records["session"].values()}
    tasks = [p for p in records["part"].values() if p.get("tool") == "task"]
    assert tasks
    for part in tasks:
        child = sessions[part["state"]["metadata"]["sessionId"]]
        assert child["parentID"] == part["sessionID"]
        assert child["title"].endswith("subagent)")


def test_file_count_target_and_proportions(tmp_path: Path) -> None:
    """files= stops near the target; ~265 files per session and ~4.35 parts per message."""
    summary = generate_tree(tmp_path, TreeSpec.for_file_count(2_000, seed=5))
    assert 2_000 <= summary.files < 3_000
    assert 200 < summary.files / len(summary.session_ids) < 330
    assert 3.9 < summary.counts["part"] / summary.counts["message"] < 4.8


def some_files(root: Path) -> dict[str, Path]:
    return {
        "part": min(root.glob("part/*/*.json")),
        "session": min(root.glob("session/*/*.json")),
        "todo": min(root.glob("todo/*.json")),
    }


@pytest.mark.parametrize("kind", list(Malformed))
def test_malformed_kinds(tmp_path: Path, rich: TreeSummary, kind: Malformed) -> None:
    """Each kind of damage is what its name says, on object files and on todo arrays."""
    for name, source in some_files(rich.root).items():
        if kind is Malformed.MISSING_ID and name == "todo":
            continue
        path = tmp_path / f"{name}.json"
        shutil.copy(source, path)
        original = path.read_bytes()
        corrupt(path, kind, seed=1)
        data = path.read_bytes()
        if kind is Malformed.MISSING_ID:
            assert "id" not in orjson.loads(data)
            continue
        if kind is Malformed.WRONG_TOP_LEVEL:
            assert isinstance(orjson.loads(data), dict if name == "todo" else list)
            continue
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(data)
        if kind is Malformed.EMPTY:
            assert data == b""
        elif kind is Malformed.TRUNCATED:
            assert 0 < len(data) < len(original) and original.startswith(data)
        elif kind is Malformed.NUL_FILLED:
            assert data == b"\0" * len(original)
        elif kind is Malformed.INVALID_UTF8:
            with pytest.raises(UnicodeDecodeError):
                data.decode()
        else:
            obj, end = json.JSONDecoder().raw_decode(data.decode(errors="replace"))
            assert obj == orjson.loads(original) and end == len(original.decode()) < len(data)


def test_corrupt_random(tmp_path: Path) -> None:
    """corrupt_random damages n distinct record files; MISSING_ID only picks objects."""
    root = tmp_path / "storage"
    generate_tree(root, TreeSpec(sessions=2, messages_per_session=10))
    empty = corrupt_random(root, Malformed.EMPTY, 5, seed=2)
    assert len(set(empty)) == 5 and all(p.stat().st_size == 0 for p in empty)
    for path in corrupt_random(root, Malformed.MISSING_ID, 20, seed=3):
        assert path.relative_to(root).parts[0] in {"project", "session", "message", "part"}


def test_noise(tmp_path: Path) -> None:
    """add_noise writes the non-indexed files a real tree holds."""
    root = tmp_path / "storage"
    generate_tree(root, TreeSpec(sessions=1, messages_per_session=6))
    names = {str(p.relative_to(root)) for p in add_noise(root)}
    assert {"migration"} | {n.split("/")[0] for n in names} >= {
        "session_share",
        "share",
        "permission",
    }
    assert any(re.search(r"\.json\d+\.tmp$", n) for n in names)
    assert any(
        not n.endswith(".json") and not n.endswith(".tmp") and n != "migration" for n in names
    )
    assert all(p.exists() for p in (root / n for n in names))


def test_live_writer_streams_in_place(tmp_path: Path) -> None:
    """stream_text rewrites one part with growing text and leaves valid JSON, time ended."""
    sizes: list[int] = []
    writer = LiveWriter(tmp_path, seed=5, on_write=lambda p: sizes.append(p.stat().st_size))
    session_id = writer.new_session()
    written = writer.write_step(session_id)
    assert any(p.parts[-3] == "message" for p in written) and writer.last_text_part in written
    target = writer.last_text_part
    assert target is not None
    before = orjson.loads(target.read_bytes())["text"]
    sizes.clear()
    assert writer.stream_text(target, deltas=12) == [target] * 12
    assert sizes == sorted(set(sizes)) and len(sizes) == 12
    final = orjson.loads(target.read_bytes())
    assert final["text"].startswith(before) and len(final["text"]) > len(before)
    assert final["time"]["start"] == final["time"]["end"]
    assert target.read_bytes() == orjson.dumps(final, option=orjson.OPT_INDENT_2)


def test_live_writer_is_deterministic(tmp_path: Path) -> None:
    """Two live writers with the same seed write the same bytes."""
    for name in ("a", "b"):
        writer = LiveWriter(tmp_path / name, seed=9)
        session_id = writer.new_session()
        for _ in range(4):
            writer.write_step(session_id)
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")


def test_delete_session_leaves_orphans(tmp_path: Path) -> None:
    """delete_session unlinks session, messages and parts; dirs, todo and session_diff stay."""
    writer = LiveWriter(tmp_path, seed=3)
    doomed, kept = writer.new_session(), writer.new_session()
    for _ in range(6):
        writer.write_step(doomed)
    writer.write_step(kept)
    message_ids = [p.stem for p in (tmp_path / "message" / doomed).glob("*.json")]
    removed = writer.delete_session(doomed)
    assert len(removed) == len(set(removed)) > len(message_ids) > 0
    assert not list(tmp_path.glob(f"session/*/{doomed}.json"))
    assert (tmp_path / "message" / doomed).is_dir()
    assert not list((tmp_path / "message" / doomed).iterdir())
    assert all(
        (tmp_path / "part" / m).is_dir() and not list((tmp_path / "part" / m).iterdir())
        for m in message_ids
    )
    assert (tmp_path / "session_diff" / f"{doomed}.json").exists()
    assert list(tmp_path.glob(f"session/*/{kept}.json"))
