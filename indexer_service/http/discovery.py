"""The files a running service leaves next to its database so that clients can find it:
``<db>.api.json`` (host, port, pid) and ``<db>.token`` (mode 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ServiceInfo",
    "discovery_path",
    "pid_alive",
    "read_discovery",
    "remove_if_ours",
    "token_path",
    "write_private",
]


def discovery_path(db_path: Path) -> Path:
    """Where the service serving ``db_path`` says how to reach it."""
    db_path = Path(db_path).expanduser().absolute()
    return db_path.with_name(db_path.name + ".api.json")


def token_path(db_path: Path) -> Path:
    """Where the service serving ``db_path`` keeps its API token (mode 0600)."""
    db_path = Path(db_path).expanduser().absolute()
    return db_path.with_name(db_path.name + ".token")


@dataclass(frozen=True)
class ServiceInfo:
    """The contents of a discovery file."""

    host: str
    port: int
    pid: int
    db: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_discovery(db_path: Path) -> ServiceInfo | None:
    """The discovery file of ``db_path``, or None when absent or unreadable."""
    try:
        data = json.loads(discovery_path(db_path).read_bytes())
        return ServiceInfo(str(data["host"]), int(data["port"]), int(data["pid"]), str(data["db"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable and writable by this user only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old file of that name could have kept wider bits
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_if_ours(path: Path, content: bytes) -> None:
    """Remove a file we wrote unless a newer service replaced it meanwhile."""
    try:
        if path.read_bytes() == content:
            path.unlink()
    except OSError:
        pass
