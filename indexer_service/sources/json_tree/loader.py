"""Loader: a batch of storage paths -> record rows and `file_index` entries in one transaction.

`prepare` (a reader thread) stats and reads each file, then extracts the batch's typed rows
(`extract.Extractor`); `write` (the writer thread) upserts them, applies deletions and updates
`file_index` in one transaction (a write group's, `store.group`), so after a crash both are
there or neither. A plain ``INSERT`` (half the cost of deleting the keys first) is tried unless
a row may be there: a failed one aborts the whole write group. `warm` reads a cold bulk batch
ahead. Figures behind these choices: docs/benchmarks.md.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from indexer_service.extract import SPECS, Extractor, RecordSpec, array_items, diagnose, utf8_column
from indexer_service.model import BatchResult
from indexer_service.settings import BATCH_BYTES, MAX_FILE_BYTES
from indexer_service.sources.json_tree.batch import Prepared
from indexer_service.sources.json_tree.file_index import FailedFile, FileTracker, IndexedFile
from indexer_service.sources.json_tree.files import (
    BadName,
    FileChanged,
    FileTooLarge,
    NotAFile,
    OutsideRoot,
    Tree,
    Version,
)
from indexer_service.sources.json_tree.layout import Location, classify, escape
from indexer_service.sources.json_tree.pagecache import read_ahead
from indexer_service.sources.json_tree.write_log import WriteLog
from indexer_service.store.changes import note_removed
from indexer_service.store.database import Database
from indexer_service.store.rows import RowWriter, database_keys, delete_in, one_of

__all__ = ["GROUP_MIN_FILES", "HEAVY_FILE_BYTES", "PREFETCH_MIN_FILES", "Loader", "Prepared"]

log = structlog.get_logger(__name__)

_CONFLICT_RETRIES = 3

PREFETCH_MIN_FILES = 256
"""Smallest batch that is checked for files missing from the page cache (bulk loads)."""
HEAVY_FILE_BYTES = 32 * 1024
"""A batch whose files average this size or more is written on its own, not in a write group."""
GROUP_MIN_FILES = 1_000
"""A batch of fewer files is written and committed on its own, not in a write group: a live
batch (cut at ``max_files`` or ``window_ms``) is visible as soon as it is written, however
many others are in flight. Larger ones, merged while the writer was behind, share groups."""


@dataclass
class _Group:
    """Files of one type read in one batch."""

    spec: RecordSpec
    paths: list[str] = field(default_factory=list)
    locs: list[Location] = field(default_factory=list)
    datas: list[bytes] = field(default_factory=list)


class Loader:
    """Loads batches of storage paths into the record tables (`source.BatchLoader`).

    ``prepare`` may run on any number of threads at once; ``write`` serializes itself. A batch
    stops reading at ``max_batch_bytes`` (the rest follow); with ``defer_to_databases`` a record
    an OpenCode database holds is not overwritten (that database is indexed too); batches of
    ``group_min_files`` or more may share a write group (`groupable`).
    """

    def __init__(
        self,
        db: Database,
        tracker: FileTracker,
        storage_root: Path | str,
        *,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_batch_bytes: int = BATCH_BYTES,
        defer_to_databases: bool = False,
        group_min_files: int = GROUP_MIN_FILES,
    ) -> None:
        self.db = db
        self.max_batch_bytes = max_batch_bytes
        self.group_min_files = group_min_files
        self.defer_to_databases = defer_to_databases
        self.max_file_bytes = max_file_bytes
        self.tracker = tracker
        self.root = os.path.abspath(os.fspath(storage_root))
        self._extractor: Extractor | None = None  # created on first use
        self._extractor_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writes = WriteLog()
        self._rows = RowWriter()
        self._conflicts = 0  # consecutive batches whose plain INSERT hit an existing row
        self._replace_for = 0  # batches left to write deleting their keys first

    def close(self) -> None:
        """Release the in-memory extraction database (a later batch opens it again)."""
        with self._extractor_lock:
            extractor, self._extractor = self._extractor, None
        if extractor is not None:
            extractor.close()

    def _get_extractor(self) -> Extractor:
        with self._extractor_lock:
            if self._extractor is None:
                self._extractor = Extractor()
            return self._extractor

    async def warm(self, paths: Sequence[str]) -> int:
        """Ask the kernel to read a bulk batch ahead if its files are not in the page cache (one
        reader would wait for the disk per file); how many it was handed (0: small or cached)."""
        if len(paths) < PREFETCH_MIN_FILES:
            return 0
        return await read_ahead(self.root, paths)

    # -- prepare -----------------------------------------------------------------------------

    def prepare(self, paths: Sequence[str]) -> Prepared:
        """Stat and read every path, and extract the rows of the files that parse."""
        with Tree(self.root) as tree:
            return self._prepare(tree, paths)

    def _prepare(self, tree: Tree, paths: Sequence[str]) -> Prepared:
        out = Prepared(ticket=self._writes.begin())
        start = time.perf_counter()
        groups: dict[str, _Group] = {}
        unique, size = list(dict.fromkeys(escape(os.fspath(p)) for p in paths)), 0
        for n, path in enumerate(unique):
            if size >= self.max_batch_bytes:  # DuckDB holds a batch whole until its commit
                out.rest = unique[n:]
                break
            loc = classify(self.root, path)
            if loc is None:
                out.skipped += 1
                continue
            try:
                data, version = tree.read(path, self.max_file_bytes)
            except FileChanged:
                out.requeue.append(path)
            except (FileNotFoundError, NotADirectoryError, NotAFile):  # NotAFile: never opened
                out.deleted.append((path, loc.file_type, loc.key))
            except (FileTooLarge, OutsideRoot, BadName, OSError) as exc:
                self._failed(out, tree, path, loc, exc)
            else:
                out.versions[path] = version
                size += len(data)
                group = groups.get(loc.file_type)
                if group is None:
                    group = groups[loc.file_type] = _Group(SPECS[loc.file_type])
                group.paths.append(path)
                group.locs.append(loc)
                group.datas.append(data)
        if out.deleted and not tree.available():  # gone with the root: no evidence of a deletion
            out.skipped += len(out.deleted)
            out.deleted = []
        read_done = time.perf_counter()
        for group in groups.values():
            self._extract(out, group)
        out.read_seconds, out.nbytes = read_done - start, size
        out.parse_seconds = time.perf_counter() - read_done
        return out

    @staticmethod
    def _failed(out: Prepared, tree: Tree, path: str, loc: Location, exc: Exception) -> None:
        """An error row for a file that cannot be read, at its version on disk."""
        if (version := getattr(exc, "version", None) or tree.version(path)) is not None:
            out.versions[path] = version
        v = version or Version(0.0, 0, 0, 0)
        message = f"cannot read: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        out.failed.append(FailedFile(path, loc.file_type, v.mtime, v.size, message, v.mtime_ns))

    def _extract(self, out: Prepared, group: _Group) -> None:
        spec, ftype = group.spec, group.spec.file_type
        failed: dict[int, str | None] = {}  # file index -> message (None: diagnose)
        files: list[int] = []  # file index of each input row
        texts: list[bytes] = []
        positions: list[int] = []
        if spec.array:
            for i, data in enumerate(group.datas):
                items = array_items(spec, data)
                if items is None:
                    failed[i] = None
                    continue
                for pos, item in items:
                    files.append(i)
                    positions.append(pos)
                    texts.append(item)
        else:
            files = _newest_per_key(group, out.versions)
            texts = [group.datas[i] for i in files]
        content = utf8_column(texts, files, failed)
        batch = pa.table(
            {
                "file_path": pa.array([group.paths[i] for i in files], pa.string()),
                "key": pa.array([group.locs[i].key for i in files], pa.string()),
                "parent": pa.array([group.locs[i].parent for i in files], pa.string()),
                **({"position": pa.array(positions, pa.int64())} if spec.array else {}),
                "content": content,
            }
        )
        rows = None
        if files:
            extracted = self._get_extractor().extract(spec, batch)
            for row, message in extracted.bad.items():
                failed.setdefault(files[row], message)
            rows = extracted.rows
        if rows is not None and failed and spec.array:  # a bad item fails its whole file
            bad = pa.array([group.paths[i] for i in failed], pa.string())
            rows = rows.filter(pc.invert(pc.is_in(rows.column("file_path"), value_set=bad)))
        if rows is not None and rows.num_rows:
            out.rows[ftype] = rows
        for i, path in enumerate(group.paths):
            v, key = out.versions[path], group.locs[i].key
            if i in failed:
                message = failed[i] or diagnose(group.datas[i], spec, key)
                out.failed.append(FailedFile(path, ftype, v.mtime, v.size, message, v.mtime_ns))
            else:
                out.indexed.append(IndexedFile(path, ftype, v.mtime, v.size, key, v.mtime_ns))

    def follow_up(self, prepared: Prepared) -> Sequence[str]:
        """The paths past the batch's byte budget, read while this batch is written."""
        return prepared.rest

    def groupable(self, prepared: Prepared) -> bool:
        """Unless the batch is small (`GROUP_MIN_FILES`: a live one, which would wait for the
        group's commit, up to 2 s while others keep coming) or its files are heavy
        (`HEAVY_FILE_BYTES`, e.g. session diffs: a group of such batches never gives a table a
        row group of rows, and committed a few hundred MB of WAL at once)."""
        files = len(prepared.versions)
        return files >= self.group_min_files and prepared.nbytes < HEAVY_FILE_BYTES * max(1, files)

    # -- write -------------------------------------------------------------------------------

    def write(self, prepared: Prepared) -> BatchResult:
        """Write a prepared batch in one transaction (serialized with other writes).

        A file that another batch wrote after this one read it is stat'ed again; if its version
        on disk is no longer the one read, it is left out and returned in ``requeue``, so a
        stale read never overwrites a newer version.
        """
        start = time.perf_counter()
        with self._write_lock:
            p = self._drop_stale(prepared)
            paths = _paths(p)
            try:
                self._write_locked(p, paths)
            finally:
                self._writes.written(p.ticket, paths)
        for bad in p.failed:
            log.info("file_error", path=bad.path, file_type=bad.file_type, message=bad.message)
        return BatchResult(
            indexed=len(p.indexed),
            errors=len(p.failed),
            deleted=len(p.deleted),
            skipped=p.skipped,
            requeue=p.requeue,
            read_seconds=p.read_seconds,
            parse_seconds=p.parse_seconds,
            write_seconds=time.perf_counter() - start,
            by_type=dict(Counter(f.file_type for f in p.indexed)),
        )

    def _write_locked(self, p: Prepared, paths: list[str]) -> None:
        # Keys are deleted first when a path was written lately (a second version, an event
        # seen twice), and for 2, 4 ... 64 batches after a plain INSERT met a row.
        if self._replace_for or self._writes.wrote_lately(paths):
            self._replace_for = max(self._replace_for - 1, 0)
            self._transaction(p, replace=True)
            return
        try:
            self._transaction(p, replace=False)
            self._conflicts = 0
        except duckdb.ConstraintException:
            self._conflicts += 1
            self._replace_for = min(2**self._conflicts, 64)
            self._transaction(p, replace=True)

    def _drop_stale(self, p: Prepared) -> Prepared:
        """Move files whose disk version is no longer the one read (or that came back after
        a delete) to ``requeue``, with their rows."""
        paths = _paths(p)
        check = self._writes.contended(p.ticket, paths)
        if check == set():
            return p
        check = set(paths) if check is None else check
        read = [f.path for f in p.indexed] + [f.path for f in p.failed]
        with Tree(self.root) as tree:
            stale = {
                path
                for path in read
                if path in check and path in p.versions
                if tree.version(path) != p.versions[path]
            }
            back = {d[0] for d in p.deleted if d[0] in check and tree.version(d[0]) is not None}
        if not stale and not back:
            return p
        rows = p.rows
        if stale:
            gone = pa.array(sorted(stale), pa.string())
            rows = {
                t: tbl.filter(pc.invert(pc.is_in(tbl.column("file_path"), value_set=gone)))
                for t, tbl in rows.items()
            }
        return replace(
            p,
            rows={t: tbl for t, tbl in rows.items() if tbl.num_rows},
            indexed=[f for f in p.indexed if f.path not in stale],
            failed=[f for f in p.failed if f.path not in stale],
            deleted=[d for d in p.deleted if d[0] not in back],
            requeue=[*p.requeue, *sorted(stale), *sorted(back)],
        )

    def _transaction(self, p: Prepared, *, replace: bool) -> None:
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            try:
                with self.db.changes.claim() as seq, self.db.transaction() as cur:
                    self._apply(cur, p, replace, seq)
                return
            except duckdb.TransactionException as exc:
                # another thread's transaction changed the same file_index rows: retry
                if "Conflict" not in str(exc) or attempt == _CONFLICT_RETRIES:
                    raise
                log.debug("write_conflict_retry", attempt=attempt, error=str(exc))

    def _apply(self, cur: duckdb.DuckDBPyConnection, p: Prepared, replace: bool, seq: int) -> None:
        for spec in SPECS.values():
            table, ftype = spec.table.name, spec.file_type
            rows = p.rows.get(ftype)
            key = "session_id" if spec.array else spec.table.primary_key[0]
            removed: list[object] = []  # groups whose rows may be gone (`store.changes`)
            owned: set[object] = set()
            if self.defer_to_databases and rows is not None:
                owned = database_keys(cur, table, key, rows.column(key).to_pylist())
                if owned:
                    in_db = pc.is_in(rows.column(key), value_set=pa.array(list(owned)))
                    rows = rows.filter(pc.invert(in_db))
            if spec.array:  # a list file's rows are replaced whole: items may have gone
                sessions = [
                    f.record_id or ""
                    for f in p.indexed
                    if f.file_type == ftype and f.record_id not in owned
                ]
                if sessions:
                    delete_in(cur, table, "session_id", sessions)
                    removed += sessions
            elif replace and rows is not None:  # written again below
                delete_in(cur, table, key, rows.column(key).to_pylist())
            if rows is not None:
                self._rows.insert(cur, table, rows, seq)
            gone = [(path, key) for path, t, key in p.deleted if t == ftype]
            if gone:
                # The key (from the file name) finds the rows in the index; the path spares
                # a record whose newest version lives at another path (a session file under
                # two project directories).
                by_key, keys = one_of(spec.table.primary_key[0], [g[1] for g in gone])
                by_path, paths = one_of("file_path", [g[0] for g in gone])
                cur.execute(f"DELETE FROM {table} WHERE {by_key} AND {by_path}", keys + paths)
                removed += [g[1] for g in gone]
            if removed:
                kept = rows.column(key).to_pylist() if rows is not None else []
                note_removed(cur, table, seq, removed, kept)
        self.tracker.mark_indexed_batch(p.indexed, replace=replace)
        self.tracker.mark_error_batch(p.failed)
        self.tracker.remove([path for path, _, _ in p.deleted])


def _paths(p: Prepared) -> list[str]:
    """Every path the batch writes something for."""
    return [f.path for f in p.indexed] + [f.path for f in p.failed] + [d[0] for d in p.deleted]


def _newest_per_key(group: _Group, versions: dict[str, Version]) -> list[int]:
    """Indices of the files to extract: one per record id, the newest (ids repeat only when a
    session file exists under two project directories)."""
    newest: dict[str, int] = {}
    for i, loc in enumerate(group.locs):
        j = newest.get(loc.key)
        if j is None or versions[group.paths[i]].mtime_ns >= versions[group.paths[j]].mtime_ns:
            newest[loc.key] = i
    return (
        sorted(newest.values()) if len(newest) < len(group.locs) else list(range(len(group.locs)))
    )
