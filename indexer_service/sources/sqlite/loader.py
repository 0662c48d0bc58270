"""DbLoader: reads what changed in OpenCode's database and writes it into the record tables.

Keys are the poll signal (`DbKeys.poll`: read what changed since the last poll) and row keys
(`DbKeys.row`: read these records again, or delete them if they are gone). `DbLoader.prepare`
reads in one short snapshot, then extracts typed rows with the record specs the JSON tree uses;
`DbLoader.write` writes rows, deletions, ``row_index`` and the poll's cursors in one
transaction. A database row wins over a legacy file's row with the same id.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence

import duckdb
import pyarrow as pa

from indexer_service.extract import SPECS, Extractor, diagnose, utf8_column
from indexer_service.model import BatchResult
from indexer_service.settings import BATCH_BYTES, MAX_FILE_BYTES
from indexer_service.sources.sqlite.batch import DbKeys, DbPrepared
from indexer_service.sources.sqlite.progress import RowTracker
from indexer_service.sources.sqlite.queries import (
    KINDS,
    Kind,
    Row,
    fetch,
    rows_of,
    unreadable,
    versions,
)
from indexer_service.sources.sqlite.reader import Reader
from indexer_service.store.changes import note_removed
from indexer_service.store.database import Database
from indexer_service.store.rows import RowWriter, delete_in

__all__ = ["DbLoader"]

_EMPTY = -1
"""The version of a session's todo list that had no item when last read."""
_SEEN_MAX = 50_000
"""Records whose last read version is remembered (the newest ones)."""


class DbLoader:
    """Loads batches of one database's keys (`source.BatchLoader`)."""

    def __init__(
        self,
        db: Database,
        reader: Reader,
        keys: DbKeys,
        tracker: RowTracker,
        *,
        chunk_rows: int = 10_000,
        chunk_bytes: int = BATCH_BYTES,
        tail_rows: int = 20_000,
        lookback_ms: int = 10_000,
        max_record_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.db = db
        self.reader = reader
        self.keys = keys
        self.tracker = tracker
        self.chunk_rows = chunk_rows
        """New rows read per table and poll; more go to the next poll (the backfill)."""
        self.chunk_bytes = chunk_bytes
        """...or fewer: the rows of a table a poll reads stop soon after their documents reach
        this size (the backfill's memory is a few times the chunks in flight)."""
        self.tail_rows = tail_rows
        """Rows below the newest read again when their ``time_updated`` moved; an older row
        that changes is found by the reconciler."""
        self.lookback_ms = lookback_ms
        self.max_record_bytes = max_record_bytes
        """A ``data`` larger than this is not read: its record is an error (the limit files
        have in `Settings.max_file_bytes`)."""
        """How far behind the newest ``time_updated`` a change may arrive (opencode stamps
        the time before a write that may wait up to 5 s on the lock)."""
        self._extractor: Extractor | None = None
        self._rows = RowWriter()
        self._claimed: dict[str, int] | None = None  # cursors as far as polls have read
        self._seen: dict[str, dict[str, int]] = {name: {} for name in KINDS}  # key -> version
        self._data_version: int | None = None
        self._more = False  # the last poll stopped at a full chunk: more rows are waiting
        self._generation = 0  # bumped by a failed write: polls claimed before it are void
        self._claim_lock = threading.Lock()  # a poll claims rows; a failed write gives back
        self.polls = 0
        self.polls_skipped = 0
        self.last_poll_at: float | None = None
        """Epoch seconds of the latest poll that read the database."""

    def close(self) -> None:
        if self._extractor is not None:
            self._extractor.close()
            self._extractor = None

    async def warm(self, keys: Sequence[str]) -> int:
        return 0

    def claimed(self) -> dict[str, int]:
        """The cursors as far as polls have read (loaded from ``source_state`` on first use)."""
        if self._claimed is None:
            self._claimed = self.tracker.load_state(self.db.cursor())
        return self._claimed

    # -- prepare ----------------------------------------------------------------------------

    def prepare(self, keys: Sequence[str]) -> DbPrepared:
        """Read the records behind ``keys`` in one snapshot and extract their rows."""
        out = DbPrepared()
        started = time.perf_counter()
        wanted: dict[str, list[str]] = defaultdict(list)
        poll = False
        for key in keys:
            parsed = self.keys.parse(key)
            if parsed is None:
                poll = True
            elif parsed[0] in KINDS:
                wanted[parsed[0]].append(parsed[1])
        found: dict[str, list[Row]] = defaultdict(list)
        if poll and self._changed_since_last_poll():
            self.polls += 1
            self.last_poll_at = time.time()
            with self._claim_lock, self.reader.snapshot() as con:
                out.generation = self._generation
                self._poll(con, out, found)
        elif poll:
            self.polls_skipped += 1
        if wanted:
            with self.reader.snapshot() as con:
                for kind, ids in wanted.items():
                    self._fetch(con, KINDS[kind], ids, out, found)
        read = time.perf_counter()
        for kind, rows in found.items():
            self._extract(KINDS[kind], rows, out)
        out.read_seconds, out.parse_seconds = read - started, time.perf_counter() - read
        return out

    def _changed_since_last_poll(self) -> bool:
        """False only when the connection saw no commit since the last poll, and that poll
        read everything there was (a chunked backfill goes on with no commit)."""
        was_open = self.reader.is_open
        version = self.reader.data_version()
        changed = not was_open or version != self._data_version or self._more
        self._data_version = version
        return changed

    def _poll(self, con: sqlite3.Connection, out: DbPrepared, found: dict[str, list[Row]]) -> None:
        state = self.claimed()
        out.claimed_from = dict(state)
        sessions: set[str] = set()
        more = False
        bulk: dict[str, list[Row]] = {}
        for kind in (KINDS["message"], KINDS["part"]):
            new, moved, full = self._changed_rows(con, kind, state)
            more = more or full
            if full:  # a backfill's chunk: rows not read before, not worth remembering
                bulk[kind.name] = new
            else:
                found[kind.name] += new
            found[kind.name] += moved
            sessions.update(r[6] for r in (*new, *moved) if r[6] is not None)
        for kind in (KINDS["project"], KINDS["session"]):
            recent = self._recent(con, kind, state)
            found[kind.name] += recent
            sessions.update(r[0] for r in recent if kind.name == "session")
        if rest := sessions - {r[0] for r in found["session"]}:  # the recent ones are read
            found["session"] += self._rows_of(con, KINDS["session"], "id", list(rest))
        todo = self._recent(con, KINDS["todo"], state)
        todo_sessions = sessions | {r[0] for r in todo}
        if todo_sessions:
            found["todo"] = self._rows_of(con, KINDS["todo"], "session_id", list(todo_sessions))
            have = {r[0] for r in found["todo"]}
            empty = [s for s in todo_sessions if s not in have]  # an empty list: deleted
            seen = self._seen["todo"]
            out.deleted["todo"] += [s for s in empty if seen.get(s) != _EMPTY]
            seen.update(dict.fromkeys(empty, _EMPTY))
        self._drop_unchanged(found)
        for name, rows in bulk.items():
            found[name] += rows
        out.state = dict(state)
        self._more = more
        if more:
            out.follow.append(self.keys.poll)

    def _drop_unchanged(self, found: dict[str, list[Row]]) -> None:
        """Drop records a poll already read at the same version: the lookback re-selects what
        changed in the last seconds, and a session or a todo list is re-read whenever its
        messages move; writing them again would cost without changing anything."""
        for name, rows in found.items():
            if not rows:
                continue
            seen = self._seen[name]
            current = versions(KINDS[name], rows)
            for r in rows:  # two writes in one millisecond keep time_updated: the text tells
                current[r[0]] = zlib.crc32(r[4], current[r[0]] & 0xFFFFFFFF)
            fresh = {k for k, v in current.items() if seen.get(k) != v}
            found[name] = [r for r in rows if r[0] in fresh]
            for key in fresh:
                seen.pop(key, None)  # re-inserted last: the oldest entries are pruned first
                seen[key] = current[key]
            if len(seen) > 2 * _SEEN_MAX:  # keep the newest (deleting one by one is quadratic)
                self._seen[name] = dict(itertools.islice(seen.items(), len(seen) - _SEEN_MAX, None))

    def _changed_rows(
        self, con: sqlite3.Connection, kind: Kind, state: dict[str, int]
    ) -> tuple[list[Row], list[Row], bool]:
        """New rows (by rowid, at most ``chunk_rows``), recent rows whose ``time_updated``
        moved, and whether the new rows filled the chunk; advances the kind's cursors in
        ``state``."""
        last = state.get(f"{kind.name}.rowid", 0)
        newest = con.execute(f"SELECT max(rowid) FROM {kind.table}").fetchone()[0] or 0
        last = min(last, newest)  # the newest rows were deleted: their rowids may come back
        new = self._read(
            con,
            kind,
            kind.where("rowid > ?", "rowid") + " LIMIT ?",
            (last, self.chunk_rows),
            max_bytes=self.chunk_bytes,
        )
        mark = state.get(f"{kind.name}.updated", 0)
        moved = self._read(
            con,
            kind,
            kind.where("rowid > ? AND rowid <= ? AND time_updated >= ?"),
            (max(0, last - self.tail_rows), last, mark - self.lookback_ms),
        )
        state[f"{kind.name}.rowid"] = new[-1][5] if new else last
        if new or moved:
            state[f"{kind.name}.updated"] = max(mark, *(r[3] for r in (*new, *moved)))
        full = len(new) == self.chunk_rows or sum(len(r[4]) for r in new) >= self.chunk_bytes
        return new, moved, full

    def _recent(self, con: sqlite3.Connection, kind: Kind, state: dict[str, int]) -> list[Row]:
        """Rows of a small table whose ``time_updated`` is recent (all on the first poll)."""
        mark = state.get(f"{kind.name}.updated", 0)
        rows = self._read(con, kind, kind.where("time_updated >= ?"), (mark - self.lookback_ms,))
        if rows:
            state[f"{kind.name}.updated"] = max(mark, max(r[3] for r in rows))
        return rows

    def _read(
        self, con: sqlite3.Connection, kind: Kind, sql: str, params: Sequence[object], **kw: int
    ) -> list[Row]:
        return fetch(con, kind, sql, params, max_record_bytes=self.max_record_bytes, **kw)

    def _rows_of(
        self, con: sqlite3.Connection, kind: Kind, column: str, ids: list[str]
    ) -> list[Row]:
        return rows_of(con, kind, column, ids, max_record_bytes=self.max_record_bytes)

    def _fetch(
        self,
        con: sqlite3.Connection,
        kind: Kind,
        ids: list[str],
        out: DbPrepared,
        found: dict[str, list[Row]],
    ) -> None:
        rows = self._rows_of(con, kind, kind.key, ids)
        found[kind.name] += rows
        have = {r[0] for r in rows}
        out.deleted[kind.name] += [i for i in dict.fromkeys(ids) if i not in have]

    # -- extract ----------------------------------------------------------------------------

    def _extract(self, kind: Kind, rows: list[Row], out: DbPrepared) -> None:
        spec = SPECS[kind.name]
        rows = _unique(rows)
        texts = [r[4] for r in rows]
        failed: dict[int, str | None] = {}
        for i, record in enumerate(rows):
            if (unread := unreadable(record, self.max_record_bytes)) is not None:
                failed[i], texts[i] = unread, b""
        content = utf8_column(list(texts), list(range(len(rows))), failed)
        batch = pa.table(
            {
                "file_path": pa.nulls(len(rows), pa.string()),
                "key": pa.array([r[0] for r in rows], pa.string()),
                "parent": pa.array([r[1] for r in rows], pa.string()),
                **({"position": pa.array([r[2] for r in rows], pa.int64())} if spec.array else {}),
                "content": content,
            }
        )
        extracted = self._get_extractor().extract(spec, batch)
        for row, message in extracted.bad.items():
            failed.setdefault(row, message)
        messages: dict[str, str] = {}
        for i in sorted(failed):
            key = rows[i][0]
            messages.setdefault(key, failed[i] or diagnose(texts[i], spec, key))
        table = extracted.rows
        if table is not None and messages and spec.array:  # a list is written whole or not
            keep = [s not in messages for s in table.column("session_id").to_pylist()]
            table = table.filter(pa.array(keep))
        if table is not None and table.num_rows:
            out.rows[kind.name] = table
        version = versions(kind, rows)
        for key in dict.fromkeys(r[0] for r in rows):
            if key in messages:
                out.failed[kind.name].append((key, version[key], messages[key]))
            else:
                out.indexed[kind.name].append((key, version[key]))

    def _get_extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = Extractor()
        return self._extractor

    def follow_up(self, prepared: DbPrepared) -> Sequence[str]:
        """The poll key while a backfill has more rows: the next chunk is read while this
        one is written."""
        return prepared.follow

    # -- write ------------------------------------------------------------------------------

    def groupable(self, prepared: DbPrepared) -> bool:
        """Never: a failed write moves the poll cursors back (`_give_back`), which a group
        rolled back after this write returned would not do."""
        return False

    def write(self, p: DbPrepared) -> BatchResult:
        """Write one prepared batch in one transaction. A poll read while an earlier poll's
        write failed is dropped and polled again: its cursors would skip the failed rows."""
        started = time.perf_counter()
        if p.claimed_from is not None and p.generation != self._generation:
            self._give_back(p.claimed_from)
            return BatchResult(0, 0, 0, 0, [self.keys.poll], 0.0, 0.0, 0.0, {})
        try:
            with self.db.changes.claim() as seq, self.db.transaction() as cur:
                for name in KINDS:
                    self._apply(cur, name, p, seq)
                self.tracker.save_state(cur, p.state)
        except BaseException:
            if p.claimed_from is not None:
                self._give_back(p.claimed_from, failed=True)
            raise
        by_type = {k: len(v) for k, v in p.indexed.items() if v}
        return BatchResult(
            indexed=sum(by_type.values()),
            errors=sum(len(v) for v in p.failed.values()),
            deleted=sum(len(v) for v in p.deleted.values()),
            skipped=0,
            requeue=p.requeue,
            read_seconds=p.read_seconds,
            parse_seconds=p.parse_seconds,
            write_seconds=time.perf_counter() - started,
            by_type=by_type,
        )

    def _give_back(self, claimed_from: dict[str, int], *, failed: bool = False) -> None:
        """Move the cursors back to where a poll started, so the next poll reads its rows
        again; after a failed write, polls already read (their rows past this one's) are void."""
        with self._claim_lock:
            if self._claimed is not None:
                for key, value in claimed_from.items():
                    self._claimed[key] = min(self._claimed.get(key, value), value)
            if failed:
                for seen in self._seen.values():
                    seen.clear()
                self._generation += 1

    def _apply(self, cur: duckdb.DuckDBPyConnection, name: str, p: DbPrepared, seq: int) -> None:
        spec = SPECS[name]
        table, key = spec.table.name, spec.table.primary_key[0]
        indexed = [i for i, _ in p.indexed.get(name, ())]
        if indexed:  # the database's row replaces any row of that id, a legacy file's too
            delete_in(cur, table, key, indexed)
        rows = p.rows.get(name)
        if rows is not None:
            self._rows.insert(cur, table, rows, seq)
        gone = p.deleted.get(name, [])
        if gone:  # only rows that came from a database (a legacy file's row has a path)
            cur.execute(
                f"DELETE FROM {table} WHERE file_path IS NULL AND {key} IN (SELECT unnest(?))",
                [gone],
            ).fetchall()
        if indexed or gone:  # an id read again may have no row now (an empty todo list)
            kept = rows.column(key).to_pylist() if rows is not None else []
            note_removed(cur, table, seq, [*indexed, *gone], kept)
        self.tracker.mark_indexed(cur, name, p.indexed.get(name, []))
        self.tracker.mark_failed(cur, name, p.failed.get(name, []))
        self.tracker.remove(cur, name, gone)


def _unique(rows: list[Row]) -> list[Row]:
    """Each record once (read by a poll and by a row key: the last read wins; a todo list
    keeps its items, keyed by position)."""
    return list({(r[0], r[2]): r for r in rows}.values())
