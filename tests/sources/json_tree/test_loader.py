"""Loader and WorkerPool: real storage files in tmp_path, a real DuckDB file."""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from conftest import load_batch

from indexer_service.demo.synthetic import Malformed, TreeSpec, add_noise, corrupt, generate_tree
from indexer_service.model import Batch, BatchResult
from indexer_service.pool import WorkerPool
from indexer_service.sources.json_tree import files, pagecache
from indexer_service.sources.json_tree import loader as loader_module
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.store.database import Database

T0 = 1_795_903_779_310
SES, MSG, PID = "ses_ddbcb0e73ffecYcMoaR3ZExEmE", "msg_22434f2b50016D30FVyj3AyQOa", "p" * 40
TABLES = {"project": "projects", "session": "sessions", "message": "messages", "part": "parts",
          "todo": "todos", "session_diff": "session_diffs"}  # fmt: skip


def ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def put(root: Path, rel: str, doc: object) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return str(path)


def part_doc(pid: str = "prt_1", **fields: Any) -> dict[str, Any]:
    return {"id": pid, "sessionID": SES, "messageID": MSG, "type": "text", **fields}


def put_part(root: Path, pid: str = "prt_1", **fields: Any) -> str:
    return put(root, f"part/{MSG}/{pid}.json", part_doc(pid, **fields))


def rows(db: Database, sql: str, *params: object) -> list[tuple[Any, ...]]:
    return db.cursor().execute(sql, list(params)).fetchall()


def entry(db: Database, path: str) -> tuple[Any, ...]:
    """(status, error_message, record_id, file_type, mtime_ns, size); () if not indexed."""
    found = rows(
        db,
        "SELECT status, error_message, record_id, file_type, mtime_ns, size "
        "FROM file_index WHERE file_path = ?",
        path,
    )
    return found[0] if found else ()


def all_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


# -- round trip --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "storage"
    generate_tree(root, TreeSpec(sessions=6, seed=3, messages_per_session=12, crashed_ratio=0.3, error_ratio=0.3))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, tree: Path
) -> Iterator[tuple[Database, BatchResult]]:
    """The generated tree loaded in one batch (read-only for the tests that use it)."""
    with Database(tmp_path_factory.mktemp("db") / "index.duckdb") as db:
        loader = Loader(db, FileTracker(db), tree)
        result = load_batch(loader, all_files(tree))
        loader.close()
        yield db, result


def test_generated_tree_round_trips(tree: Path, loaded: tuple[Database, BatchResult]) -> None:
    """Every file of a generated tree gives rows whose raw equals the file, and its file_index entry."""
    files = [p for p in all_files(tree) if p.endswith(".json")]
    db, result = loaded
    assert (result.errors, result.deleted, result.requeue) == (0, 0, [])
    assert result.indexed == len(files) and result.skipped == 1  # storage/migration
    index = {r[0]: r[1:] for r in rows(db, "SELECT file_path, status, record_id, file_type, size FROM file_index")}  # fmt: skip
    for ftype, table in TABLES.items():
        typed = [p for p in files if Path(p).relative_to(tree).parts[0] == ftype]
        assert typed and result.by_type[ftype] == len(typed)
        stored: dict[str, list[Any]] = {}
        for path, raw in rows(db, f"SELECT file_path, raw FROM {table}"):
            stored.setdefault(path, []).append(orjson.loads(raw))
        for path in typed:
            doc = orjson.loads(Path(path).read_bytes())
            want = doc if isinstance(doc, list) else [doc]
            assert sorted(stored.get(path, []), key=repr) == sorted(want, key=repr), path
            assert index[path] == ("indexed", Path(path).stem, ftype, os.path.getsize(path))


def _part_expected(doc: dict[str, Any]) -> dict[str, Any]:
    state = doc.get("state") or {}
    st, t = state.get("time") or {}, doc.get("time") or {}
    start, end = st.get("start", t.get("start")), st.get("end", t.get("end"))
    tokens = doc.get("tokens") or {}
    inp = state.get("input") or {}
    task = doc.get("tool") == "task"
    return {
        "type": doc["type"], "session_id": doc["sessionID"], "message_id": doc["messageID"],
        "tool": doc.get("tool"), "call_id": doc.get("callID"), "tool_status": state.get("status"),
        "title": state.get("title"), "error": state.get("error") or (doc.get("error") or {}).get("data", {}).get("message"),
        "start_at": ts(start if start is not None else t.get("created")), "end_at": ts(end),
        "duration_ms": end - start if start is not None and end is not None else None,
        "reason": doc.get("reason"), "cost": doc.get("cost"), "tokens_input": tokens.get("input"),
        "tokens_cache_read": (tokens.get("cache") or {}).get("read"),
        "task_session_id": (state.get("metadata") or {}).get("sessionId"),
        "subagent_type": inp.get("subagent_type") if task else None,
        "tool_input": inp if "input" in state else None,
    }  # fmt: skip


def _message_expected(doc: dict[str, Any]) -> dict[str, Any]:
    model, tokens, t = doc.get("model") or {}, doc.get("tokens") or {}, doc["time"]
    return {
        "role": doc["role"], "agent": doc.get("agent", doc.get("mode")),
        "provider_id": doc.get("providerID", model.get("providerID")),
        "model_id": doc.get("modelID", model.get("modelID")), "cost": doc.get("cost"),
        "tokens_output": tokens.get("output"), "tokens_total": tokens.get("total"),
        "tokens_cache_write": (tokens.get("cache") or {}).get("write"), "finish": doc.get("finish"),
        "created_at": ts(t["created"]), "completed_at": ts(t.get("completed")),
        "error_name": (doc.get("error") or {}).get("name"),
    }  # fmt: skip


@pytest.mark.parametrize(("table", "expected"), [("parts", _part_expected), ("messages", _message_expected)])  # fmt: skip
def test_typed_columns_equal_the_json(
    loaded: tuple[Database, BatchResult], table: str, expected: Any
) -> None:
    """Typed columns of every generated part and message hold the JSON values (times as TIMESTAMP)."""
    db, _ = loaded
    cur = db.cursor()
    cur.execute(f"SELECT * FROM {table}")
    names = [d[0] for d in cur.description]
    found = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert found
    for row in found:
        want = expected(orjson.loads(row["raw"]))
        if row.get("tool_input") is not None:
            row["tool_input"] = orjson.loads(row["tool_input"])
        assert {k: row[k] for k in want} == want, row["file_path"]


# -- rewrites ----------------------------------------------------------------------------------


def test_rewrite_replaces_the_row(db: Database, storage: Path, loader: Loader) -> None:
    """A rewritten file replaces its row (one row, the new values, the new version indexed)."""
    path = put_part(storage, text="a", time={"start": T0})
    load_batch(loader, [path])
    put_part(storage, text="a longer answer", time={"start": T0, "end": T0 + 9})
    result = load_batch(loader, [path])
    assert result.indexed == 1
    got = rows(db, "SELECT raw->>'text', duration_ms FROM parts")
    assert got == [("a longer answer", 9)]
    assert entry(db, path)[5] == os.path.getsize(path)


@pytest.mark.parametrize("n", [3, 300], ids=["few", "more-than-lookup-max"])
def test_rewrites_and_deletions_of_a_whole_batch(
    db: Database, storage: Path, loader: Loader, n: int
) -> None:
    """Rewriting then deleting ``n`` files in one batch each leaves exactly the files not
    touched (keys are looked up one by one up to LOOKUP_MAX_KEYS, joined beyond)."""
    paths = [put_part(storage, f"prt_{i:04}", text="v1") for i in range(n + 2)]
    load_batch(loader, paths)
    for i in range(n):
        put_part(storage, f"prt_{i:04}", text="v2")
    assert load_batch(loader, paths[:n]).indexed == n
    texts = rows(db, "SELECT raw->>'text', count(*) FROM parts GROUP BY ALL ORDER BY ALL")
    assert texts == [("v1", 2), ("v2", n)]
    for path in paths[:n]:
        os.unlink(path)
    assert load_batch(loader, paths[:n]).deleted == n
    assert rows(db, "SELECT file_path FROM parts ORDER BY 1") == [(p,) for p in paths[n:]]
    assert rows(db, "SELECT file_path FROM file_index ORDER BY 1") == [(p,) for p in paths[n:]]


def test_a_column_added_by_migration_gets_its_own_values(db_path: Path, storage: Path) -> None:
    """Rows go in by position: a database whose `parts` got a column back from the start-up
    migration (so it sits last, not where the schema lists it) still gets each value in its
    column, in a first insert and in a rewrite."""
    with Database(db_path) as db:
        db.cursor().execute("ALTER TABLE parts DROP COLUMN tool")
    path = put_part(storage, type="tool", tool="bash", callID="call_1", state={"status": "ok"})
    with Database(db_path) as db:  # the migration adds `tool` again, as the last column
        cols = [r[0] for r in rows(db, "SELECT column_name FROM duckdb_columns() "
                                       "WHERE table_name = 'parts' ORDER BY column_index")]  # fmt: skip
        assert cols[-1] == "tool"
        loader = Loader(db, FileTracker(db), storage)
        for _ in range(2):  # a new row, then an upsert of it
            assert load_batch(loader, [path]).indexed == 1
            os.utime(path, ns=(time_ns := os.stat(path).st_mtime_ns + 1_000_000, time_ns))
        loader.close()
        got = rows(db, "SELECT tool, call_id, tool_status, type, file_path FROM parts")
        assert got == [("bash", "call_1", "ok", "tool", path)]


def test_todo_list_shrinking_removes_positions(db: Database, storage: Path, loader: Loader) -> None:
    """A shorter todo list leaves only its positions; an empty list leaves none but stays indexed."""
    items = [{"id": str(i), "content": f"task {i}", "status": "pending", "priority": "low"} for i in range(3)]  # fmt: skip
    path = put(storage, f"todo/{SES}.json", items)
    load_batch(loader, [path])
    assert rows(db, "SELECT position, id FROM todos ORDER BY 1") == [(0, "0"), (1, "1"), (2, "2")]
    put(storage, f"todo/{SES}.json", [{**items[2], "status": "completed"}])
    load_batch(loader, [path])
    assert rows(db, "SELECT session_id, position, id, status FROM todos") == [(SES, 0, "2", "completed")]  # fmt: skip
    put(storage, f"todo/{SES}.json", [])
    assert load_batch(loader, [path]).indexed == 1
    assert rows(db, "SELECT count(*) FROM todos") == [(0,)]
    assert entry(db, path)[:3] == ("indexed", None, SES)


def test_session_diff_entries_removed(db: Database, storage: Path, loader: Loader) -> None:
    """A diff entry that disappears from a rewritten session_diff file loses its row."""
    diff = {"before": "", "after": "x\n", "additions": 1, "deletions": 0, "status": "added"}
    path = put(
        storage, f"session_diff/{SES}.json", [{"file": "a.py", **diff}, {"file": "b.py", **diff}]
    )
    other = put(storage, "session_diff/ses_other.json", [{"file": "a.py", **diff}])
    load_batch(loader, [path, other])
    put(storage, f"session_diff/{SES}.json", [{"file": "b.py", **diff, "additions": 5}])
    load_batch(loader, [path])
    got = rows(db, "SELECT session_id, file, additions FROM session_diffs ORDER BY ALL")
    assert got == [(SES, "b.py", 5), ("ses_other", "a.py", 1)]


# -- malformed files ---------------------------------------------------------------------------

MESSAGES = {
    Malformed.EMPTY: r"empty file",
    Malformed.TRUNCATED: r"truncated JSON at byte \d+",
    Malformed.NUL_FILLED: r"NUL bytes",
    Malformed.INVALID_UTF8: r"invalid UTF-8 at byte \d+",
    Malformed.WRONG_TOP_LEVEL: r"expected an object, got array",
    Malformed.MISSING_ID: r'missing "id"',
    Malformed.TRAILING_GARBAGE: r"trailing data after JSON at byte \d+",
}


@pytest.mark.parametrize("kind", list(Malformed))
def test_malformed_file_is_an_error_and_keeps_its_last_good_rows(
    db: Database, storage: Path, loader: Loader, kind: Malformed
) -> None:
    """A broken rewrite gets status 'error' with a precise message and keeps its last good rows."""
    path = put_part(storage, text="good")
    load_batch(loader, [path])
    corrupt(Path(path), kind, seed=4)
    neighbour = put_part(storage, "prt_2", text="fine")
    result = load_batch(loader, [path, neighbour])
    assert (result.errors, result.indexed) == (1, 1)
    status, message, record_id, *_ = entry(db, path)
    assert status == "error" and record_id == "prt_1"
    assert message is not None
    assert re.fullmatch(MESSAGES[kind], message), message
    assert rows(db, "SELECT id, raw->>'text' FROM parts ORDER BY 1") == [("prt_1", "good"), ("prt_2", "fine")]  # fmt: skip


def test_array_file_of_the_wrong_shape_is_an_error(
    db: Database, storage: Path, loader: Loader
) -> None:
    """A todo file holding an object, or a diff item without a file, is an error."""
    todo = put(storage, f"todo/{SES}.json", {"id": "1"})
    diff = put(storage, f"session_diff/{SES}.json", [{"status": "added"}])
    assert load_batch(loader, [todo, diff]).errors == 2
    assert entry(db, todo)[1] == "expected an array, got object"
    assert entry(db, diff)[1] == 'item 0: missing "file"'


def test_permission_denied_is_an_error_not_a_crash(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be opened gets status 'error' with the reason; the batch goes on."""
    locked, fine = put_part(storage, "prt_locked"), put_part(storage, "prt_fine")
    read = files.Tree.read

    def deny(
        tree: files.Tree, path: str, max_bytes: int | None = None
    ) -> tuple[bytes, files.Version]:
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return read(tree, path, max_bytes)

    monkeypatch.setattr(files.Tree, "read", deny)
    result = load_batch(loader, [locked, fine])
    assert (result.errors, result.indexed) == (1, 1)
    assert entry(db, locked)[:2] == ("error", "cannot read: Permission denied")


# -- deletions and skipped files ---------------------------------------------------------------

RECORDS = {
    "project": (f"project/{PID}.json", {"id": PID, "worktree": "/w", "time": {"created": T0}}),
    "session": (f"session/{PID}/{SES}.json", {"id": SES, "projectID": PID, "title": "t", "time": {"created": T0}}),
    "message": (f"message/{SES}/{MSG}.json", {"id": MSG, "sessionID": SES, "role": "user", "time": {"created": T0}}),
    "part": (f"part/{MSG}/prt_1.json", part_doc()),
    "todo": (f"todo/{SES}.json", [{"id": "1", "content": "c", "status": "pending", "priority": "low"}]),
    "session_diff": (f"session_diff/{SES}.json", [{"file": "a.py", "additions": 1, "deletions": 0}]),
}  # fmt: skip


@pytest.mark.parametrize("file_type", list(RECORDS))
def test_deleting_a_file_removes_its_rows(
    db: Database, storage: Path, loader: Loader, file_type: str
) -> None:
    """A path that no longer exists loses its rows and its file_index entry."""
    rel, doc = RECORDS[file_type]

    def other(text: str) -> str:
        ids = ((SES, "ses_keep"), (PID, "q" * 40), (MSG, "msg_keep"), ("prt_1", "prt_keep"))
        for old, new in ids:
            text = text.replace(old, new)
        return text

    path = put(storage, rel, doc)
    keep = put(storage, other(rel), orjson.loads(other(orjson.dumps(doc).decode())))
    load_batch(loader, [path, keep])
    table = TABLES[file_type]
    assert rows(db, f"SELECT count(*) FROM {table}") == [(2,)]
    os.unlink(path)
    result = load_batch(loader, [path])
    assert (result.deleted, result.indexed) == (1, 0)
    assert rows(db, f"SELECT file_path FROM {table}") == [(keep,)]
    assert entry(db, path) == () and entry(db, keep) != ()


def test_deleting_one_of_two_copies_keeps_the_row_the_other_wrote(
    db: Database, storage: Path, loader: Loader
) -> None:
    """Deleting one of two copies of a session file keeps the row the other copy wrote."""
    old = put(storage, f"session/{PID}/{SES}.json", {"id": SES, "title": "old"})
    load_batch(loader, [old])
    new = put(storage, f"session/{'q' * 40}/{SES}.json", {"id": SES, "title": "new"})
    load_batch(loader, [new])
    os.unlink(old)
    load_batch(loader, [old])
    assert rows(db, "SELECT title, project_id FROM sessions") == [("new", "q" * 40)]


def test_other_files_are_skipped_and_counted(db: Database, storage: Path, loader: Loader) -> None:
    """Shares, permissions, migration, temp, non-JSON and outside files are skipped and counted."""
    noise = [str(p) for p in add_noise(storage)]
    extra = [str(storage / "part" / MSG / "notes.txt"), "/elsewhere/part/m/prt_1.json"]
    Path(extra[0]).parent.mkdir(parents=True)
    Path(extra[0]).write_text("x")
    result = load_batch(loader, [*noise, *extra])
    assert (result.skipped, result.indexed, result.errors) == (len(noise) + 2, 0, 0)
    assert rows(db, "SELECT count(*) FROM file_index") == [(0,)]


# -- files and transactions -----------------------------------------------------------------


def test_file_changed_while_read_is_requeued(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten between stat and read is requeued, indexed with neither version."""
    path = put_part(storage, text="v1")
    load_batch(loader, [path])
    read_fd = files._read_fd

    def rewrite_first(fd: int, size: int) -> bytes:
        put_part(storage, text="v2 is longer")
        return read_fd(fd, size)

    monkeypatch.setattr(files, "_read_fd", rewrite_first)
    result = load_batch(loader, [path])
    assert (result.requeue, result.indexed, result.errors) == ([path], 0, 0)
    assert rows(db, "SELECT raw->>'text' FROM parts") == [("v1",)]
    assert entry(db, path)[5] != os.path.getsize(path)


def test_stale_read_never_overwrites_a_newer_version(
    db: Database, storage: Path, loader: Loader
) -> None:
    """A batch read before a rewrite never overwrites the newer version another batch wrote."""
    path = put_part(storage, text="old")
    stale = loader.prepare([path])
    put_part(storage, text="new version")
    load_batch(loader, [path])
    result = loader.write(stale)
    assert (result.requeue, result.indexed) == ([path], 0)
    assert rows(db, "SELECT raw->>'text' FROM parts") == [("new version",)]
    assert entry(db, path)[4] == os.stat(path).st_mtime_ns


def test_stale_delete_never_removes_a_recreated_file(
    db: Database, storage: Path, loader: Loader
) -> None:
    """A deletion seen before the file came back does not remove the rows written since."""
    path = put_part(storage, text="first")
    load_batch(loader, [path])
    os.unlink(path)
    stale = loader.prepare([path])
    put_part(storage, text="second")
    load_batch(loader, [path])
    result = loader.write(stale)
    assert (result.requeue, result.deleted) == ([path], 0)
    assert rows(db, "SELECT raw->>'text' FROM parts") == [("second",)]


def test_failed_write_leaves_nothing_of_the_batch(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the upserts leaves nothing of the batch and the previous state intact."""
    a, b = put_part(storage, "prt_a", text="a1"), put_part(storage, "prt_b", text="b1")
    load_batch(loader, [a, b])
    before = rows(db, "SELECT * FROM file_index ORDER BY ALL"), rows(db, "SELECT * FROM parts ORDER BY id")  # fmt: skip
    put_part(storage, "prt_a", text="a2 changed")
    c = put_part(storage, "prt_c", text="c1")
    os.unlink(b)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(loader.tracker, "mark_indexed_batch", fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_batch(loader, [a, b, c])
    after = rows(db, "SELECT * FROM file_index ORDER BY ALL"), rows(db, "SELECT * FROM parts ORDER BY id")  # fmt: skip
    assert after == before
    monkeypatch.undo()
    assert load_batch(loader, [a, b, c]).indexed == 2
    assert rows(db, "SELECT id, raw->>'text' FROM parts ORDER BY 1") == [("prt_a", "a2 changed"), ("prt_c", "c1")]  # fmt: skip


def test_ten_concurrent_batches_end_with_the_newest_version(
    db: Database, storage: Path, loader: Loader
) -> None:
    """Ten batches reading ten successive files, written concurrently, leave the newest."""
    paths = [put_part(storage, f"prt_{i}", text="v0") for i in range(20)]
    prepared = []
    for version in range(1, 11):
        for i in range(20):
            put_part(storage, f"prt_{i}", text=f"v{version}" + "!" * version)
        prepared.append(loader.prepare(paths))
    results: list[BatchResult] = []
    threads = [threading.Thread(target=lambda p=p: results.append(loader.write(p))) for p in reversed(prepared)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requeued = sorted({p for r in results for p in r.requeue})
    if requeued:
        load_batch(loader, requeued)
    assert rows(db, "SELECT DISTINCT raw->>'text' FROM parts") == [("v10!!!!!!!!!!",)]
    for path in paths:
        assert entry(db, path)[4:] == (os.stat(path).st_mtime_ns, os.path.getsize(path))


# -- worker pool -------------------------------------------------------------------------------


async def _batches(paths: Sequence[str], size: int) -> AsyncIterator[Batch]:
    for i in range(0, len(paths), size):
        yield Batch(tuple(paths[i : i + size]), "size", 0.0)


async def test_worker_pool_consumes_batches_and_requeues(
    db: Database, storage: Path, loader: Loader, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool writes every batch, requeues files that changed while read, and ends idle."""
    paths = [put_part(storage, f"prt_{i:03d}", text=str(i)) for i in range(50)]
    changing = paths[7]
    read_fd = files._read_fd

    def rewrite_once(fd: int, size: int) -> bytes:
        if os.fstat(fd).st_ino == os.stat(changing).st_ino and not requeued:
            put_part(storage, "prt_007", text="changed meanwhile")
        return read_fd(fd, size)

    monkeypatch.setattr(files, "_read_fd", rewrite_once)
    requeued: list[str] = []
    done: list[BatchResult] = []

    async def requeue(more: list[str]) -> None:
        requeued.extend(more)

    pool = WorkerPool(loader, loader.db, workers=3, on_batch_done=lambda r, _paths: done.append(r))
    await pool.run(_batches(paths, 8), requeue)
    assert requeued == [changing]
    assert len(done) == 7 and sum(r.indexed for r in done) == 49
    stats = pool.get_stats()
    assert (stats["batches"], stats["files_indexed"], stats["files_requeued"], stats["busy"]) == (
        7,
        49,
        1,
        0,
    )
    assert stats["batch_ms"]["max"] >= stats["batch_ms"]["p50"] > 0
    commits = stats["write_ms"]
    assert commits["max"] >= commits["p99"] >= commits["p50"] > 0
    assert commits["over_1s"] == 0
    await pool.run(_batches(requeued, 8), requeue)
    assert rows(db, "SELECT raw->>'text' FROM parts WHERE id = 'prt_007'") == [
        ("changed meanwhile",)
    ]


async def test_worker_pool_says_when_a_requeue_ends(
    storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-queue that hands a file back ends no batch, yet `work_ended` wakes when it ends
    (what `IndexerService.drain` waits on before it looks again)."""
    changing = put_part(storage, "prt_001", text="first")
    read_fd = files._read_fd

    def rewrite_once(fd: int, size: int) -> bytes:
        if not batch_done.is_set():
            put_part(storage, "prt_001", text="changed while read")
        return read_fd(fd, size)

    monkeypatch.setattr(files, "_read_fd", rewrite_once)
    batch_done, requeue_may_end = anyio.Event(), anyio.Event()
    handed_back: list[str] = []

    async def requeue(more: list[str]) -> None:
        await requeue_may_end.wait()
        handed_back.extend(more)

    pool = WorkerPool(loader, loader.db, workers=1, on_batch_done=lambda r, b: batch_done.set())
    send, receive = anyio.create_memory_object_stream[Batch](1)
    with receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, receive, requeue)
            await send.send(Batch((changing,), "size", 0.0))
            await batch_done.wait()
            assert pool.get_stats()["busy"] == 1  # the re-queue, still running
            async with anyio.create_task_group() as waiting:
                waiting.start_soon(pool.work_ended)
                await anyio.wait_all_tasks_blocked()
                requeue_may_end.set()
            assert handed_back == [changing] and pool.get_stats()["busy"] == 0
            send.close()


async def test_worker_pool_reads_one_batch_at_a_time_while_another_is_written(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one reader, batches are read one after another, and the next batch is read while
    the previous one is written (the write of the first batch waits for that read)."""
    paths = [put_part(storage, f"prt_{i:03d}") for i in range(6)]
    prepare, write = loader.prepare, loader.write
    lock, reading, overlap = threading.Lock(), [0], [0]
    first_may_finish, second_read = threading.Event(), threading.Event()
    two_at_once = threading.Event()

    def counting_prepare(batch: Sequence[str]) -> Any:
        with lock:
            reading[0] += 1
            overlap[0] = max(overlap[0], reading[0])
            if reading[0] > 1:
                two_at_once.set()
        try:
            if batch[0] == paths[0]:
                assert first_may_finish.wait(10)
            return prepare(batch)
        finally:
            with lock:
                reading[0] -= 1
            if batch[0] == paths[2]:
                second_read.set()

    def waiting_write(prepared: Any) -> BatchResult:
        if not second_read.is_set():
            assert second_read.wait(10), "the next batch was not read during this write"
        return write(prepared)

    monkeypatch.setattr(loader, "prepare", counting_prepare)
    monkeypatch.setattr(loader, "write", waiting_write)

    async def requeue(more: list[str]) -> None:
        raise AssertionError("nothing to requeue")

    pool = WorkerPool(loader, loader.db, workers=3, readers=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run, _batches(paths, 2), requeue)
        # While the first batch is read, a second worker holds the next batch: it either waits
        # for the reader, or (two readers) was handed to a thread that is about to read it.
        await anyio.wait_all_tasks_blocked()
        if not pool._prepare_limiter.statistics().tasks_waiting:
            await anyio.to_thread.run_sync(partial(two_at_once.wait, 10))
        first_may_finish.set()
    assert overlap[0] == 1
    assert pool.get_stats()["files_indexed"] == 6
    assert rows(db, "SELECT count(*) FROM parts") == [(6,)]


def _resident(path: str) -> bool:
    """Whether a page of the file is in the page cache (mincore(2) through Python's mmap: an
    oracle apart from `pagecache.in_page_cache`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        start = ctypes.c_char.from_buffer(m)
        try:
            addr = ctypes.c_void_p(ctypes.addressof(start))
            if libc.mincore(addr, ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del start  # the mmap cannot close while a ctypes object points into it
    return any(v & 1 for v in vec)


def _evict(*paths: str) -> None:
    """Drop files' pages from the page cache (written to disk first). The kernel now and then
    keeps a page it was asked to drop (about 1 in 15 here), so each file is asked until
    mincore says it is gone."""
    for path in paths:
        for _ in range(100):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            if not _resident(path):
                break
        else:
            pytest.skip(f"the kernel keeps {path} in the page cache")


def _can_evict(storage: Path) -> bool:
    """Whether this file system lets a file leave the page cache (not tmpfs), and this system
    can tell."""
    probe = put(storage, "probe.json", {})
    _evict(probe)
    with files.Tree(str(storage)) as tree:
        return pagecache.in_page_cache(probe, tree) is False


def test_in_page_cache_tells_a_cached_file_from_an_evicted_one(storage: Path) -> None:
    """A file just written is cached; evicted, it is not, and asking does not read it in;
    read, it is cached again."""
    if not _can_evict(storage):
        pytest.skip("this file system cannot evict a file from the page cache")
    path = put_part(storage)
    with files.Tree(str(storage)) as tree:
        assert pagecache.in_page_cache(path, tree) is True
        _evict(path)
        assert pagecache.in_page_cache(path, tree) is False
        assert pagecache.in_page_cache(path, tree) is False
        assert tree.read(path)[0] == (storage / f"part/{MSG}/prt_1.json").read_bytes()
        assert pagecache.in_page_cache(path, tree) is True
        assert pagecache.in_page_cache(str(storage / "nope.json"), tree) is None


async def test_worker_pool_prefetches_only_batches_not_in_the_page_cache(
    db: Database, storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk batch whose files are not in the page cache is read ahead first; a cached one,
    or a small one, is not. All are indexed."""
    if not _can_evict(storage):
        pytest.skip("this file system cannot evict a file from the page cache")
    monkeypatch.setattr(loader_module, "PREFETCH_MIN_FILES", 8)
    cold = [put_part(storage, f"prt_c{i:02d}") for i in range(16)]
    _evict(*cold)
    warm = [put_part(storage, f"prt_w{i:02d}") for i in range(16)]
    small = [put_part(storage, f"prt_s{i}") for i in range(4)]
    _evict(*small)

    async def requeue(more: list[str]) -> None:
        raise AssertionError("nothing to requeue")

    pool = WorkerPool(loader, loader.db, workers=1)
    await pool.run(_batches(cold, 16), requeue)
    assert pool.get_stats()["files_prefetched"] == 16
    await pool.run(_batches(warm, 16), requeue)
    await pool.run(_batches(small, 4), requeue)
    assert pool.get_stats()["files_prefetched"] == 16
    assert rows(db, "SELECT count(*) FROM parts") == [(36,)]


async def test_worker_pool_raises_when_a_write_fails(
    storage: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the database cannot take fails the pool instead of being dropped silently."""

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(loader.tracker, "mark_indexed_batch", fail)

    async def requeue(more: list[str]) -> None:
        raise AssertionError("nothing to requeue")

    with pytest.raises(ExceptionGroup) as caught:
        await WorkerPool(loader, loader.db, workers=2).run(
            _batches([put_part(storage)], 1), requeue
        )
    assert caught.group_contains(RuntimeError, match="database gone")


async def test_a_batch_past_its_byte_budget_reads_the_rest_as_a_follow_up(
    db: Database, storage: Path
) -> None:
    """A batch stops reading at ``max_batch_bytes`` (DuckDB holds a batch until its commit);
    the pool reads the rest as a batch of its own while the first is written."""
    paths = [put_part(storage, f"prt_{i:03d}", text="x" * 10_000) for i in range(30)]
    loader = Loader(db, FileTracker(db), storage, max_batch_bytes=50_000)
    try:
        prepared = loader.prepare(paths)
        assert 0 < len(prepared.versions) < 30
        assert loader.follow_up(prepared) == paths[len(prepared.versions) :]

        async def requeue(more: list[str]) -> None:
            raise AssertionError("nothing to requeue")

        written, all_written = [0], anyio.Event()

        def on_batch_done(result: BatchResult, batch: Batch) -> None:
            written[0] += result.indexed
            if written[0] == len(paths):
                all_written.set()

        pool = WorkerPool(loader, db, workers=2, on_batch_done=on_batch_done)
        send, receive = anyio.create_memory_object_stream[Batch](1)
        with receive:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.run, receive, requeue)
                async with send:  # open until the end: closed input means shutdown, no follow-up
                    await send.send(Batch(tuple(paths), "size", 0.0))
                    with anyio.fail_after(30):
                        await all_written.wait()
        assert pool.get_stats()["follow_ups"] >= 5
        assert rows(db, "SELECT count(*) FROM parts") == [(30,)]
    finally:
        loader.close()
