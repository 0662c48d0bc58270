"""DbReconciler: compares every record of OpenCode's database with ``row_index``.

Polls find new and changed rows; only a complete listing finds deleted ones (opencode leaves no
tombstone) and changes a poll cannot see (a row updated long after it was written, a session
rewritten with the same ``time_updated``). A pass lists ``(id, version)`` of every record in
short read transactions, compares it with ``row_index`` in one DuckDB join per kind, and hands on the row keys
of new, changed, deleted and retry-due records. Messages and parts are listed only up to the
rowid the polls have reached: the rest is theirs to read.
"""

from __future__ import annotations

import pyarrow as pa

from indexer_service.gc_pause import gc_paused
from indexer_service.model import SCAN_KINDS
from indexer_service.sources.sqlite.loader import DbLoader
from indexer_service.sources.sqlite.progress import utc
from indexer_service.sources.sqlite.queries import KINDS, Kind, fetch, integer, text, versions
from indexer_service.sources.sqlite.reader import Reader
from indexer_service.store.database import Database

__all__ = ["DbReconciler", "Found"]

_COMPARE = """
SELECT l.id, CASE WHEN r.id IS NULL THEN 'new'
                  WHEN r.version IS DISTINCT FROM l.version THEN 'modified'
                  ELSE 'retried' END AS kind
FROM _listing l LEFT JOIN (
  SELECT id, version, status, retry_after, updated_at FROM row_index
  WHERE source = $source AND kind = $kind
) r USING (id)
WHERE r.id IS NULL
   OR (r.updated_at < $listed AND (r.version IS DISTINCT FROM l.version
       OR (r.status = 'error' AND coalesce(r.retry_after, 0) <= $now)))
"""
_GONE = """
SELECT id FROM row_index r WHERE source = $source AND kind = $kind AND updated_at < $listed
  AND NOT EXISTS (SELECT 1 FROM _listing l WHERE l.id = r.id)
"""
# Rows written since the listing began (``updated_at >= $listed``) were read after it, maybe
# past its end: this pass cannot judge them (the next one does).

Found = dict[str, list[tuple[str, str]]]
"""Kind of finding (new, modified, retried, deleted) -> (record kind, id) pairs."""


class DbReconciler:
    """One pass over a database: `scan` (blocking: a worker thread). It reads through a
    connection of its own (``reader``), so that polls go on while it lists: SQLite's WAL lets
    both read at once."""

    def __init__(self, loader: DbLoader, db: Database, reader: Reader) -> None:
        self.loader = loader
        self.db = db
        self.reader = reader

    def scan(self, now: float) -> Found:
        """Everything out of sync between the database and the index, by finding; the
        connection is closed at the end (a pass comes every 30 s)."""
        claimed = self.loader.claimed()
        try:
            with gc_paused():  # a million (id, version) tuples
                listings = {name: self._listing(kind, claimed) for name, kind in KINDS.items()}
        finally:
            self.reader.close()
        found: Found = {k: [] for k in SCAN_KINDS}
        cur = self.db.cursor()
        source = self.loader.tracker.source
        for name, listing in listings.items():
            cur.register("_listing", listing)
            try:
                params = {"source": source, "kind": name, "now": now, "listed": utc(now)}
                for ident, finding in cur.execute(_COMPARE, params).fetchall():
                    found[finding].append((name, ident))
                del params["now"]
                gone = cur.execute(_GONE, params).fetchall()
                found["deleted"] += [(name, ident) for (ident,) in gone]
            finally:
                cur.unregister("_listing")
        return found

    def _listing(self, kind: Kind, claimed: dict[str, int]) -> pa.Table:
        """``(id, version)`` of every record of ``kind`` (by-rowid kinds: up to the claimed
        rowid, in ranges of `LISTING_ROWS` rowids, each in a snapshot of its own: no read
        transaction holds opencode's checkpoints back for long). A row moved to another range
        meanwhile (deleted and inserted again) may look deleted: its row key is read again,
        which finds it."""
        reader = self.reader
        if not kind.by_rowid:
            with reader.snapshot() as con:
                if kind.name in ("session", "todo"):  # versions: checksums of what is read
                    version = versions(kind, fetch(con, kind, kind.select))
                    return _table(list(version), list(version.values()))
                rows = con.execute(f"SELECT {kind.key}, time_updated FROM {kind.table}").fetchall()
            return _pairs(rows)
        chunks: list[pa.Table] = []
        end = int(claimed.get(f"{kind.name}.rowid", 0))
        sql = f"SELECT {kind.key}, time_updated FROM {kind.table} WHERE rowid > ? AND rowid <= ?"
        for start in range(0, end, LISTING_ROWS):
            with reader.snapshot() as con:
                rows = con.execute(sql, (start, min(start + LISTING_ROWS, end))).fetchall()
            chunks.append(_pairs(rows))
        return pa.concat_tables(chunks) if chunks else _table([], [])


LISTING_ROWS = 100_000
"""Rowids listed per read transaction."""


def _table(ids: list[str], values: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "version": pa.array(values, pa.int64())})


def _pairs(rows: list[tuple[object, object]]) -> pa.Table:
    """``(id, time_updated)`` rows as a table, converted in Arrow (ids are read as bytes: a
    million of them decoded one by one in Python cost more than reading them); a value of an
    unexpected type takes the slow path."""
    try:
        pairs = pa.Table.from_struct_array(pa.array(rows, _PAIR))
        return pairs.set_column(0, "id", pairs.column(0).cast(pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _table([text(r[0]) or "" for r in rows], [integer(r[1]) for r in rows])


_PAIR = pa.struct([("id", pa.binary()), ("version", pa.int64())])
