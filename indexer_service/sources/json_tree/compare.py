"""The DuckDB queries that compare a listing of the storage tree with ``file_index``.

The listing is registered as ``_reconcile_seen`` (paths relative to the root, as `listing.SCHEMA`)
and ``$prefix`` is the root with a trailing slash. A row's *kind* says why its file is read:
``new`` (no row), ``modified`` (size or mtime differ, `file_index.same_version_sql`),
``retried`` (an error whose retry time has passed), ``pending`` (any other status), or
``deleted`` (a row whose file was not listed).
"""

from __future__ import annotations

from indexer_service.sources.json_tree.file_index import same_version_sql

__all__ = ["DELETED_PARTIAL_SQL", "DUE_SQL", "FULL_SQL", "MISSING_SQL", "ROWS_UP_TO_SQL"]

_SEEN = "(SELECT $prefix || rel AS file_path, mtime, mtime_ns, size FROM _reconcile_seen) s"
_KIND = f"""CASE WHEN f.file_path IS NULL THEN 'new'
         WHEN NOT ({same_version_sql("f", "s")}) THEN 'modified'
         WHEN f.status = 'error' THEN
              CASE WHEN coalesce(f.retry_after, 0) <= $now THEN 'retried' END
         WHEN f.status IS DISTINCT FROM 'indexed' THEN 'pending' END"""
# partial pass: the files stat'ed; full pass: also every row under the root (one join for both)
MISSING_SQL = f"""SELECT file_path, kind FROM (
  SELECT s.file_path, {_KIND} AS kind FROM {_SEEN} LEFT JOIN file_index f USING (file_path)
) WHERE kind IS NOT NULL ORDER BY file_path"""
FULL_SQL = f"""SELECT file_path, kind FROM (
  SELECT coalesce(s.file_path, f.file_path) AS file_path,
         CASE WHEN s.file_path IS NULL THEN 'deleted' ELSE {_KIND} END AS kind
  FROM {_SEEN} FULL OUTER JOIN
       (SELECT * FROM file_index WHERE starts_with(file_path, $prefix)) f USING (file_path)
) WHERE kind IS NOT NULL ORDER BY file_path"""
DELETED_PARTIAL_SQL = """
SELECT g.file_path FROM (SELECT $prefix || rel AS file_path FROM _reconcile_gone) g
SEMI JOIN file_index f ON f.file_path = g.file_path
"""
# how many files the index holds under the root, counted up to $cap
ROWS_UP_TO_SQL = """SELECT count(*) FROM (
  SELECT 1 FROM file_index WHERE starts_with(file_path, $prefix) LIMIT $cap
)"""
# partial pass: the rows read again whatever the listing says (pending, error rows due)
DUE_SQL = """
SELECT file_path FROM file_index
WHERE starts_with(file_path, $prefix) AND coalesce(status, '') <> 'indexed'
  AND NOT (coalesce(status, '') = 'error' AND coalesce(retry_after, 0) > $now)
"""
