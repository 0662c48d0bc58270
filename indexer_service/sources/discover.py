"""Which of OpenCode's stores to follow: the ones named in the settings, or the ones found.

With neither ``storage_path`` nor ``opencode_db`` set, both are looked for in OpenCode's data
folder ``opencode_dir`` (``~/.local/share/opencode``): the legacy tree ``storage/`` (if it exists)
and the databases ``opencode*.db`` (channel builds use ``opencode-<channel>.db``). When no
database exists yet, ``opencode.db`` is followed anyway: it is picked up once opencode creates
it. Naming either store chooses it alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from indexer_service.errors import ConfigError
from indexer_service.settings import Settings

__all__ = ["Stores", "discover", "find_databases"]

_NOT_DATABASES = ("-wal", "-shm", "-journal")


def find_databases(folder: Path) -> list[Path]:
    """The OpenCode databases in ``folder`` (``opencode*.db``), sorted; none if it is missing."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [
        folder / n
        for n in names
        if n.startswith("opencode") and n.endswith(".db") and not n.endswith(_NOT_DATABASES)
    ]


@dataclass(frozen=True)
class Stores:
    """The stores to follow: a legacy tree (or None) and databases (each may not exist yet)."""

    storage: Path | None
    databases: tuple[Path, ...]
    discovered: bool
    """Whether they were looked for (no store named in the settings)."""

    def existing(self) -> Stores:
        """Only the stores that exist now (for a one-shot sync)."""
        return Stores(
            self.storage if self.storage is not None and self.storage.is_dir() else None,
            tuple(d for d in self.databases if d.is_file()),
            self.discovered,
        )

    def check(self) -> None:
        """Raise `ConfigError` for a store that exists as the wrong kind of file (a missing
        one is waited for)."""
        tree = self.storage
        if tree is not None and tree.exists() and not tree.is_dir():
            raise ConfigError(
                f"storage_path {tree} is not a folder: name OpenCode's storage folder "
                "(.../opencode/storage), or leave it unset to look for OpenCode's stores"
            )
        for db in self.databases:
            if db.is_dir():
                raise ConfigError(
                    f"opencode_db {db} is a folder: name OpenCode's database file "
                    "(.../opencode/opencode.db), or leave it unset to look for it"
                )

    @property
    def empty(self) -> bool:
        return self.storage is None and not self.databases


def discover(settings: Settings) -> Stores:
    """The stores ``settings`` name, or the ones found on this machine when it names none."""
    if settings.storage_path is not None or settings.opencode_db is not None:
        dbs = (settings.opencode_db,) if settings.opencode_db is not None else ()
        return Stores(settings.storage_path, dbs, discovered=False)
    folder = settings.opencode_dir
    tree = folder / "storage"
    databases = find_databases(folder) or [folder / "opencode.db"]
    return Stores(tree if tree.is_dir() else None, tuple(databases), discovered=True)
