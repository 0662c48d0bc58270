"""Synthetic ``opencode.db`` files: the schema of opencode 1.18, the same records as the JSON
generator, secrets, and live writes (one commit each, rowids kept, deletes cascading)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from indexer_service.demo.synthetic import (
    OPENCODE_SCHEMA,
    SECRET_MARKERS,
    LiveDbWriter,
    LiveWriter,
    TreeSpec,
    TreeSummary,
    generate_db,
    generate_tree,
)

# Every table and column of opencode 1.18.34's opencode.db, in order (read from sqlite_master).
EXPECTED_COLUMNS = {
    "account": "id email url access_token refresh_token token_expiry time_created time_updated",
    "account_state": "id active_account_id active_org_id",
    "control_account": "email url access_token refresh_token token_expiry active time_created "
    "time_updated",
    "credential": "id integration_id label value connector_id method_id active time_created "
    "time_updated",
    "data_migration": "name time_completed",
    "event": "id aggregate_id seq type data",
    "event_sequence": "aggregate_id seq owner_id",
    "message": "id session_id time_created time_updated data",
    "migration": "id time_completed",
    "part": "id message_id session_id time_created time_updated data",
    "permission": "id project_id action resource time_created time_updated",
    "project": "id worktree vcs name icon_url icon_url_override icon_color time_created "
    "time_updated time_initialized sandboxes commands",
    "project_directory": "project_id directory type strategy time_created",
    "session": "id project_id workspace_id parent_id slug directory path title version share_url "
    "summary_additions summary_deletions summary_files summary_diffs metadata cost tokens_input "
    "tokens_output tokens_reasoning tokens_cache_read tokens_cache_write revert permission agent "
    "model time_created time_updated time_compacting time_archived",
    "session_context_epoch": "session_id baseline snapshot baseline_seq",
    "session_input": "id session_id prompt delivery admitted_seq promoted_seq time_created",
    "session_message": "id session_id type seq time_created time_updated data",
    "session_share": "session_id id secret url time_created time_updated",
    "todo": "session_id content status priority position time_created time_updated",
    "workspace": "id type name branch directory extra project_id time_used",
}
# NOT NULL columns (without a default) of the tables a reader uses.
NOT_NULL = {
    "session": "project_id slug directory title version time_created time_updated",
    "message": "session_id time_created time_updated data",
    "part": "message_id session_id time_created time_updated data",
    "todo": "session_id content status priority position time_created time_updated",
    "project": "worktree time_created time_updated sandboxes",
}
# (table, column, parent table, parent column, on delete)
FOREIGN_KEYS = {
    ("account_state", "active_account_id", "account", "id", "SET NULL"),
    ("event", "aggregate_id", "event_sequence", "aggregate_id", "CASCADE"),
    ("message", "session_id", "session", "id", "CASCADE"),
    ("part", "message_id", "message", "id", "CASCADE"),
    ("permission", "project_id", "project", "id", "CASCADE"),
    ("project_directory", "project_id", "project", "id", "CASCADE"),
    ("session", "project_id", "project", "id", "CASCADE"),
    ("session_context_epoch", "session_id", "session", "id", "CASCADE"),
    ("session_input", "session_id", "session", "id", "CASCADE"),
    ("session_message", "session_id", "session", "id", "CASCADE"),
    ("session_share", "session_id", "session", "id", "CASCADE"),
    ("todo", "session_id", "session", "id", "CASCADE"),
    ("workspace", "project_id", "project", "id", "CASCADE"),
}
# name -> (table, unique, columns)
INDEXES = {
    "event_aggregate_seq_idx": ("event", 1, "aggregate_id seq"),
    "event_aggregate_type_seq_idx": ("event", 0, "aggregate_id type seq"),
    "message_session_time_created_id_idx": ("message", 0, "session_id time_created id"),
    "part_message_id_id_idx": ("part", 0, "message_id id"),
    "part_session_idx": ("part", 0, "session_id"),
    "permission_project_action_resource_idx": ("permission", 1, "project_id action resource"),
    "session_input_session_admitted_seq_idx": ("session_input", 1, "session_id admitted_seq"),
    "session_input_session_pending_delivery_seq_idx": (
        "session_input",
        0,
        "session_id promoted_seq delivery admitted_seq",
    ),
    "session_input_session_promoted_seq_idx": ("session_input", 1, "session_id promoted_seq"),
    "session_message_session_seq_idx": ("session_message", 1, "session_id seq"),
    "session_message_session_time_created_id_idx": (
        "session_message",
        0,
        "session_id time_created id",
    ),
    "session_message_session_type_seq_idx": ("session_message", 0, "session_id type seq"),
    "session_message_time_created_idx": ("session_message", 0, "time_created"),
    "session_parent_idx": ("session", 0, "parent_id"),
    "session_project_idx": ("session", 0, "project_id"),
    "session_workspace_idx": ("session", 0, "workspace_id"),
    "todo_session_idx": ("todo", 0, "session_id"),
}
PRIMARY_KEYS = {"control_account": "email url", "project_directory": "project_id directory",
                "todo": "session_id position", "event_sequence": "aggregate_id",
                "data_migration": "name", "session_share": "session_id",
                "session_context_epoch": "session_id"}  # fmt: skip
SPEC = TreeSpec(sessions=6, seed=7, messages_per_session=24, subagent_ratio=0.5, share_ratio=0.5)


def rows(db: Path, sql: str, *args: Any) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def dump(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def load(root: Path, pattern: str) -> dict[str, Any]:
    return {p.stem: orjson.loads(p.read_bytes()) for p in root.glob(pattern)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[TreeSummary, TreeSummary]:
    """The same spec as a JSON tree and as a database."""
    base = tmp_path_factory.mktemp("pair")
    return generate_tree(base / "storage", SPEC), generate_db(base / "opencode.db", SPEC)


@pytest.fixture
def schema_db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(OPENCODE_SCHEMA)
    yield conn
    conn.close()


def test_schema_has_every_table_and_column(schema_db: sqlite3.Connection) -> None:
    """Tables, columns, NOT NULLs and primary keys as opencode 1.18 creates them."""
    tables = {r[0] for r in schema_db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == set(EXPECTED_COLUMNS)
    for table, columns in EXPECTED_COLUMNS.items():
        info = schema_db.execute(f"PRAGMA table_info({table})").fetchall()
        assert [r[1] for r in info] == columns.split(), table
        if table in NOT_NULL:
            required = {r[1] for r in info if r[3]}
            assert required >= set(NOT_NULL[table].split()), table
        pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
        assert pk == PRIMARY_KEYS.get(table, "id").split(), table
    session = {r[1]: r for r in schema_db.execute("PRAGMA table_info(session)")}
    assert (session["cost"][2].lower(), *session["cost"][3:5]) == ("real", 1, "0")
    assert session["tokens_input"][4] == "0" and session["slug"][4] is None


def test_schema_foreign_keys_and_indexes(schema_db: sqlite3.Connection) -> None:
    """Cascading foreign keys and the same named indexes (none on time_updated)."""
    fks = {
        (t, r[3], r[2], r[4], r[6])
        for t in EXPECTED_COLUMNS
        for r in schema_db.execute(f"PRAGMA foreign_key_list({t})")
    }
    assert fks == FOREIGN_KEYS
    sql = "SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
    found = {}
    for name, table in schema_db.execute(sql):
        unique = next(
            r[2] for r in schema_db.execute(f"PRAGMA index_list({table})") if r[1] == name
        )
        cols = " ".join(r[2] for r in schema_db.execute(f"PRAGMA index_info({name})"))
        found[name] = (table, unique, cols)
    assert found == INDEXES


def test_same_records_as_the_json_tree(pair: tuple[TreeSummary, TreeSummary]) -> None:
    """Same spec: same projects, sessions, messages and parts (IDs and content) as the tree."""
    tree, db = pair
    root, path = tree.root, db.root
    assert db.session_ids == tree.session_ids and db.files == tree.files
    projects = load(root, "project/*.json")
    assert {r[0] for r in rows(path, "SELECT id FROM project")} == set(projects)
    sessions = load(root, "session/*/*.json")
    got = {r[0]: r[1:] for r in rows(path, "SELECT id, project_id, parent_id, title FROM session")}
    assert got == {k: (v["projectID"], v.get("parentID"), v["title"]) for k, v in sessions.items()}
    messages = load(root, "message/*/*.json")
    got = {
        r[0]: r[1:] for r in rows(path, "SELECT id, session_id, time_created, data FROM message")
    }
    assert set(got) == set(messages)
    for mid, (sid, created, data) in got.items():
        msg = messages[mid]
        assert (sid, created) == (msg.pop("sessionID"), msg["time"]["created"])
        assert orjson.loads(data) == {k: v for k, v in msg.items() if k != "id"}
    parts = {p.stem: (p.parent.name, orjson.loads(p.read_bytes())) for p in root.glob("part/*/*")}
    got = {r[0]: r[1:] for r in rows(path, "SELECT id, message_id, session_id, data FROM part")}
    assert set(got) == set(parts)
    for pid, (mid, sid, data) in got.items():
        folder, part = parts[pid]
        assert (mid, sid) == (folder, part["sessionID"]) == (part["messageID"], part["sessionID"])
        skip = ("id", "sessionID", "messageID")
        assert orjson.loads(data) == {k: v for k, v in part.items() if k not in skip}


def test_todos_and_shares(pair: tuple[TreeSummary, TreeSummary]) -> None:
    """Todo lists become rows by position; shares keep their secret; session_diff is not stored."""
    tree, db = pair
    todos = load(tree.root, "todo/*.json")
    assert todos
    got: dict[str, list[Any]] = {}
    sql = "SELECT session_id, position, content, status, priority FROM todo ORDER BY 1, 2"
    for sid, pos, *item in rows(db.root, sql):
        assert pos == len(got.setdefault(sid, []))
        got[sid].append(item)
    assert got == {
        k: [[x["content"], x["status"], x["priority"]] for x in v] for k, v in todos.items()
    }
    shares = load(tree.root, "session_share/*.json")
    assert shares
    sql = "SELECT s.session_id, s.id, s.secret, s.url, x.share_url FROM session_share s JOIN session x ON x.id = s.session_id"
    got_shares = {r[0]: r[1:] for r in rows(db.root, sql)}
    assert got_shares == {k: (v["id"], v["secret"], v["url"], v["url"]) for k, v in shares.items()}
    assert "session_diff" not in db.counts and db.counts["other"] == tree.counts["session_diff"] + 1


def test_fresh_db_is_consistent_and_in_wal_mode(pair: tuple[TreeSummary, TreeSummary]) -> None:
    path = pair[1].root
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "PRAGMA foreign_key_check") == []
    assert rows(path, "SELECT count(*) FROM session WHERE slug IS NULL") == [(0,)]
    with pytest.raises(FileExistsError):
        generate_db(path, SPEC)


def test_same_spec_same_database(tmp_path: Path) -> None:
    spec = TreeSpec(sessions=3, seed=11, messages_per_session=15)
    generate_db(tmp_path / "a.db", spec)
    generate_db(tmp_path / "b.db", spec)
    generate_db(tmp_path / "c.db", TreeSpec(sessions=3, seed=12, messages_per_session=15))
    assert dump(tmp_path / "a.db") == dump(tmp_path / "b.db")
    assert dump(tmp_path / "a.db") != dump(tmp_path / "c.db")


def test_secret_markers_in_the_secret_tables(tmp_path: Path) -> None:
    path = tmp_path / "opencode.db"
    generate_db(path, TreeSpec(sessions=1, seed=1, messages_per_session=5))
    found = rows(path, "SELECT access_token, refresh_token FROM account")
    found += rows(path, "SELECT access_token, refresh_token FROM control_account")
    found += rows(path, "SELECT value, NULL FROM credential")
    assert {x for r in found for x in r if x} == set(SECRET_MARKERS)
    text = "\n".join(dump(path))
    assert all(text.count(m) == 1 for m in SECRET_MARKERS)  # nowhere else
    generate_db(tmp_path / "none.db", TreeSpec(sessions=1, seed=1), secrets=False)
    for table in ("account", "control_account", "credential"):
        assert rows(tmp_path / "none.db", f"SELECT count(*) FROM {table}") == [(0,)]


def test_live_writes_the_records_of_live_writer(tmp_path: Path) -> None:
    """Same seed: the same sessions, messages and parts as ``LiveWriter``'s files."""
    files, path = LiveWriter(tmp_path / "storage", seed=4), tmp_path / "opencode.db"
    with LiveDbWriter(path, seed=4) as db:
        for w in (files, db):
            sid = w.new_session()
            for _ in range(3):
                w.write_step(sid)
        assert files.last_text_part is not None and db.last_text_part is not None
        assert db.last_text_part == files.last_text_part.stem
        files.stream_text(files.last_text_part, deltas=5)
        db.stream_text(db.last_text_part, deltas=5)
    parts = load(tmp_path / "storage", "part/*/*.json")
    got = {r[0]: orjson.loads(r[1]) for r in rows(path, "SELECT id, data FROM part")}
    skip = ("id", "sessionID", "messageID")
    assert got == {k: {f: v for f, v in p.items() if f not in skip} for k, p in parts.items()}
    assert {r[0] for r in rows(path, "SELECT id FROM message")} == set(
        load(tmp_path / "storage", "message/*/*.json")
    )


def test_live_step_and_stream(tmp_path: Path) -> None:
    """A step adds rows; streaming rewrites the part in place with growing time_updated."""
    path = tmp_path / "opencode.db"
    with LiveDbWriter(path, seed=2) as w:
        sid = w.new_session()
        rowid = rows(path, "SELECT rowid FROM session WHERE id = ?", sid)
        wrote = w.write_step(sid)
        assert rows(path, "SELECT rowid FROM session WHERE id = ?", sid) == rowid  # upsert
        kinds = [rel.partition("/")[0] for rel in wrote]
        assert kinds.count("message") >= 1 and kinds.count("part") >= 2 and kinds[-1] == "session"
        n_parts = rows(path, "SELECT count(*) FROM part WHERE session_id = ?", sid)[0][0]
        assert n_parts == kinds.count("part")
        pid = w.last_text_part
        assert pid is not None and f"/{pid}.json" in "".join(wrote)
        sql = "SELECT rowid, time_updated, data, message_id FROM part WHERE id = ?"
        before = rows(path, sql, pid)[0]
        seen, rel = [before[1]], f"part/{before[3]}/{pid}.json"
        for _ in range(3):
            assert w.stream_text(pid, deltas=2) == [rel, rel]
            row = rows(path, sql, pid)[0]
            assert row[0] == before[0] and row[1] > seen[-1]  # same rowid, newer time_updated
            seen.append(row[1])
        old, new = orjson.loads(before[2])["text"], orjson.loads(row[2])["text"]
        assert new.startswith(old) and len(new) > len(old)
        with pytest.raises(ValueError):
            w.stream_text(rows(path, "SELECT id FROM part WHERE data LIKE '%step-start%'")[0][0])


def test_live_every_write_is_its_own_commit(tmp_path: Path) -> None:
    """Another connection sees each write as soon as ``on_write`` runs: one commit per record."""
    path = tmp_path / "opencode.db"
    LiveDbWriter(path).close()  # the schema exists before the observer opens the file
    observer = sqlite3.connect(path)
    versions = [observer.execute("PRAGMA data_version").fetchone()[0]]
    seen: list[str] = []

    def on_write(rel: str) -> None:
        kind, _, key = rel.partition("/")
        version = observer.execute("PRAGMA data_version").fetchone()[0]
        assert version != versions[-1], rel  # a commit happened since the last write
        versions.append(version)
        if kind in ("message", "part"):
            rid = key.removesuffix(".json").rpartition("/")[2]
            assert observer.execute(f"SELECT 1 FROM {kind} WHERE id = ?", (rid,)).fetchone()
        seen.append(rel)

    with LiveDbWriter(path, seed=5, on_write=on_write) as w:
        sid = w.new_session()
        wrote = w.write_step(sid)
        assert w.last_text_part is not None
        streamed = w.stream_text(w.last_text_part, deltas=4)
    observer.close()
    assert len(streamed) == 4 and seen[-4:] == streamed and seen[2:-4] == wrote
    assert len(versions) == len(seen) + 1 and len(seen) == 2 + len(wrote) + 4


def test_live_delete_cascades_to_children_and_rows(tmp_path: Path) -> None:
    """Deleting a session removes its child sessions and, by cascade, all their messages, parts,
    todos and shares; nothing else."""
    path = tmp_path / "opencode.db"
    generate_db(path, SPEC)
    sql = "SELECT parent_id FROM session WHERE parent_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC"
    parents = [r[0] for r in rows(path, sql)]
    sid = next(p for p in parents if rows(path, "SELECT 1 FROM todo WHERE session_id = ?", p))
    family = [sid] + [r[0] for r in rows(path, "SELECT id FROM session WHERE parent_id = ?", sid)]
    marks = ",".join("?" * len(family))

    def counts(where: str) -> list[int]:
        """Rows of session, message, part, todo whose session is (not) in the family."""
        sqls = [
            f"SELECT count(*) FROM {t} WHERE session_id {where}"
            for t in ("message", "part", "todo")
        ]
        sqls.insert(0, f"SELECT count(*) FROM session WHERE id {where}")
        return [rows(path, sql, *family)[0][0] for sql in sqls]

    inside, outside = counts(f"IN ({marks})"), counts(f"NOT IN ({marks})")
    assert len(family) > 1 and all(inside)
    with LiveDbWriter(path, seed=9) as w:
        removed = w.delete_session(sid)
    assert counts(f"IN ({marks})") == [0, 0, 0, 0]
    assert counts(f"NOT IN ({marks})") == outside
    kinds = [r.partition("/")[0] for r in removed]
    assert [kinds.count(k) for k in ("session", "message", "part")] == inside[:3]
    assert removed[-1].endswith(f"/{sid}.json") and removed[-1].startswith("session/")
    assert rows(path, "PRAGMA foreign_key_check") == []
