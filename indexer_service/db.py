"""The DuckDB database file: open, migrate, per-thread cursors, transactions, checkpoint, close.

DuckDB lets one process hold a database file read-write; inside that process every thread must
use its own cursor. `Database` owns the one connection and hands each thread its cursor.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import duckdb
import structlog

from .errors import DatabaseError, DatabaseLockedError, SchemaVersionError
from .schema import ALL_TABLES, DROPPED_INDEXES, SCHEMA_VERSION, Table
from .views import apply_views

log = structlog.get_logger(__name__)

_PID_RE = re.compile(r"\(PID (\d+)\)")


def default_db_path() -> Path:
    """The platform's per-user data directory, e.g. ``~/.local/share/indexer-service/index.duckdb``."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "indexer-service" / "index.duckdb"


class Database:
    """Owner of one DuckDB database file.

    Use as a context manager (``with Database(path) as db:``) or call `open()` and `close()`.
    Opening creates parent directories, applies the schema and runs migrations; opening an
    up-to-date database again changes nothing.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, tables: Sequence[Table] = ()
    ) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self._tables = tuple(ALL_TABLES) + tuple(t for t in tables if t not in ALL_TABLES)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()
        self.schema_version = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> Self:
        """Open the file (creating it and its directory if needed) and bring the schema up to date."""
        if self._con is not None:
            return self
        if not self.read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(self.path, f"cannot create directory: {exc.strerror}") from exc
        elif not self.path.exists():
            raise DatabaseError(self.path, "no such file")
        try:
            self._con = duckdb.connect(
                str(self.path),
                read_only=self.read_only,
                # the service reads only its own file: no file, network or extension access
                # (read-only queries rely on it; storage, WAL and temp spill are unaffected)
                # DuckDB's 16 MB default checkpoints (rewriting open row groups) every few batches
                # of large raw documents; 256 MB cuts writer CPU by ~40% at bulk load, at the
                # price of a longer WAL replay after a crash.
                config={"enable_external_access": False, "checkpoint_threshold": "256MB"},
            )
        except duckdb.Error as exc:
            raise _open_error(self.path, exc) from exc
        try:
            if self.read_only:
                self.schema_version = self._read_version(self._con)
            else:
                self._migrate()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close every cursor and the connection; safe to call twice."""
        with self._lock:
            cursors, self._cursors = self._cursors, []
            con, self._con = self._con, None
        for cur in cursors:
            _close_when_idle(cur)
        if con is not None:
            _close_when_idle(con)
        self._local = threading.local()

    def reopen(self) -> None:
        """Close and open the file again: after a fatal error (e.g. a checkpoint that failed on
        a full disk) DuckDB refuses every statement until the database is restarted, and
        opening it again replays the WAL, so every committed transaction is kept."""
        self.close()
        self.open()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._con is not None

    # -- use ---------------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's cursor (created on first use, closed by `close()`)."""
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                if self._con is None:
                    raise DatabaseError(self.path, "database is not open")
                cur = self._con.cursor()
                self._cursors.append(cur)
            self._local.cursor = cur
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run a block in one transaction on this thread's cursor; nested blocks join the outer one."""
        cur = self.cursor()
        depth: int = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            if depth:
                yield cur
                return
            cur.begin()
            try:
                yield cur
            except BaseException:
                cur.rollback()
                raise
            cur.commit()
        finally:
            self._local.depth = depth

    def checkpoint(self) -> None:
        """Write the WAL into the database file (waits for running transactions)."""
        self.cursor().execute("FORCE CHECKPOINT")

    # -- schema ------------------------------------------------------------------------------

    @staticmethod
    def _read_version(con: duckdb.DuckDBPyConnection) -> int:
        has_meta = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_meta'"
        ).fetchall()
        if not has_meta[0][0]:
            has_fi = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'file_index'"
            ).fetchall()
            return 1 if has_fi[0][0] else 0
        row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchall()
        return int(row[0][0]) if row else 0

    def _migrate(self) -> None:
        assert self._con is not None
        con = self._con
        found = self._read_version(con)
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                self.path,
                f"schema version {found} is newer than this indexer-service supports "
                f"({SCHEMA_VERSION}); upgrade indexer-service",
            )
        changed = self._migrate_columns(con)
        changed = apply_views(con) or changed  # after the tables they read
        if found != SCHEMA_VERSION or changed:
            con.execute(
                "INSERT OR REPLACE INTO schema_meta VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )
            # WAL replay of DDL has known DuckDB bugs; make every schema change durable at once.
            con.execute("CHECKPOINT")
            log.info("schema_migrated", db=str(self.path), from_version=found, to=SCHEMA_VERSION)
        self.schema_version = SCHEMA_VERSION

    def _migrate_columns(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Create missing tables, columns and indexes; return whether anything was added."""
        before = _schema_fingerprint(con)
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR)"
        )
        for table in self._tables:
            con.execute(table.create_sql())
            for col in table.columns:
                if col.name in table.primary_key:
                    continue
                # DuckDB cannot add a NOT NULL column to an existing table; the constraint holds
                # for tables created with it, and columns added later are declared nullable.
                ctype = col.type.replace(" NOT NULL", "")
                con.execute(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {col.name} {ctype}")
            for name, cols in table.indexes:
                con.execute(
                    f"CREATE INDEX IF NOT EXISTS {name} ON {table.name} ({', '.join(cols)})"
                )
        for name in DROPPED_INDEXES:
            con.execute(f"DROP INDEX IF EXISTS {name}")
        return _schema_fingerprint(con) != before


LOOKUP_MAX_KEYS = 256
"""`one_of` names up to this many keys one by one, so DuckDB looks them up in an index."""


def one_of(column: str, keys: Sequence[object]) -> tuple[str, list[object]]:
    """A condition ``column`` is one of ``keys``, and its positional parameters.

    DuckDB uses an ART index (primary key) only for a list of values it can see while planning;
    a subquery such as ``IN (SELECT unnest(?))`` scans the whole table. On a million-row table a
    scan costs 35-70 ms whatever the number of keys, a lookup ~30 us per key (100 keys: 3-5 ms),
    so short lists are spelled out and long ones (bulk batches) are joined against a scan.
    """
    if len(keys) <= LOOKUP_MAX_KEYS:
        return f"{column} IN ({', '.join('?' * len(keys))})", list(keys)
    return f"{column} IN (SELECT unnest(?))", [list(keys)]


def _close_when_idle(con: duckdb.DuckDBPyConnection, timeout_s: float = 5.0) -> None:
    """Close a cursor that another thread may be using: DuckDB 2 refuses (ResourceInUse) while
    a call runs on it instead of waiting, so wait for the call to end (a statement on an
    invalidated database fails at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            con.close()
            return
        except duckdb.ResourceInUseException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _schema_fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[object, ...]:
    cols = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() ORDER BY ALL"
    ).fetchall()
    idx = con.execute("SELECT index_name FROM duckdb_indexes() ORDER BY ALL").fetchall()
    return (tuple(cols), tuple(idx))


def _open_error(path: Path, exc: duckdb.Error) -> DatabaseError:
    msg = str(exc)
    if "Conflicting lock" in msg or "Could not set lock" in msg:
        m = _PID_RE.search(msg)
        return DatabaseLockedError(path, int(m.group(1)) if m else None)
    if "not a valid DuckDB database file" in msg:
        return DatabaseError(
            path, "not a DuckDB database file (corrupt, or another program's file)"
        )
    if "newer" in msg.lower() and "version" in msg.lower():
        return SchemaVersionError(path, msg)
    return DatabaseError(path, msg.removeprefix("IO Error: "))
