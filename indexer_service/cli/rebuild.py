"""``indexer-service rebuild``: set the index file aside (kept, renamed with the time) and index
OpenCode's stores again into a new one; the way out of a `DatabaseDamagedError`."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

import indexer_service.cli.serve as serve
from indexer_service.errors import DatabaseError
from indexer_service.settings import Settings
from indexer_service.store.database import refuse_if_held
from indexer_service.store.integrity import find_damage

__all__ = ["rebuild", "set_aside"]


def set_aside(db_path: Path, now: datetime | None = None) -> Path | None:
    """Rename the index at ``db_path`` (and its WAL) to ``<name>.damaged-<UTC time>`` in the
    same folder; return the new path, or None if there is no index. Refused with
    `DatabaseLockedError` while a process holds the file."""
    if not db_path.exists():
        return None
    refuse_if_held(db_path)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    aside = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():  # two rebuilds within a second: both files kept
        aside = db_path.with_name(f"{db_path.name}.damaged-{stamp}-{n}")
        n += 1
    try:
        db_path.rename(aside)
        wal = db_path.with_name(db_path.name + ".wal")
        if wal.exists():  # the WAL goes with its file: together they are what was there
            wal.rename(aside.with_name(aside.name + ".wal"))
    except OSError as exc:
        raise DatabaseError(db_path, f"cannot rename it to {aside.name}: {exc.strerror}") from exc
    return aside


async def rebuild(settings: Settings, as_json: bool) -> int:
    """Set the index aside, then sync as ``index`` does; say what was set aside and how long
    the rebuild took. Returns the exit code."""
    started = time.monotonic()
    db_path = settings.db_path
    damage, aside = await anyio.to_thread.run_sync(
        lambda: (find_damage(db_path), set_aside(db_path))
    )
    if aside is None:
        say = f"no index at {db_path}: indexing OpenCode's stores into a new one"
    else:
        state = f"damaged: {damage}" if damage is not None else "it passed the integrity check"
        say = f"set {db_path} aside as {aside.name} ({state}); indexing OpenCode's stores again"
    print(f"indexer-service: {say}", file=sys.stderr, flush=True)
    code = await serve.index(settings, as_json)
    if code == serve.EXIT_OK:
        print(
            f"indexer-service: rebuilt {db_path} in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
    return code
