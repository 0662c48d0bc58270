"""OpenCode's database as a hostile tester leaves it (issue #24): ids that are not UTF-8, a
``data`` of 100 MB, the file replaced by another one while the service runs, a symlink."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson
from conftest import LogEvents, eventually

from indexer_service import IndexerService, Settings
from indexer_service.demo.synthetic import LiveDbWriter, TreeSpec, generate_db
from indexer_service.settings import MAX_FILE_BYTES

MiB = 2**20


def _settings(tmp_path: Path, opencode: Path) -> Settings:
    # no periodic pass: what is found, the watcher's signals and the service's own checks find
    return Settings(
        opencode_db=opencode, db_path=tmp_path / "index.duckdb", reconcile_interval=3600.0
    )


def _ids(opencode: Path, table: str, key: str = "id") -> set[str]:
    with sqlite3.connect(opencode) as con:
        con.text_factory = bytes
        return {
            r[0].decode("utf-8", "backslashreplace")
            for r in con.execute(f"SELECT {key} FROM {table}")
        }


def _index_ids(svc: IndexerService, table: str, key: str = "id") -> set[str]:
    return {r[0] for r in svc.db.cursor().execute(f"SELECT DISTINCT {key} FROM {table}").fetchall()}


def _errors(svc: IndexerService, kind: str) -> dict[str, str]:
    sql = "SELECT id, error_message FROM row_index WHERE kind = ? AND status = 'error'"
    return dict(svc.db.cursor().execute(sql, [kind]).fetchall())


def _matches(svc: IndexerService, opencode: Path) -> bool:
    return all(
        _index_ids(svc, ours, key) == _ids(opencode, table, key)
        for table, ours, key in (
            ("session", "sessions", "id"),
            ("message", "messages", "id"),
            ("part", "parts", "id"),
            ("todo", "todos", "session_id"),
        )
    )


async def test_ids_that_are_not_utf8_are_error_rows_of_their_own(tmp_path: Path) -> None:
    """Two parts whose ids differ only in bytes that are not UTF-8, and a message whose
    session id is not: each is an error row keyed by its id with the bytes escaped (not
    dropped in silence, not merged into one key by a replacement character), every other row
    is indexed, and the errors follow their rows through changes and deletion."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=2, seed=1))
    with sqlite3.connect(opencode) as con:
        parts = [r[0] for r in con.execute("SELECT id FROM part ORDER BY rowid DESC LIMIT 2")]
        for ident, raw in zip(parts, (b"prt_\xff\xfe", b"prt_\xff\xfd"), strict=True):
            con.execute("UPDATE part SET id = CAST(? AS TEXT) WHERE id = ?", [raw, ident])
        (message,) = con.execute("SELECT id FROM message ORDER BY rowid LIMIT 1").fetchone()
        con.execute("UPDATE message SET session_id = CAST(? AS TEXT) WHERE id = ?",
                    [b"ses_\xc3", message])  # fmt: skip
    async with IndexerService(_settings(tmp_path, opencode)) as svc:
        await svc.wait_until_synced()
        errors = _errors(svc, "part")
        assert set(errors) == {"prt_\\xff\\xfe", "prt_\\xff\\xfd"}
        assert all(m == "id not valid UTF-8 (shown with \\x escapes)" for m in errors.values())
        assert _errors(svc, "message") == {
            message: "parent id and session id not valid UTF-8 (shown with \\x escapes)"
        }
        assert _index_ids(svc, "parts") == _ids(opencode, "part") - set(errors)
        assert _index_ids(svc, "messages") == _ids(opencode, "message") - {message}
        with sqlite3.connect(opencode) as con:  # one changes, the other goes
            con.execute("UPDATE part SET time_updated = time_updated + 1 "
                        "WHERE id = CAST(? AS TEXT)", [b"prt_\xff\xfe"])  # fmt: skip
            con.execute("DELETE FROM part WHERE id = CAST(? AS TEXT)", [b"prt_\xff\xfd"])
        await svc.wait_until_synced()
        assert set(_errors(svc, "part")) == {"prt_\\xff\\xfe"}
        assert (await svc.file_counts())["part"]["error"] == 1


async def test_a_data_of_100_mb_is_an_error_row_not_read(tmp_path: Path) -> None:
    """A part whose data is 100 MB (over max_file_bytes, as a file of that size would be) is an
    error row naming its size; it is never fetched into the process, and the rest is indexed."""
    opencode = tmp_path / "opencode.db"
    generate_db(opencode, TreeSpec(sessions=1, seed=3))
    data = orjson.dumps({"type": "text", "text": "x" * (100 * MiB)})
    with sqlite3.connect(opencode) as con:
        (part,) = con.execute("SELECT id FROM part ORDER BY rowid LIMIT 1").fetchone()
        con.execute("UPDATE part SET data = ? WHERE id = ?", [data.decode(), part])
    del data
    async with IndexerService(_settings(tmp_path, opencode)) as svc:
        await svc.wait_until_synced()
        assert _errors(svc, "part") == {
            part: f"data too large: {100 * MiB + 25} bytes > max_file_bytes {MAX_FILE_BYTES} "
            "(not read)"
        }
        assert _index_ids(svc, "parts") == _ids(opencode, "part") - {part}
        longest = svc.db.cursor().execute("SELECT max(length(raw)) FROM parts").fetchone()
        assert longest is not None and longest[0] < MiB


async def test_a_database_replaced_by_another_file_is_read_anew(
    tmp_path: Path, log_events: LogEvents
) -> None:
    """Another opencode.db renamed over the one being followed: the service notices the new
    file (its inode), says so, and the index comes to hold the new file's records, the old
    ones gone, without waiting for a periodic pass."""
    opencode = tmp_path / "data" / "opencode.db"
    opencode.parent.mkdir()
    generate_db(opencode, TreeSpec(sessions=2, seed=1))
    other = tmp_path / "other.db"
    generate_db(other, TreeSpec(sessions=3, seed=2))
    async with IndexerService(_settings(tmp_path, opencode)) as svc:
        await svc.wait_until_synced()
        assert _matches(svc, opencode)
        os.replace(other, opencode)
        await eventually(svc, lambda: _matches(svc, opencode), log_events)
    replaced = [e for e in log_events.entries if e["event"] == "opencode_db_replaced"]
    assert len(replaced) == 1 and replaced[0]["db"] == str(opencode)


async def test_a_symlinked_database_is_followed(tmp_path: Path, log_events: LogEvents) -> None:
    """opencode.db is a symlink to a file elsewhere (where its WAL is written): it is indexed,
    and writes to it are followed as they come."""
    real = tmp_path / "elsewhere" / "opencode.db"
    real.parent.mkdir()
    generate_db(real, TreeSpec(sessions=1, seed=5))
    link = tmp_path / "data" / "opencode.db"
    link.parent.mkdir()
    link.symlink_to(real)
    async with IndexerService(_settings(tmp_path, link)) as svc:
        await svc.wait_until_synced()
        assert _matches(svc, real)
        with LiveDbWriter(link, seed=6) as writer:  # opencode opens the path it knows
            session = writer.new_session()
            for _ in range(3):  # each step is seen: not only the first after the start
                writer.write_step(session)
                await eventually(svc, lambda: _matches(svc, real), log_events)
