"""JsonTreeSource: OpenCode's legacy storage tree (one JSON file per record) as a `Source`.

Keys are absolute file paths. The watcher reports changed files, the reconciler lists the tree
and compares it with ``file_index`` (the source's progress: one row per file, written in the
same transaction as the file's rows), and the loader reads, extracts and writes batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from indexer_service.model import BatchResult, Emit, ScanReport
from indexer_service.settings import Settings
from indexer_service.sources.json_tree.file_index import FileTracker
from indexer_service.sources.json_tree.loader import Loader, Prepared
from indexer_service.sources.json_tree.reconciler import Reconciler
from indexer_service.sources.json_tree.sharded import child_min_files
from indexer_service.sources.json_tree.watcher import StorageWatcher, inotify_watch_limit
from indexer_service.stats import TreeSourceStats
from indexer_service.store.database import Database

__all__ = ["JsonTreeSource"]


class JsonTreeSource:
    """The storage tree at ``settings.storage_path``, indexed into ``db``; keys go to ``emit``.

    ``on_scan_done`` hears of every reconciliation pass (the service's metrics).
    """

    name = "json_tree"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        emit: Emit,
        *,
        on_scan_done: Callable[[ScanReport], None] | None = None,
        defer_to_databases: bool = False,
    ) -> None:
        root = settings.storage_path
        if root is None:
            raise ValueError("JsonTreeSource needs settings.storage_path")
        self.root = root
        self._prefix = str(root).rstrip("/") + "/"
        self.tracker = FileTracker(db)
        self.loader = Loader(
            db,
            self.tracker,
            root,
            max_file_bytes=settings.max_file_bytes,
            defer_to_databases=defer_to_databases,
        )
        self.reconciler = Reconciler(
            root,
            db,
            interval_seconds=settings.reconcile_interval,
            full_scan_every=settings.full_scan_every,
            on_missing_files=emit,
            on_deleted_files=emit,
            on_scan_done=self._scan_done,
            shard_min_files=child_min_files(settings.listing_process),
        )
        self.watcher = StorageWatcher(root, emit)
        self._watching = settings.watch
        self._on_scan_done = on_scan_done

    def owns(self, key: str) -> bool:
        """Whether ``key`` is a path under this tree."""
        return key.startswith(self._prefix)

    def health(self) -> str | None:
        """Why the storage root is unavailable at the latest pass (missing, unreadable, or an
        empty mount point while the index has its rows), or None."""
        reason = self.reconciler.unavailable
        if reason is None:
            return None
        return f"storage {self.root}: source unavailable: {reason}; the index keeps its rows"

    # -- change notifications and reconciliation ---------------------------------------------

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the tree with the file watcher."""
        await self.watcher.run(task_status=task_status)

    async def scan(self, *, full: bool | None = None) -> ScanReport:
        """One reconciliation pass now (see `Reconciler.scan_now`)."""
        await self.reconciler.scan_now(full=full)
        assert self.reconciler.last_report is not None
        return self.reconciler.last_report

    async def reconcile(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The periodic passes, every ``reconcile_interval`` seconds."""
        await self.reconciler.run(task_status=task_status)

    async def _scan_done(self, report: ScanReport) -> None:
        if self._watching:  # the tree may have grown past the watch limit since
            limit = await anyio.to_thread.run_sync(inotify_watch_limit)
            self.watcher.check_watch_limit(self.reconciler.get_stats()["dirs_known"], limit)
        if self._on_scan_done is not None:
            self._on_scan_done(report)

    # -- loading ------------------------------------------------------------------------------

    async def warm(self, keys: Sequence[str]) -> int:
        return await self.loader.warm(keys)

    def prepare(self, keys: Sequence[str]) -> Prepared:
        return self.loader.prepare(keys)

    def follow_up(self, prepared: Prepared) -> Sequence[str]:
        return self.loader.follow_up(prepared)

    def write(self, prepared: Prepared) -> BatchResult:
        return self.loader.write(prepared)

    def groupable(self, prepared: Prepared) -> bool:
        return self.loader.groupable(prepared)

    # -- state ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """``{file type: {status: files}}`` from ``file_index``."""
        return self.tracker.counts_by_type()

    def get_stats(self) -> TreeSourceStats:
        """The reconciler's and the watcher's counters."""
        return TreeSourceStats(
            reconciler=self.reconciler.get_stats(), watcher=self.watcher.get_stats()
        )

    def close(self) -> None:
        """Stop the listing child process and free the extraction database."""
        self.reconciler.close()
        self.loader.close()
