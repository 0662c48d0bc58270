"""A real PostgreSQL server for the tests, from the binaries in the ``pgserver`` wheel.

`make test` needs only python3 and make: the dev extra installs ``pgserver``, whose wheel
carries PostgreSQL's server binaries, and `PgServer` runs its ``initdb`` and ``pg_ctl`` on a
data folder in /tmp. PostgreSQL refuses to run as root, so as root the server runs as
``nobody``. Measured here: initdb 0.54-0.59 s and a start 0.11 s (Debian's PostgreSQL 15 from
apt: initdb 0.75-0.83 s, start 0.12 s, and installing it needs root).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PASSWORD", "PgServer", "binaries"]

PASSWORD = "s3cret-Pa55"
"""The superuser's password: tests look for it in logs and output."""


def binaries() -> Path:
    """The folder of the server binaries the ``pgserver`` wheel installed (found without
    importing the package, whose import has side effects)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dev extra's pgserver is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


class PgServer:
    """One PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port; password
    authentication over TCP (scram-sha-256) for the superuser ``postgres``."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        """Whether commits wait for the disk (benchmarks); the tests' server does not."""
        self.root = Path(tempfile.mkdtemp(prefix="indexer-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user = "nobody" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._user is not None:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(binaries() / tool), *args],
            check=True,
            capture_output=True,
            user=self._user,
            cwd=self.root,
        )

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        """A connection string for ``database`` over TCP."""
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=50"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop it: open connections are ended (``-m fast``)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would; a later `start` recovers."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        for proc in [pid, *_children(pid)]:
            try:
                os.kill(proc, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The dead postmaster may linger as a zombie (nothing reaps it in a container), which
        # would make its lock files look held: they are removed, as recovery after a crash does.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.root.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)

    def running(self) -> bool:
        """Whether ``pg_ctl status`` finds the server running."""
        result = subprocess.run(
            [str(binaries() / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            user=self._user,
            cwd=self.root,
        )
        return result.returncode == 0

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
