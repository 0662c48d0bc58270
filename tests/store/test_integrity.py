"""A damaged index (cut short, a checksum that does not match, a catalog DuckDB cannot read) is
refused by every command with one line naming the file and the way out, and `rebuild` sets it
aside and indexes the stores again (issue #24)."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import anyio
import duckdb
import pytest
from conftest import LogEvents, assert_index_matches_tree, held_by_another_process

from indexer_service import DatabaseDamagedError, IndexerService, Settings
from indexer_service.cli.main import main
from indexer_service.demo.synthetic import LiveWriter, TreeSpec, generate_tree
from indexer_service.store.database import Database
from indexer_service.store.integrity import BLOCK_START, checksum, find_damage

BLOCK = 262144  # DuckDB's block_alloc_size


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(storage tree, an index of it written by `index`), shared by the module's tests."""
    base = tmp_path_factory.mktemp("whole")
    root = base / "storage"
    generate_tree(root, TreeSpec(sessions=4, seed=11))
    db = base / "index.duckdb"
    assert main(["index", "--storage", str(root), "--db", str(db), "--log-level", "warning"]) == 0
    assert find_damage(db) is None
    return root, db


def _copy(whole: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "index.duckdb"
    shutil.copyfile(whole[1], copy)
    return copy


def _one_error_line(err: str, db: Path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"indexer-service: error: database {db}: damaged ("), lines[0]
    assert "`indexer-service rebuild`" in lines[0]
    return lines[0]


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "run": lambda root, db: ["run", "--storage", str(root), "--db", str(db), "--no-http"],
    "index": lambda root, db: ["index", "--storage", str(root), "--db", str(db)],
    "status": lambda _root, db: ["status", "--db", str(db)],
    "query": lambda _root, db: ["query", "--db", str(db), "SELECT count(*) FROM parts"],
    "report": lambda _root, db: ["report", "daily", "--db", str(db)],
}


@pytest.mark.parametrize("cut", ["10%", "40%", "90%", "last block"])
def test_a_cut_index_is_refused_by_every_command(
    whole: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: str
) -> None:
    """Cut anywhere past its headers, the index is refused by run, index, status, query and
    report: exit 1, one line naming the file, what is wrong and `rebuild`; nothing is written
    to it (DuckDB opened such a file and answered from what was left)."""
    db = _copy(whole, tmp_path)
    size = db.stat().st_size
    os.truncate(db, size - BLOCK if cut == "last block" else size * int(cut[:-1]) // 100)
    cut_size = db.stat().st_size
    for name, argv in COMMANDS.items():
        assert main(argv(whole[0], db)) == 1, name
        line = _one_error_line(capsys.readouterr().err, db)
        assert f"cut short: {cut_size} bytes of the {size} its header uses" in line, name
    assert db.stat().st_size == cut_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]  # no WAL, no API files


async def test_the_library_refuses_a_damaged_index(
    whole: tuple[Path, Path], tmp_path: Path
) -> None:
    """A host starting the service on a cut index gets `DatabaseDamagedError` (exported), with
    the file and the damage, before anything runs."""
    db = _copy(whole, tmp_path)
    os.truncate(db, db.stat().st_size // 2)
    settings = Settings(storage_path=whole[0], db_path=db, watch=False)
    with pytest.raises(DatabaseDamagedError) as info:
        async with IndexerService(settings):
            pytest.fail("the service started on a damaged index")
    assert info.value.path == db and "cut short" in info.value.damage


def test_free_blocks_duckdb_cut_itself_are_not_damage_a_used_block_is(tmp_path: Path) -> None:
    """A checkpoint writes the header, then cuts the free blocks at the end of the file: such
    a file is shorter than its header's block count and whole. Cutting a block in use is not."""
    path = tmp_path / "index.duckdb"
    con = duckdb.connect(str(path))
    for table in ("a", "b"):
        con.execute(f"CREATE TABLE {table} AS SELECT repeat(md5(i::VARCHAR), 200) AS s "
                    "FROM range(2000) t(i)")  # fmt: skip
        con.execute("CHECKPOINT")
    con.execute("DROP TABLE b")
    con.execute("CHECKPOINT")
    con.close()
    (block_count,) = struct.unpack_from("<Q", _current_header(path), 8 + 24)
    assert path.stat().st_size < BLOCK_START + block_count * BLOCK  # the free tail is gone
    assert find_damage(path) is None
    Database(path).open().close()
    os.truncate(path, path.stat().st_size - BLOCK)
    with pytest.raises(DatabaseDamagedError, match="cut short"):
        Database(path).open()


def _current_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(BLOCK_START)
    first, second = head[4096:8192], head[8192:]
    return max(first, second, key=lambda h: struct.unpack_from("<Q", h, 8)[0])


def _poke(path: Path, at: int, data: bytes, *, reseal: tuple[int, int] | None = None) -> None:
    """Write ``data`` at ``at``; with ``reseal=(start, size)`` recompute that block's checksum."""
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)
        if reseal is not None:
            f.seek(reseal[0])
            block = f.read(reseal[1])
            f.seek(reseal[0])
            f.write(struct.pack("<Q", checksum(block[8:])))


def test_a_damaged_header_or_catalog_is_refused(
    whole: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header whose checksum does not match, and a catalog DuckDB cannot deserialize (its
    block's checksum made right), are refused like a cut file."""
    db = _copy(whole, tmp_path)
    _poke(db, 100, b"\xff" * 16)
    assert main(["status", "--db", str(db)]) == 1
    assert "checksum mismatch in its main header" in _one_error_line(capsys.readouterr().err, db)

    db.unlink()
    db = _copy(whole, tmp_path)
    (pointer,) = struct.unpack_from("<Q", _current_header(db), 16)  # the catalog's metadata
    block, index = pointer & ((1 << 56) - 1), pointer >> 56
    start = BLOCK_START + block * BLOCK
    _poke(db, start + 8 + index * 4088 + 8, b"\x5a" * 8, reseal=(start, BLOCK))
    assert find_damage(db) is None  # every checksum matches: DuckDB finds it
    assert main(["status", "--db", str(db)]) == 1
    assert "Failed to deserialize" in _one_error_line(capsys.readouterr().err, db)


def _damage_data_blocks(db: Path) -> None:
    """Overwrite 64 bytes inside every block but the first (which holds the catalog), leaving
    the stored checksums: each such block fails its check when DuckDB reads it."""
    blocks = (db.stat().st_size - BLOCK_START) // BLOCK
    for n in range(1, blocks):
        _poke(db, BLOCK_START + n * BLOCK + 5000, b"\xa5" * 64)


def test_a_block_damaged_in_place_is_reported_when_a_query_reads_it(
    whole: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A block whose checksum does not match is found only when read (checking every block
    costs seconds per GB): the query then fails with DuckDB's words and the way out."""
    db = _copy(whole, tmp_path)
    _damage_data_blocks(db)
    assert main(["query", "--db", str(db), "SELECT sum(length(raw)) FROM parts"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Corrupt database file" in err
    assert f"the index {db} is damaged; `indexer-service rebuild`" in err


async def test_a_service_that_finds_a_damaged_block_stops_with_one_error(
    whole: tuple[Path, Path], tmp_path: Path, log_events: LogEvents
) -> None:
    """A write that meets a damaged block is not retried (no retry mends the file): the
    service stops and the host gets `DatabaseDamagedError`."""
    db = _copy(whole, tmp_path)
    _damage_data_blocks(db)
    root = tmp_path / "storage"
    shutil.copytree(whole[0], root)
    settings = Settings(storage_path=root, db_path=db, reconcile_interval=3600.0)
    writer = LiveWriter(root, seed=2)
    with pytest.raises(DatabaseDamagedError, match="Corrupt database file"):
        async with IndexerService(settings) as svc:
            await svc.wait_until_synced()
            for _ in range(20):  # rewrites reach the damaged row groups
                writer.write_step(writer.new_session())
            await anyio.sleep_forever()
    assert log_events.counts["database_damaged"] >= 1
    assert not log_events.counts["database_write_failed"]


def test_rebuild_sets_the_damaged_file_aside_and_indexes_again(
    whole: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rebuild` keeps the damaged file as <name>.damaged-<time>, indexes the tree into a new
    index, says how long it took, and the commands work again."""
    root, _ = whole
    db = _copy(whole, tmp_path)
    os.truncate(db, db.stat().st_size * 4 // 10)
    cut = db.read_bytes()
    argv = ["--storage", str(root), "--db", str(db), "--log-level", "warning"]
    assert main(["rebuild", *argv]) == 0
    out, err = capsys.readouterr()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("index.duckdb.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == cut
    assert f"set {db} aside as {aside[0].name} (damaged: cut short" in err
    assert f"indexer-service: rebuilt {db} in " in err.splitlines()[-1]
    assert "processed" in out
    assert_index_matches_tree(root, db)
    assert main(["status", "--db", str(db)]) == 0


def test_rebuild_refuses_while_a_process_holds_the_index(
    whole: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running service holds the file: `rebuild` moves nothing and names the holder."""
    db = _copy(whole, tmp_path)
    with held_by_another_process(db) as pid:
        assert main(["rebuild", "--storage", str(whole[0]), "--db", str(db)]) == 1
    assert f"locked by process {pid}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]
