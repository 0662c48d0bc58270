"""SqliteSource: OpenCode's SQLite database (opencode >= 1.2) as a `Source`.

Keys are ``sqlite:<path>|poll`` (read what changed) and ``sqlite:<path>|<kind>:<id>`` (read one
record again, or delete it). The watcher turns every write to the database or its WAL into a
poll key; the accumulator coalesces them (100 signals or 200 ms), so one poll reads what many
commits changed. A poll that finds no commit since the last one (``PRAGMA data_version``) reads
nothing. Reconciliation lists every record and finds deletions. The connection is closed after
``idle_close_s`` without a read, so opencode can tidy its WAL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from indexer_service.model import SCAN_KINDS, BatchResult, Emit, ScanReport
from indexer_service.settings import MAX_FILE_BYTES
from indexer_service.source import every
from indexer_service.sources.sqlite.batch import DbKeys, DbPrepared
from indexer_service.sources.sqlite.loader import DbLoader
from indexer_service.sources.sqlite.progress import RowTracker
from indexer_service.sources.sqlite.reader import DatabaseUnreadable, NotCreatedYet, Reader
from indexer_service.sources.sqlite.reconciler import DbReconciler
from indexer_service.stats import DatabaseSourceStats, scan_counts
from indexer_service.store.database import Database
from indexer_service.threads import run_in_thread
from indexer_service.watching import Changes, follow

__all__ = ["SqliteSource"]

log = structlog.get_logger(__name__)


class SqliteSource:
    """The database at ``path`` (it may not exist yet: it is waited for), indexed into ``db``."""

    def __init__(
        self,
        path: Path,
        db: Database,
        emit: Emit,
        *,
        interval_seconds: float = 30.0,
        poll_rows: int = 10_000,
        max_record_bytes: int = MAX_FILE_BYTES,
        on_scan_done: Callable[[ScanReport], None] | None = None,
        idle_close_s: float = 10.0,
        rearm_seconds: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.name = f"sqlite:{self.path}"
        self.keys = DbKeys(self.name + "|")
        self.reader = Reader(self.path)
        self.tracker = RowTracker(self.name, clock=clock)
        self.loader = DbLoader(
            db,
            self.reader,
            self.keys,
            self.tracker,
            chunk_rows=poll_rows,
            max_record_bytes=max_record_bytes,
        )
        self._lister = Reader(self.path)
        self._reconciler = DbReconciler(self.loader, db, self._lister)
        self._db = db
        self._emit = emit
        self._interval = interval_seconds
        self._on_scan_done = on_scan_done
        self._idle_close_s = idle_close_s
        self._rearm_seconds = rearm_seconds
        self._clock = clock
        self._lock = anyio.Lock()
        self._unavailable: str | None = None
        self._listed: tuple[object, ...] | None = None  # the files as of the last listing
        self._exists = False  # whether the database file was there at the last look
        self._real = self.path  # the file behind the path (a symlink followed), at the last look
        self._identity: tuple[int, int] | None = None  # its (device, inode)
        self._replaced = False  # another file took the path: read anew, a full pass due
        self._stats: dict[str, Any] = {
            "signals": 0, "scans": 0, "listings": 0, "scans_failed": 0, "last_scan_at": None,
            "last_duration_s": 0.0, "last": dict.fromkeys(SCAN_KINDS, 0),
        }  # fmt: skip

    def owns(self, key: str) -> bool:
        """Whether ``key`` is one of this database's keys."""
        return key.startswith(self.keys.prefix)

    def health(self) -> str | None:
        """Why the database cannot be read now (missing, locked, not a database), or None."""
        return self._unavailable

    # -- change notifications -----------------------------------------------------------------

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Emit a poll for every change of the database file or its WAL, until cancelled;
        waits for the database's folder to exist, and closes the connection when idle. A
        symlink is followed: the folder of the file behind it is watched too (SQLite writes
        the WAL there), and the watch moves when the link does. A new file at the path (an
        inode of its own) gets a full pass at once."""
        started = False
        while True:
            if not await anyio.to_thread.run_sync(self.path.parent.is_dir):
                if not started:
                    started = True
                    task_status.started()
                await anyio.sleep(self._rearm_seconds)
                continue
            await anyio.to_thread.run_sync(self._look)
            real = self._real
            folders = tuple(dict.fromkeys((self.path.parent, real.parent)))
            files = {f.with_name(f.name + end) for f in (self.path, real) for end in ("", "-wal")}
            existed = False  # (re)armed: whatever happened while unwatched is polled for

            def on_armed() -> None:
                nonlocal started
                if not started:
                    started = True
                    task_status.started()

            async def handle(changes: Changes, real: Path = real) -> bool:
                nonlocal existed
                folder, exists = await anyio.to_thread.run_sync(self._look)
                if self._replaced:
                    await self.scan()  # lists the new file whole
                elif changes or (exists and not existed):
                    self._stats["signals"] += 1
                    await self._emit([self.keys.poll])
                existed = exists
                if self.reader.is_open and self.reader.idle_for() > self._idle_close_s:
                    await anyio.to_thread.run_sync(self.reader.close)
                return folder and self._real == real  # a link that moved: watched anew

            await follow(
                folders if len(folders) > 1 else folders[0],
                handle,
                on_armed=on_armed,
                watch_filter=lambda _change, p, files=files: Path(p) in files,
                recursive=False,
                debounce=50,
                step=10,
                rust_timeout=int(self._rearm_seconds * 1000),
                yield_on_timeout=True,
                ignore_permission_denied=True,
            )

    # -- reconciliation -----------------------------------------------------------------------

    async def scan(self, *, full: bool | None = None) -> ScanReport:
        """Poll, then list every record and hand on what is out of sync. A periodic pass
        (``full=None``) lists nothing when neither the database nor its WAL changed since the
        last listing: no commit, nothing to find (idle costs two ``stat`` calls)."""
        async with self._lock:
            started = time.perf_counter()
            counts = dict.fromkeys(SCAN_KINDS, 0)
            await self._emit([self.keys.poll])
            polled = await anyio.to_thread.run_sync(self.loader.claimed)
            (_, exists), seen = await anyio.to_thread.run_sync(
                lambda: (self._look(), _fingerprint(self._real))
            )
            if self._replaced:
                self._replaced, full = False, True
                log.warning("opencode_db_replaced", db=str(self.path),
                            action="read anew; a full pass applies the differences")  # fmt: skip
            unchanged = full is None and seen == self._listed and self._unavailable is None
            if exists and polled and not unchanged:  # no poll yet: it is the backfill
                self._stats["listings"] += 1
                try:
                    found = await run_in_thread(
                        lambda: self._reconciler.scan(self._clock()), lambda: None
                    )
                except NotCreatedYet:
                    found = {}
                except DatabaseUnreadable as exc:
                    self._unreadable(str(exc))
                    found = {}
                else:
                    self._readable()
                    # a file changed within the last 2 s may change again without its mtime
                    # moving (one timestamp tick): such a listing is not trusted
                    self._listed = seen if _settled(seen) else None
                for finding, pairs in found.items():
                    counts[finding] = len(pairs)
                    if pairs:
                        await self._emit([self.keys.row(kind, ident) for kind, ident in pairs])
            report = ScanReport(True, time.perf_counter() - started, counts)
            self._stats.update(
                scans=self._stats["scans"] + 1,
                last_scan_at=self._clock(),
                last_duration_s=round(report.duration_s, 4),
                last=counts,
            )
            if any(counts.values()):
                log.info("db_reconcile_done", db=str(self.path), **counts)
            if self._on_scan_done is not None:
                self._on_scan_done(report)
            return report

    async def reconcile(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """A scan every ``interval_seconds`` until cancelled."""
        await every(self._interval, self.scan, on_failure=self._failed, task_status=task_status)

    def _failed(self, exc: Exception) -> None:
        self._stats["scans_failed"] += 1
        log.error("db_reconcile_failed", db=str(self.path), error=repr(exc))

    # -- loading -------------------------------------------------------------------------------

    async def warm(self, keys: Sequence[str]) -> int:
        return 0

    def prepare(self, keys: Sequence[str]) -> DbPrepared:
        """Read ``keys``; an unreadable database gives an empty batch and a health reason."""
        if not self._look()[1]:
            return DbPrepared()
        try:
            prepared = self.loader.prepare(keys)
        except NotCreatedYet:  # opencode's first start: its next write is the next signal
            return DbPrepared()
        except DatabaseUnreadable as exc:
            self._unreadable(str(exc))
            return DbPrepared()
        self._readable()
        return prepared

    def follow_up(self, prepared: DbPrepared) -> Sequence[str]:
        return self.loader.follow_up(prepared)

    def write(self, prepared: DbPrepared) -> BatchResult:
        return self.loader.write(prepared)

    def groupable(self, prepared: DbPrepared) -> bool:
        return self.loader.groupable(prepared)

    # -- state ----------------------------------------------------------------------------------

    def _unreadable(self, reason: str) -> None:
        if reason != self._unavailable:
            log.error("opencode_db_unreadable", db=str(self.path), error=reason,
                      action="retried at the next change or reconciliation")  # fmt: skip
        self._unavailable = reason

    def _readable(self) -> None:
        if self._unavailable is not None:
            log.info("opencode_db_readable", db=str(self.path))
        self._unavailable = None

    def counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {status: rows}}`` of this database, from ``row_index``."""
        return self.tracker.counts(self._db.cursor())

    def get_stats(self) -> DatabaseSourceStats:
        """Polls, reads, reconciliation passes and why the database is unreadable, if it is
        (``exists`` as at the last look: the watcher's or a read's)."""
        s = self._stats
        return DatabaseSourceStats(
            path=str(self.path),
            exists=self._exists,
            unavailable=self._unavailable,
            polls=self.loader.polls,
            polls_skipped=self.loader.polls_skipped,
            last_poll_at=self.loader.last_poll_at,
            busy_retries=self.reader.busy_retries + self._lister.busy_retries,
            longest_read_s=round(max(self.reader.longest_read_s, self._lister.longest_read_s), 4),
            connection_open=self.reader.is_open,
            signals=s["signals"],
            scans=s["scans"],
            listings=s["listings"],
            scans_failed=s["scans_failed"],
            last_scan_at=s["last_scan_at"],
            last_duration_s=s["last_duration_s"],
            last=scan_counts(s["last"]),
        )

    def _look(self) -> tuple[bool, bool]:
        """Whether the database's folder and the database file exist now (blocking: in a
        worker thread); `get_stats` reports the latter. Follows a symlink (`_real`), and
        notices another file at the path by its inode: the connections to the old one are
        closed, and the next scan lists the new one whole."""
        self._real = self.path.resolve()
        try:
            st = self._real.stat()
        except OSError:
            identity = None
        else:
            identity = (st.st_dev, st.st_ino)
        if identity is not None and self._identity not in (None, identity):
            self._replaced = True
            self.reader.close()
            self._lister.close()
        if identity is not None:
            self._identity = identity
        self._exists = identity is not None
        return self.path.parent.is_dir(), self._exists

    def close(self) -> None:
        self.reader.close()
        self._lister.close()
        self.loader.close()


def _fingerprint(path: Path) -> tuple[object, ...]:
    """The database file's and its WAL's (mtime_ns, size): every commit changes one of them."""
    out: list[object] = []
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            st = file.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def _settled(fingerprint: tuple[object, ...], racy_ns: int = 2_000_000_000) -> bool:
    """Whether every file of ``fingerprint`` was last modified more than 2 s ago."""
    now = time.time_ns()
    return all(
        f is None or (isinstance(f, tuple) and now - int(f[0]) > racy_ns) for f in fingerprint
    )
