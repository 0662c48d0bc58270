"""A storage tree a hostile tester would make: names that are not UTF-8, links out of the root,
FIFOs and sockets, folders where files belong, a root that disappears. Real files, real
watcher, real DuckDB."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson
from conftest import (
    LogEvents,
    RunningService,
    TreeFactory,
    assert_index_matches_tree,
    eventually,
    indexable_files,
    load_batch,
)

from indexer_service import IndexerService, Settings
from indexer_service.read.query import run_query
from indexer_service.reports.status import collect_status, format_status
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.lister import TreeLister
from indexer_service.sources.json_tree.loader import Loader
from indexer_service.store.database import Database


def _root(svc: IndexerService) -> Path:
    assert svc.settings.storage_path is not None
    return svc.settings.storage_path


def _index(svc: IndexerService) -> dict[str, tuple[str, str | None]]:
    """file_index as key -> (status, error message)."""
    rows = svc.db.cursor().execute("SELECT file_path, status, error_message FROM file_index")
    return {p: (s, m) for p, s, m in rows.fetchall()}


def _bad_dir(parent: Path, name: bytes) -> bytes:
    """Make a folder whose name is not UTF-8; its path as bytes."""
    path = os.path.join(os.fsencode(parent), name)
    os.mkdir(path)
    return path


def _bad_file(parent: Path | bytes, name: bytes, data: bytes = b"{}") -> None:
    """Write a file whose name (or its folder's) is not UTF-8."""
    fd = os.open(os.path.join(os.fsencode(parent), name), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _message_dirs(root: Path) -> list[Path]:
    return sorted(d for d in (root / "part").iterdir() if d.is_dir())


# -- names that are not valid UTF-8 --------------------------------------------------------------


async def test_names_that_are_not_utf8_are_error_rows_and_the_rest_is_indexed(
    storage_tree: TreeFactory, make_settings: Any, log_events: LogEvents
) -> None:
    """A file and a folder whose names are not UTF-8, there at start: each file gets an error
    row keyed by its path with ``\\xNN`` for the bytes, logged as ``file_error``; every other
    file is indexed and the service runs on."""
    tree = storage_tree(sessions=1)
    good = set(indexable_files(tree.root))
    msg = _message_dirs(tree.root)[0]
    _bad_file(msg, b"prt_\xff\xfe.json")
    _bad_file(_bad_dir(tree.root / "part", b"msg_\xfa\xfb"), b"prt_inside.json")
    bad = {f"{msg}/prt_\\xff\\xfe.json", f"{tree.root}/part/msg_\\xfa\\xfb/prt_inside.json"}
    async with IndexerService(make_settings()) as svc:
        await svc.wait_until_synced()
        index = _index(svc)
        assert {p for p, (status, _) in index.items() if status == "indexed"} == good
        assert {p for p, (status, _) in index.items() if status == "error"} == bad
        assert all("name is not valid UTF-8" in str(index[p][1]) for p in bad)
        assert bad <= {e["path"] for e in log_events.entries if e["event"] == "file_error"}
        assert svc.health() == (True, "running")
        (failed,) = [e for e in log_events.entries if e["event"] == "watch_failed"]
        assert "msg_\\xFA\\xFB" in failed["error"]  # arming lists that folder: no watch


async def test_names_that_are_not_utf8_while_running_leave_the_service_running(
    running_service: RunningService, log_events: LogEvents
) -> None:
    """A file whose name is not UTF-8 appears while the service runs: the watch watchfiles
    gives up is armed again, and reports later files. Then such a folder: the watch cannot be
    armed while it is there (arming lists it), so the service runs on reconciliation, which
    records every bad name as an error and indexes the rest."""
    async with running_service(sessions=1) as svc:
        root = _root(svc)
        msg = _message_dirs(root)[0]
        doc = orjson.loads(next(msg.iterdir()).read_bytes())  # (not the bad file: a read of
        # it fails the watch)
        armed = log_events.counts["watch_started"]
        _bad_file(msg, b"prt_\xff.json")
        with anyio.fail_after(30):
            await log_events.wait_for("watch_restarted")
            await log_events.wait_for("watch_started", armed + 1)
        good = msg / "prt_after.json"
        good.write_bytes(orjson.dumps({**doc, "id": good.stem}))
        await eventually(svc, lambda: _index(svc).get(str(good), ("",))[0] == "indexed", log_events)
        _bad_file(_bad_dir(root / "part", b"msg_\xfe"), b"prt_x.json")
        with anyio.fail_after(30):
            await log_events.wait_for("watch_failed")
        later = msg / "prt_later.json"
        later.write_bytes(orjson.dumps({**doc, "id": later.stem}))
        await svc.wait_until_synced()
        index = _index(svc)
        for key in (f"{msg}/prt_\\xff.json", f"{root}/part/msg_\\xfe/prt_x.json"):
            assert index[key][0] == "error" and "not valid UTF-8" in str(index[key][1])
        assert index[str(later)][0] == "indexed"
        assert svc.health() == (True, "running")
        stats = svc.stats()["watcher"]
        assert (stats["restarts"], stats["failures"]) == (2, 1)


# -- links ---------------------------------------------------------------------------------------


async def test_a_link_out_of_the_root_is_an_error_row_and_is_never_read(
    storage_tree: TreeFactory, make_settings: Any, log_events: LogEvents, tmp_path: Path
) -> None:
    """A link to a valid part outside the root (at start, and made while running) is an error
    row ``outside the storage root``, and its content is nowhere in the index; a part moved
    elsewhere in the tree with a link in its place is indexed through the link."""
    tree = storage_tree(sessions=1)
    first, second = _message_dirs(tree.root)[:2]
    inside = sorted(first.iterdir())[0]
    doc = orjson.loads(inside.read_bytes())
    (tree.root / "shared").mkdir()
    inside.rename(tree.root / "shared" / inside.name)
    inside.symlink_to(Path("../../shared") / inside.name)

    def secret(link: Path) -> Path:
        """A valid part outside the root (the old code indexed it whole), and a link to it."""
        target = tmp_path / f"secret_{link.stem}.json"
        target.write_bytes(orjson.dumps({**doc, "id": link.stem, "type": "text", "text": "SECRET"}))
        link.symlink_to(target)
        return target

    targets = {first / "prt_zzsecret.json": secret(first / "prt_zzsecret.json")}
    async with IndexerService(make_settings()) as svc:
        await svc.wait_until_synced()
        live = second / "prt_zzlive.json"
        targets[live] = secret(live)
        await eventually(svc, lambda: str(live) in _index(svc), log_events)
        index = _index(svc)
        for link, target in targets.items():
            assert index[str(link)] == (
                "error",
                f"outside the storage root: a link to {os.path.realpath(target)}, not read",
            )
        assert index[str(inside)][0] == "indexed", index[str(inside)]
        leaked = "SELECT count(*) FROM parts WHERE CAST(raw AS VARCHAR) LIKE '%SECRET%'"
        assert svc.db.cursor().execute(leaked).fetchall() == [(0,)]
        assert svc.health() == (True, "running")


def test_a_folder_swapped_for_a_link_out_of_the_root_is_not_read(
    db: Database, tmp_path: Path
) -> None:
    """Every folder on the way to a file is opened without following a link: a message folder
    moved out of the tree and replaced by a link to it is not read through the link."""
    storage = tmp_path / "storage"
    folder = storage / "part" / "msg_1"
    folder.mkdir(parents=True)
    path = folder / "prt_1.json"
    path.write_bytes(orjson.dumps({"id": "prt_1", "type": "text", "text": "SECRET"}))
    moved = tmp_path / "moved"
    folder.rename(moved)
    folder.symlink_to(moved)
    loader = Loader(db, FileTracker(db), storage)
    try:
        assert load_batch(loader, [str(path)]).errors == 1
    finally:
        loader.close()
    found = db.cursor().execute("SELECT status, error_message FROM file_index").fetchall()
    target = os.path.realpath(moved / "prt_1.json")
    assert found == [("error", f"outside the storage root: a link to {target}, not read")]
    assert db.cursor().execute("SELECT count(*) FROM parts").fetchall() == [(0,)]


def test_a_record_folder_linked_out_of_the_root_is_not_listed(tmp_path: Path) -> None:
    """``part`` as a link to a folder outside the root: its folders are not listed (nothing
    under it is reported, so nothing is read), and the listing says why, deleting nothing."""
    root, elsewhere = tmp_path / "storage", tmp_path / "elsewhere"
    (elsewhere / "msg_1").mkdir(parents=True)
    (elsewhere / "msg_1" / "prt_1.json").write_text("{}")
    (root / "project").mkdir(parents=True)
    (root / "project" / "global.json").write_text("{}")
    (root / "part").symlink_to(elsewhere)
    listing = TreeLister(str(root)).scan(full=True)
    listed = {rel for batch in listing.batches for rel in batch.column("rel").to_pylist()}
    assert listed == {"project/global.json"}
    assert listing.errors == [("part", "a link out of the storage root, not listed")]
    assert listing.failed == ["part"]


# -- special files -------------------------------------------------------------------------------


def _device(path: Path) -> bool:
    """Make a character device (/dev/null's numbers) if this process may."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        return False
    return True


async def test_special_entries_are_skipped_without_being_opened_and_counted(
    running_service: RunningService, log_events: LogEvents
) -> None:
    """A FIFO, a socket, a device, a folder named like a record, a tree 200 levels deep and a
    record file where folders belong, made while the service runs: none is opened (a writer
    waiting on the FIFO stays blocked), each is logged once, and ``status`` counts them."""
    async with running_service(sessions=1) as svc:
        root = _root(svc)
        msg = _message_dirs(root)[0]
        fifo = msg / "prt_fifo.json"
        os.mkfifo(fifo)
        opened = threading.Event()

        def writer() -> None:  # blocks until a reader opens the FIFO
            os.close(os.open(fifo, os.O_WRONLY))
            opened.set()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            os.mknod(msg / "prt_sock.json", stat.S_IFSOCK | 0o600)
            devices = int(_device(msg / "prt_dev.json"))
            (msg / "prt_dir.json").mkdir()
            (msg / "prt_dir.json" / "prt_in.json").write_text("{}")
            deep = msg / "d"
            (deep / "/".join(["d"] * 199)).mkdir(parents=True)
            (deep / "/".join(["d"] * 199) / "prt_deep.json").write_text("{}")
            (root / "part" / "prt_misplaced.json").write_text("{}")
            await svc.wait_until_synced()
            await svc.wait_until_synced()  # a second full pass logs nothing new
            assert not opened.is_set()
            skipped = svc.stats()["reconciler"]["skipped"]
            expected = {"fifo": 1, "socket": 1, "device": devices, "folder": 2, "misplaced": 1}
            assert skipped == {**expected, "link": 0}
            logged = [e for e in log_events.entries if e["event"] == "entry_skipped"]
            assert sorted(e["kind"] for e in logged) == sorted(
                k for k, n in expected.items() for _ in range(n)
            )
            query = partial(run_query, svc.db)
            report = format_status(collect_status(query, db="index", service=svc.stats()))
            assert f"legacy tree {root}: listed" in report
            assert "1 fifo, 2 folder, 1 misplaced, 1 socket" in report.replace(
                f"{devices} device, ", ""
            )
            assert svc.health() == (True, "running")
        finally:
            if not opened.is_set():  # let the writer go
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            thread.join(10)


# -- a root that disappears ----------------------------------------------------------------------


def _session_files(root: Path, session: str) -> list[Path]:
    """Every file of one session: its own, its messages', their parts', its todo and diff."""
    found = [*root.glob(f"session/*/{session}.json"), *root.glob(f"*/{session}.json")]
    for message in (root / "message" / session).glob("*.json"):
        found.append(message)
        found += (root / "part" / message.stem).glob("*.json")
    return [p for p in dict.fromkeys(found) if p.is_file()]


async def test_a_root_that_disappears_is_unavailable_and_the_index_keeps_its_rows(
    storage_tree: TreeFactory, make_settings: Any, tmp_path: Path
) -> None:
    """The root renamed away, then an empty folder in its place (a disk not mounted): the
    index keeps every row and health says the source is unavailable. Back with one session
    changed and one removed, the next pass applies exactly those."""
    tree = storage_tree(sessions=3)
    settings: Settings = make_settings()
    root, away = tree.root, tmp_path / "away"
    changed, removed = tree.session_ids[0], tree.session_ids[1]
    async with IndexerService(settings) as svc:
        await svc.wait_until_synced()
        before = _index(svc)
        root.rename(away)
        await svc.wait_until_synced()
        healthy, reason = svc.health()
        assert not healthy and f"storage {root}: source unavailable" in reason
        assert _index(svc) == before
        root.mkdir()
        await svc.wait_until_synced()
        healthy, reason = svc.health()
        assert not healthy and "holds none of the record folders" in reason
        assert _index(svc) == before
        root.rmdir()
        (session_file,) = away.glob(f"session/*/{changed}.json")
        session_file.write_bytes(
            orjson.dumps({**orjson.loads(session_file.read_bytes()), "title": "renamed"})
        )
        gone = _session_files(away, removed)
        for path in gone:
            path.unlink()
        away.rename(root)
        await svc.wait_until_synced()
        last = svc.stats()["reconciler"]["last"]
        assert (last["new"], last["modified"], last["deleted"]) == (0, 1, len(gone))
        assert svc.health() == (True, "running")
        titles = "SELECT title FROM sessions WHERE id = ?"
        assert svc.db.cursor().execute(titles, [changed]).fetchall() == [("renamed",)]
        left = "SELECT count(*) FROM messages WHERE session_id = ?"
        assert svc.db.cursor().execute(left, [removed]).fetchall() == [(0,)]
    assert_index_matches_tree(root, settings.db_path)


def test_files_missing_with_their_root_are_not_deleted(db: Database, tmp_path: Path) -> None:
    """A batch that finds its files missing because the whole root is gone deletes nothing;
    once the root is back, a file really removed is deleted."""
    storage = tmp_path / "storage"
    (storage / "part" / "msg_1").mkdir(parents=True)
    paths = [storage / "part" / "msg_1" / f"prt_{i}.json" for i in (1, 2)]
    for path in paths:
        path.write_bytes(orjson.dumps({"id": path.stem, "type": "text", "text": "t"}))
    loader = Loader(db, FileTracker(db), storage)
    keys = [str(p) for p in paths]
    count = "SELECT count(*) FROM file_index WHERE status = 'indexed'"
    try:
        assert load_batch(loader, keys).indexed == 2
        storage.rename(tmp_path / "away")
        assert load_batch(loader, keys).deleted == 0
        assert db.cursor().execute(count).fetchall() == [(2,)]
        (tmp_path / "away").rename(storage)
        paths[0].unlink()
        assert load_batch(loader, keys).deleted == 1
        assert db.cursor().execute(count).fetchall() == [(1,)]
    finally:
        loader.close()
    shutil.rmtree(storage)
