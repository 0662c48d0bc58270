"""ShardedLister: the reconciler's listing split between this process and a child process.

A full pass costs one ``stat`` per file, ~4 us of mostly kernel time on this VM, plus ~2 us of
Python per file to collect it. A second thread does not help (it fights for the GIL on every
``stat``); a second process does. So once a full pass lists ``min_files`` files or more, the
lister's memory is split in two by `listing.shard_of` (`TreeLister.split`): shard 0 stays here,
shard 1 moves to a child process that lives as long as the lister, and every later pass runs
both at once and merges their `Listing`. When the index already holds that many files (a
restart), the first pass is split from its start: the child lists its half of the tree while
this process lists the other. Small trees (tests, a fresh install) never start it.

The child is a fresh interpreter (``python -c``, not ``multiprocessing``: no fork of a process
running DuckDB threads, no re-import of the host's ``__main__``) in its own session, so a
terminal's SIGINT goes to the parent only. It talks over two pipes with pickled messages, polls
for a cancel every 256 directories, and exits when its pipe closes, so it never outlives the
parent. If it fails (killed, an error, no answer) the pass runs again here over the whole tree,
the failure is logged, and the child is started again only after a later large full pass, at
most ``_MAX_FAILURES`` times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import pyarrow as pa
import structlog

from indexer_service.settings import LISTING_PROCESS_MIN_FILES
from indexer_service.sources.json_tree.lister import TreeLister
from indexer_service.sources.json_tree.listing import (
    CancelFlag,
    ListerState,
    Listing,
    ListingCancelled,
    ScanCancel,
    Scandir,
)

__all__ = ["ShardedLister", "child_min_files"]

log = structlog.get_logger(__name__)

_MAX_FAILURES = 3
_REPLY_TIMEOUT = 600.0  # seconds a child may take for one pass before it counts as hung
_CANCEL_GRACE = 10.0  # seconds a cancelled child has to answer before it is killed


class _ChildFailed(Exception):
    """The child process died, hung or answered with an error."""


class _Always:
    def is_set(self) -> bool:
        return True


_ALWAYS = _Always()


def child_min_files(mode: str, cpus: int | None = None) -> int | None:
    """The files from which a child process lists half of the tree, for a ``listing_process``
    mode: never (None) with ``off`` or, with ``auto``, on one CPU (``cpus``, default the
    machine's); 0 (at once) with ``always``."""
    if mode == "always":
        return 0
    cpus = os.cpu_count() if cpus is None else cpus
    if mode == "off" or (cpus or 1) < 2:
        return None
    return LISTING_PROCESS_MIN_FILES


class ShardedLister:
    """A `TreeLister` that hands half of a large tree to a child process (see the module doc).

    Same interface as `TreeLister` plus `close`, which stops the child; call it when done.
    No child is ever started with ``min_files=None`` or a custom ``scandir`` (the child lists
    with `os.scandir`); `child_min_files` turns the ``listing_process`` setting into ``min_files``.
    """

    def __init__(
        self,
        root: str,
        *,
        scandir: Scandir = os.scandir,
        hot_seconds: float = 900.0,
        racy_seconds: float = 2.0,
        min_files: int | None = 50_000,
    ) -> None:
        self.root = root
        self.min_files = None if scandir is not os.scandir else min_files
        self._scandir = scandir
        self._kw: dict[str, Any] = {"hot_seconds": hot_seconds, "racy_seconds": racy_seconds}
        self._local = TreeLister(root, scandir=scandir, **self._kw)
        self._child: _Child | None = None
        self._child_primed = False
        self._child_counts: tuple[int, int, dict[str, int]] = (0, 0, {})
        self._failures = 0

    @property
    def sharded(self) -> bool:
        """Whether a child process lists half of the tree."""
        return self._child is not None

    @property
    def child_pid(self) -> int | None:
        """The PID of the listing child process, while one runs."""
        return None if self._child is None else self._child.pid

    @property
    def primed(self) -> bool:
        return self._local.primed and (self._child is None or self._child_primed)

    def counts(self) -> tuple[int, int, dict[str, int]]:
        dirs, hot, skipped = self._local.counts()
        theirs = self._child_counts[2]
        both = {k: skipped.get(k, 0) + theirs.get(k, 0) for k in skipped.keys() | theirs.keys()}
        return dirs + self._child_counts[0], hot + self._child_counts[1], both

    def reset(self) -> None:
        self._local.reset()
        self._child_primed = False
        self._child_counts = (0, 0, {})
        if self._child is not None:
            try:
                self._child.send(("reset",))
            except _ChildFailed:
                self.close()

    def stat_files(self, rels: Sequence[str]) -> pa.RecordBatch:
        return self._local.stat_files(rels)

    def confirm_gone(self, rels: Sequence[str], failed: Sequence[str]) -> tuple[list[str], int]:
        return self._local.confirm_gone(rels, failed)

    def close(self) -> None:
        """Stop the child process, if any (the next large full pass starts one again)."""
        child, self._child = self._child, None
        if child is not None:
            child.close()
        self._unshard()

    def scan(
        self,
        *,
        full: bool,
        cancel: CancelFlag | None = None,
        stat: bool = True,
        known_files: int = 0,
    ) -> Listing:
        """One pass over the whole tree, in two processes once it is large (``stat``: see
        `TreeLister.scan`; a pass in two processes always stats). ``known_files``: the files
        the index holds under the root; a pass with nothing remembered to go by (the first
        after a start) is split from its start when they are ``min_files`` or more."""
        cancel = cancel or threading.Event()
        early = known_files > 0 and not self._local.primed  # an empty index: names only, here
        if self._child is None and early and self._large(known_files):
            self._start_child(primed=False)
        if self._child is None:
            listing = self._local.scan(full=full, cancel=cancel, stat=stat)
            files = sum(b.num_rows for b in listing.batches)
            if listing.full and listing.unavailable is None and self._large(files):
                self._start_child(primed=True)
            return listing
        full = full or not self.primed
        try:
            listings = self._scan_both(full, cancel)
        except _ChildFailed as exc:
            self._failed(str(exc), "this pass lists the whole tree in this process")
            self.close()
            return self._local.scan(full=True, cancel=cancel)
        if listings[0].full != listings[1].full:  # one of them saw a new root and reset
            self.reset()
            return self.scan(full=True, cancel=cancel)
        for one in listings:
            if one.unavailable is not None:
                self.reset()
                return one
        return _merge(*listings)

    def _scan_both(self, full: bool, cancel: CancelFlag) -> tuple[Listing, Listing]:
        child = self._child
        assert child is not None
        child.scan(full)
        try:
            mine = self._local.scan(full=full, cancel=cancel)
        except BaseException:
            try:  # keep the pipe in step: the child stops too, and answers
                child.receive(_ALWAYS)
            except (_ChildFailed, ListingCancelled):
                pass
            raise
        reply = child.receive(cancel)
        theirs, self._child_primed, self._child_counts = reply
        return mine, theirs

    def _large(self, files: int) -> bool:
        """Whether a tree of ``files`` files is listed in two processes (a child may start)."""
        least = self.min_files
        return least is not None and files >= least and self._failures < _MAX_FAILURES

    def _start_child(self, *, primed: bool) -> None:
        """Start the child with half of the lister's memory (``primed``: a whole pass's)."""
        (state,) = self._local.split(2)
        try:
            self._child = _Child(self.root, self._kw, state)
        except Exception as exc:  # e.g. no Python executable to start, too many processes
            self._failed(repr(exc), "this process lists the whole tree")
            self._unshard()
            return
        self._child_primed, self._child_counts = primed, (0, 0, {})
        log.info("listing_sharded", dir=self.root, processes=2, pid=self._child.pid)

    def _failed(self, error: str, action: str) -> None:
        self._failures += 1
        log.warning("listing_child_failed", dir=self.root, error=error, action=action)

    def _unshard(self) -> None:
        if self._local.shard != (0, 1):  # half of the memory left with the child
            self._local = TreeLister(self.root, scandir=self._scandir, **self._kw)
        self._child_primed, self._child_counts = False, (0, 0, {})


class _Child:
    """The child process and the parent's ends of its pipes."""

    def __init__(self, root: str, kw: dict[str, Any], state: ListerState) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        code = "from indexer_service.sources.json_tree.sharded import child_main; child_main()"
        # the child imports this package from where this process found it
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(down_r), str(up_w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(down_r, up_w),
                start_new_session=True,
                env=env,
            )
        except BaseException:
            for fd in (down_w, up_r):
                os.close(fd)
            raise
        finally:
            for fd in (down_r, up_w):  # the child's ends: EOF for either side when one goes
                os.close(fd)
        self._down = Connection(down_w, readable=False)
        self._up = Connection(up_r, writable=False)
        self.pid = self._proc.pid
        self._seq = 0
        self._init_error: BaseException | None = None
        # the child takes ~1 s to start; the scan that split the tree does not wait for it
        self._init = threading.Thread(
            target=self._send_init, args=(("init", root, kw, state),), daemon=True
        )
        self._init.start()

    def _send_init(self, msg: tuple[Any, ...]) -> None:
        try:
            self._down.send(msg)
        except BaseException as exc:
            self._init_error = exc

    def send(self, msg: tuple[Any, ...]) -> None:
        self._init.join()
        if self._init_error is not None:
            raise _ChildFailed(f"cannot reach the listing process: {self._init_error!r}")
        try:
            self._down.send(msg)
        except (OSError, ValueError) as exc:
            raise _ChildFailed(f"cannot reach the listing process: {exc!r}") from exc

    def scan(self, full: bool) -> None:
        self._seq += 1
        self.send(("scan", self._seq, full))

    def receive(self, cancel: CancelFlag) -> Any:
        """The answer to the last `scan`; asks the child to stop once ``cancel`` is set (a
        `ScanCancel` set meanwhile wakes this wait; another flag is looked at before it). A
        child that exits closes its end of the pipe, which wakes the wait too."""
        deadline, cancelled = time.monotonic() + _REPLY_TIMEOUT, False
        while True:
            if cancel.is_set() and not cancelled:
                cancelled = True
                self.send(("cancel", self._seq))
                deadline = time.monotonic() + _CANCEL_GRACE
            waiting: list[Connection | int] = [self._up]
            if isinstance(cancel, ScanCancel) and not cancelled:
                waiting.append(cancel.fileno())
            if self._up in wait(waiting, max(0.0, deadline - time.monotonic())):
                break
            if time.monotonic() >= deadline:
                raise _ChildFailed("the listing process did not answer")
        try:
            kind, *rest = self._up.recv()
        except (EOFError, OSError) as exc:
            raise _ChildFailed(f"the listing process exited ({exc!r})") from exc
        if kind == "cancelled":
            raise ListingCancelled
        if kind != "ok":
            raise _ChildFailed(f"the listing process failed: {rest[0]}")
        return tuple(rest)

    def close(self) -> None:
        try:
            self.send(("close",))
        except _ChildFailed:
            pass
        self._down.close()
        self._up.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)


class _PipeCancel:
    """The child's cancel flag: every 256th `is_set` looks for a ``cancel`` of this scan."""

    def __init__(self, conn: Connection, seq: int) -> None:
        self._conn, self._seq, self._n, self._set = conn, seq, 0, False

    def is_set(self) -> bool:
        self._n += 1
        if not self._set and self._n % 256 == 0:
            while self._conn.poll():
                msg = self._conn.recv()
                if msg[0] == "cancel" and msg[1] == self._seq:
                    self._set = True
        return self._set


def child_main() -> None:
    """The child's loop (``argv``: the pipe to read from, the pipe to write to): one answer
    for each scan."""
    down = Connection(int(sys.argv[1]), writable=False)
    up = Connection(int(sys.argv[2]), readable=False)
    lister: TreeLister | None = None
    while True:
        try:
            msg = down.recv()
        except (EOFError, OSError):
            return
        kind = msg[0]
        if kind == "close":
            return
        if kind == "init":
            root, kw, state = msg[1:]
            lister = TreeLister(root, shard=(1, 2), **kw)
            lister.restore(state)
            del state, msg
            continue
        if lister is None or kind not in ("reset", "scan"):
            continue  # a late cancel of a scan already answered
        if kind == "reset":
            lister.reset()
            continue
        reply: tuple[Any, ...]
        try:
            cpu = time.process_time()
            listing = lister.scan(full=msg[2], cancel=_PipeCancel(down, msg[1]))
            listing.child_cpu_s = time.process_time() - cpu
            reply = ("ok", listing, lister.primed, lister.counts())
            del listing
        except ListingCancelled:
            reply = ("cancelled",)
        except Exception as exc:
            reply = ("error", repr(exc))
        try:
            up.send(reply)
        except (OSError, ValueError):
            return
        del reply


def _merge(a: Listing, b: Listing) -> Listing:
    """One listing of the whole tree from the listings of two shards (same kind of pass)."""
    return Listing(
        full=a.full,
        batches=a.batches + b.batches,
        covered=a.covered | b.covered,
        gone=a.gone + b.gone,
        failed=sorted(set(a.failed) | set(b.failed)),
        errors=list(dict.fromkeys(a.errors + b.errors)),
        dirs_listed=a.dirs_listed + b.dirs_listed,
        dirs_checked=a.dirs_checked + b.dirs_checked,
        child_cpu_s=a.child_cpu_s + b.child_cpu_s,
        processes=a.processes + b.processes,
        skipped=a.skipped + b.skipped,
        tops=max(a.tops, b.tops),
    )
