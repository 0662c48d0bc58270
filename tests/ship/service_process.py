"""`indexer-service run` in a child process, its JSON log lines read as they come: a test waits
for an event, SIGKILLs or stops the process, and reads every line it wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

from indexer_service.http.client import ServiceClient, find_service

_WITH_WINDOW = (
    "import sys, indexer_service.ship.sink as sink; sink.WINDOW_ROWS = int(sys.argv.pop(1)); "
    "import indexer_service.store.group as group; group.GROUP_FILES = 1; "
    "from indexer_service.cli.main import main; raise SystemExit(main(sys.argv[1:]))"
)
"""The command line with the sink's windows made smaller, and a transaction a batch (no write
groups): a small tree then takes as many windows to ship as a large index does with the real
sizes."""


class ServiceProcess:
    """``indexer-service run ARGS`` (JSON logs at info) with the environment ``env`` added;
    with ``window_rows``, the sink ships windows of that many changes at most."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        window_rows: int | None = None,
    ) -> None:
        start = [sys.executable, "-m", "indexer_service"]
        if window_rows is not None:
            start = [sys.executable, "-c", _WITH_WINDOW, str(window_rows)]
        self.proc = subprocess.Popen(
            [*start, "run", *args, "--log-format", "json", "--log-level", "info"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every log line of event ``name`` so far, parsed."""
        with self._changed:
            lines = list(self.lines)
        return [e for line in lines if (e := _parse(line)) and e.get("event") == name]

    def wait_for(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The first line of event ``name``, once logged (AssertionError if the process ends
        or ``timeout`` passes first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (found := self.events(name)):
                left = deadline - time.monotonic()
                assert left > 0 and self._reader.is_alive(), f"no {name}:\n{''.join(self.lines)}"
                self._changed.wait(left)
        return found[0]

    def client(self, db: Path) -> ServiceClient:
        """A client of the process's HTTP API (once ``api_started`` was logged)."""
        self.wait_for("api_started")
        client = find_service(db)
        assert client is not None
        return client

    def kill(self) -> None:
        """kill -9, and wait for the process to be gone."""
        self.proc.send_signal(signal.SIGKILL)
        self._ended(self.proc.wait(timeout=30))

    def stop(self) -> int:
        """SIGTERM; the exit code once it ended."""
        self.proc.send_signal(signal.SIGTERM)
        return self._ended(self.proc.wait(timeout=60))

    def _ended(self, code: int) -> int:
        self._reader.join(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        """A process a failed test left running is killed."""
        if self.proc.poll() is None:
            self.kill()
        elif self.proc.stderr is not None and not self.proc.stderr.closed:
            self._ended(self.proc.returncode)

    @property
    def text(self) -> str:
        """Everything the process wrote to stderr so far."""
        with self._changed:
            return "".join(self.lines)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def until(cond: Callable[[], bool], timeout: float = 60, what: str = "the condition") -> None:
    """Return once ``cond()`` holds, checked every 20 ms (AssertionError after ``timeout``):
    for what another process does, which sends no event."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
