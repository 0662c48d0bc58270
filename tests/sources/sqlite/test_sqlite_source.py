"""The SQLite source end to end: a generated opencode.db (opencode's schema and write pattern),
the real service, a real DuckDB file."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import duckdb
import orjson
import pytest
from conftest import LogEvents, eventually

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import (
    SECRET_MARKERS,
    LiveDbWriter,
    TreeSpec,
    generate_db,
    generate_tree,
)
from indexer_service.sources.sqlite import reconciler as sqlite_reconciler

SPEC = TreeSpec(sessions=4, seed=11, projects=2)
TYPED = {
    "projects": ("id", "worktree", "vcs", "created_at", "updated_at"),
    "sessions": ("id", "project_id", "parent_id", "title", "directory", "created_at", "share_url"),
    "messages": ("id", "session_id", "role", "model_id", "cost", "tokens_input", "tokens_output"),
    "parts": ("id", "message_id", "session_id", "type", "tool", "tool_status", "start_at"),
    "todos": ("session_id", "position", "content", "status", "priority"),
}


def _settings(tmp_path: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"db_path": tmp_path / "index.duckdb", "http_enabled": False}
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


def _rows(db: Path, table: str, columns: tuple[str, ...]) -> set[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return set(con.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall())


def _ids(opencode: Path, table: str, key: str = "id") -> set[str]:
    with sqlite3.connect(opencode) as con:
        return {r[0] for r in con.execute(f"SELECT {key} FROM {table}")}


def _index_ids(svc: IndexerService, table: str, key: str = "id") -> set[str]:
    return {r[0] for r in svc.db.cursor().execute(f"SELECT DISTINCT {key} FROM {table}").fetchall()}


def _assert_index_equals_database(svc: IndexerService, opencode: Path) -> None:
    for table, ours, key in (
        ("project", "projects", "id"),
        ("session", "sessions", "id"),
        ("message", "messages", "id"),
        ("part", "parts", "id"),
        ("todo", "todos", "session_id"),
    ):
        assert _index_ids(svc, ours, key) == _ids(opencode, table, key), table


async def test_backfill_gives_the_rows_the_legacy_tree_gives(tmp_path: Path) -> None:
    """The same records from both stores land in the same typed columns."""
    opencode, tree = tmp_path / "opencode.db", tmp_path / "storage"
    generate_db(opencode, SPEC)
    generate_tree(tree, SPEC)
    from_db, from_tree = tmp_path / "db" / "index.duckdb", tmp_path / "tree" / "index.duckdb"
    async with IndexerService(_settings(tmp_path, opencode_db=opencode, db_path=from_db)) as svc:
        await svc.wait_until_synced()
        _assert_index_equals_database(svc, opencode)
        assert svc.stats()["databases"][str(opencode)]["unavailable"] is None
    async with IndexerService(_settings(tmp_path, storage_path=tree, db_path=from_tree)) as svc:
        await svc.wait_until_synced()
    for table, columns in TYPED.items():
        assert _rows(from_db, table, columns) == _rows(from_tree, table, columns), table
    with duckdb.connect(str(from_db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM parts WHERE file_path IS NOT NULL").fetchone() == (
            0,
        )
        status = dict(con.execute("SELECT status, count(*) FROM row_index GROUP BY ALL").fetchall())
    assert set(status) == {"indexed"}


async def test_a_backfill_in_many_polls_reads_every_chunk(tmp_path: Path) -> None:
    """With polls of 100 rows a table, one wait_until_synced still indexes every record
    (each full poll asks for the next, although nothing was committed in between)."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, SPEC)
    async with IndexerService(_settings(tmp_path, opencode_db=opencode, db_poll_rows=100)) as svc:
        await svc.wait_until_synced()
        _assert_index_equals_database(svc, opencode)
        assert (
            svc.stats()["databases"][str(opencode)]["polls"] >= len(_ids(opencode, "part")) // 100
        )


async def test_a_periodic_pass_lists_the_database_only_after_a_commit(tmp_path: Path) -> None:
    """Idle costs nothing: with no commit since the last listing (the files unchanged and
    settled) a periodic pass lists nothing; after a delete it lists and finds it."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, SPEC)
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        source = svc._databases[0]
        old = time.time() - 60
        for f in opencode.parent.glob("opencode.db*"):
            os.utime(f, (old, old))
        await source.scan(full=True)
        listed = source.get_stats()["listings"]
        await source.scan()
        assert source.get_stats()["listings"] == listed
        with LiveDbWriter(opencode, seed=2) as writer:
            writer.delete_session(sorted(_ids(opencode, "session"))[0])
        report = await source.scan()
        assert source.get_stats()["listings"] == listed + 1 and report.counts["deleted"] > 0


async def test_a_listing_in_short_read_transactions_finds_exactly_the_deletions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages and parts are listed 50 rowids per read transaction: a pass after a session
    is deleted finds that session's rows and no others."""
    monkeypatch.setattr(sqlite_reconciler, "LISTING_ROWS", 50)
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, SPEC)
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        with sqlite3.connect(opencode) as con:
            victim = con.execute("SELECT id FROM session ORDER BY rowid LIMIT 1").fetchone()[0]
            parts = con.execute(
                "SELECT count(*) FROM part WHERE session_id = ?", [victim]
            ).fetchone()
        with LiveDbWriter(opencode, seed=2) as writer:
            writer.delete_session(victim)
        report = await svc._databases[0].scan(full=True)
        assert report.counts["deleted"] >= parts[0] > 0
        await svc.drain()
        _assert_index_equals_database(svc, opencode)


async def test_live_steps_streams_and_deletes_converge(tmp_path: Path) -> None:
    """Rows written, rewritten and deleted while the service runs end up exactly in the index."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, SPEC)
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        writer = LiveDbWriter(opencode, seed=3)
        session = writer.new_session()
        for _ in range(3):
            writer.write_step(session)
            assert writer.last_text_part is not None
            writer.stream_text(writer.last_text_part, deltas=5)
        old = sorted(_ids(opencode, "session") - {session})[0]
        writer.delete_session(old)
        await svc.wait_until_synced()
        _assert_index_equals_database(svc, opencode)
        text = writer.last_text_part
        with sqlite3.connect(opencode) as con:
            data = orjson.loads(
                con.execute("SELECT data FROM part WHERE id = ?", [text]).fetchone()[0]
            )
        raw = svc.db.cursor().execute("SELECT raw FROM parts WHERE id = ?", [text]).fetchone()
        assert raw is not None and orjson.loads(raw[0])["text"] == data["text"]


async def test_no_secret_of_opencode_reaches_any_table(tmp_path: Path) -> None:
    """Accounts, credentials and share secrets stay out: no value of theirs is in the index."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=4, seed=5, share_ratio=1.0), secrets=True)
    with sqlite3.connect(opencode) as con:
        shares = [r[0] for r in con.execute("SELECT secret FROM session_share")]
    secrets = [*SECRET_MARKERS, *shares]
    assert shares and SECRET_MARKERS
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        cur = svc.db.cursor()
        tables = [r[0] for r in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        for table in tables:
            cols = [
                r[0]
                for r in cur.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]
                ).fetchall()
            ]
            for col in cols:
                for secret in secrets:
                    hits = cur.execute(
                        f"SELECT count(*) FROM {table} WHERE contains(CAST({col} AS VARCHAR), ?)",
                        [secret],
                    ).fetchone()
                    assert hits == (0,), f"{secret} in {table}.{col}"


async def test_bad_rows_are_errors_and_the_rest_is_indexed(tmp_path: Path) -> None:
    """A part whose data is not JSON, not an object or not UTF-8 is an error row; every other
    row of its poll is indexed; fixing the row indexes it."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, SPEC)
    with sqlite3.connect(opencode) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM part ORDER BY rowid LIMIT 3")]
        for ident, data in zip(
            ids, (b'{"type": "text", "te', b"[1, 2]", b'{"text": "\xff\xfe"}'), strict=True
        ):
            con.execute("UPDATE part SET data = CAST(? AS TEXT) WHERE id = ?", [data, ident])
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        cur = svc.db.cursor()
        errors = dict(
            cur.execute("SELECT id, error_message FROM row_index WHERE status = 'error'").fetchall()
        )
        assert set(errors) == set(ids)
        assert "truncated JSON" in errors[ids[0]]
        assert "expected an object" in errors[ids[1]]
        assert "UTF-8" in errors[ids[2]]
        assert _index_ids(svc, "parts") == _ids(opencode, "part") - set(ids)
        assert (await svc.file_counts())["part"]["error"] == 3
        with sqlite3.connect(opencode) as con:
            con.execute(
                "UPDATE part SET data = ?, time_updated = time_updated + 1 WHERE id = ?",
                ['{"type": "text", "text": "fixed"}', ids[0]],
            )
        await svc.wait_until_synced()
        assert ids[0] in _index_ids(svc, "parts")


async def test_a_database_that_is_not_one_leaves_the_legacy_tree_working(tmp_path: Path) -> None:
    """A file that is not an SQLite database gives a health reason; the tree is indexed."""
    opencode, tree = tmp_path / "opencode.db", tmp_path / "storage"
    opencode.write_text("this is not a database\n" * 100)
    summary = generate_tree(tree, TreeSpec(sessions=2, seed=1))
    settings = _settings(tmp_path, opencode_db=opencode, storage_path=tree)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        ok, reason = svc.health()
        assert not ok and str(opencode) in reason
        counts = await svc.file_counts()
        assert counts["part"]["indexed"] == summary.counts["part"]


@pytest.mark.parametrize("drop", ["ALTER TABLE part DROP COLUMN time_updated", "DROP TABLE todo"])
async def test_a_changed_schema_is_named_in_the_health_reason(tmp_path: Path, drop: str) -> None:
    """A table or column opencode no longer has is named; nothing is indexed from the file."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=1, seed=2))
    with sqlite3.connect(opencode) as con:
        con.execute(drop)
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        ok, reason = svc.health()
        assert not ok and "schema" in reason and ("time_updated" in reason or "todo" in reason)


async def test_a_database_created_after_the_start_is_picked_up(
    tmp_path: Path, log_events: LogEvents
) -> None:
    """No database yet: the service waits, and indexes it once opencode creates it."""
    opencode = tmp_path / "data" / "opencode.db"
    async with IndexerService(_settings(tmp_path, opencode_db=opencode)) as svc:
        await svc.wait_until_synced()
        assert svc.health() == (True, "running")
        opencode.parent.mkdir()
        writer = LiveDbWriter(opencode, seed=1)
        session = writer.new_session()
        writer.write_step(session)
        parts = _ids(opencode, "part")
        # the watcher's signal, not a scan
        await eventually(svc, lambda: _index_ids(svc, "parts") == parts, log_events)


async def test_both_stores_hold_the_same_ids_and_the_database_wins(tmp_path: Path) -> None:
    """A user who passed through opencode 1.2 has every legacy record in both stores: each id
    is indexed once, from the database."""
    opencode, tree = tmp_path / "opencode.db", tmp_path / "storage"
    generate_db(opencode, SPEC)
    generate_tree(tree, SPEC)
    settings = _settings(tmp_path, opencode_db=opencode, storage_path=tree)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        cur = svc.db.cursor()
        for table in ("messages", "parts", "sessions", "projects"):
            total, from_files = cur.execute(
                f"SELECT count(*), count(file_path) FROM {table}"
            ).fetchone() or (0, 0)
            assert total > 0 and from_files == 0, table
        _assert_index_equals_database(svc, opencode)


async def test_a_database_that_stays_locked_is_reported_and_the_tree_is_indexed(
    tmp_path: Path, log_events: LogEvents
) -> None:
    """Another program holds the database exclusively: one log line and a health reason name
    the lock, the legacy tree is indexed meanwhile, and the next commit after the lock is
    released is indexed."""
    opencode, tree = tmp_path / "opencode.db", tmp_path / "storage"
    generate_db(opencode, TreeSpec(sessions=1, seed=3))
    summary = generate_tree(tree, TreeSpec(sessions=2, seed=4))
    holder = sqlite3.connect(opencode)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("UPDATE session SET title = title")  # the exclusive lock, kept after commit
    holder.commit()
    settings = _settings(tmp_path, opencode_db=opencode, storage_path=tree)
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        ok, reason = svc.health()
        assert not ok and str(opencode) in reason and "locked" in reason
        counts = await svc.file_counts()
        assert counts["part"]["indexed"] == summary.counts["part"]
        assert _index_ids(svc, "sessions") == set(summary.session_ids)
        holder.close()
        writer = LiveDbWriter(opencode, seed=9)
        writer.write_step(writer.new_session())
        parts = _ids(opencode, "part")
        await eventually(svc, lambda: parts <= _index_ids(svc, "parts"), log_events)
        assert svc.health() == (True, "running")
    logs = log_events.entries
    unreadable = [e for e in logs if e["event"] == "opencode_db_unreadable"]
    assert len(unreadable) == 1 and "locked" in unreadable[0]["error"]
    assert any(e["event"] == "opencode_db_readable" for e in logs)
