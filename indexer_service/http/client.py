"""Find the service that holds a database file, and call its HTTP API (stdlib only).

A running service writes two files next to its database: ``<db>.api.json`` (host, port, pid)
and ``<db>.token`` (mode 0600). `find_service` reads them, checks that the process is alive
and that the port answers ``/healthz``, and returns a `ServiceClient`; ``None`` means no
service serves that database, so it can be opened directly (read-only).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from indexer_service.errors import ApiError, QueryError, QueryFailed, QueryRefused, QueryTimeout
from indexer_service.http.discovery import ServiceInfo, pid_alive, read_discovery, token_path
from indexer_service.read.query import Params, QueryResult

__all__ = ["ServiceClient", "find_service"]

_ERRORS: dict[str, type[QueryError]] = {
    "refused": QueryRefused,
    "failed": QueryFailed,
    "timeout": QueryTimeout,
}


def find_service(db_path: Path, *, timeout_s: float = 60.0) -> ServiceClient | None:
    """A client of the live service that holds ``db_path``, or None if there is none.

    Raises `ApiError` when a service answers but its token file cannot be read (another user).
    """
    info = read_discovery(db_path)
    if info is None or not pid_alive(info.pid):
        return None
    client = ServiceClient(info, token=None, timeout_s=timeout_s)
    if not client.answers():
        return None
    try:
        token = token_path(db_path).read_text().strip()
    except OSError as exc:
        raise ApiError(
            f"a service (pid {info.pid}) serves {db_path} at {info.url}, but its token file "
            f"{token_path(db_path)} cannot be read ({exc.strerror}); run as the service's user"
        ) from None
    return ServiceClient(info, token=token, timeout_s=timeout_s)


class ServiceClient:
    """Calls one service's API; every method blocks (use from a thread in async code)."""

    def __init__(self, info: ServiceInfo, *, token: str | None, timeout_s: float = 60.0) -> None:
        self.info = info
        self.token = token
        self.timeout_s = timeout_s
        # loopback traffic must not go through an http_proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(
        self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.info.url + path, data=data, headers=headers, method=method
        )
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), exc.read()
        except (OSError, urllib.error.URLError) as exc:
            raise ApiError(f"service at {self.info.url} did not answer: {exc}") from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, raw = self._request(method, path, body)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"reason": raw[:200].decode(errors="replace")}
        if status == 200:
            return data
        reason = str(data.get("reason", "")) if isinstance(data, dict) else ""
        error = str(data.get("error", "")) if isinstance(data, dict) else ""
        if error in _ERRORS:
            raise _ERRORS[error](reason)
        if status in (401, 403):
            raise ApiError(f"the service refused the token ({status}): {reason}")
        raise ApiError(f"{method} {path} answered {status}: {reason or error}")

    def answers(self) -> bool:
        """Whether the API answers ``/healthz`` at all (healthy or not)."""
        try:
            status, _ = self._request("GET", "/healthz", timeout_s=2.0)
        except ApiError:
            return False
        return status in (200, 503)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason) from ``/healthz``."""
        status, raw = self._request("GET", "/healthz")
        try:
            reason = str(json.loads(raw).get("reason", ""))
        except (ValueError, AttributeError):
            reason = raw.decode(errors="replace")
        return status == 200, reason

    def status(self) -> dict[str, Any]:
        """The service's ``stats()`` plus ``recent_errors``."""
        data: dict[str, Any] = self._json("GET", "/status")
        return data

    def metrics(self) -> str:
        """The Prometheus text exposition."""
        status, raw = self._request("GET", "/metrics")
        if status != 200:
            raise ApiError(f"GET /metrics answered {status}")
        return raw.decode()

    def query(self, sql: str, params: Params = None, *, max_rows: int | None = None) -> QueryResult:
        """Run a read-only query in the service; raises the same `QueryError`s as in process."""
        body: dict[str, Any] = {"sql": sql}
        if params is not None:
            body["params"] = dict(params) if isinstance(params, Mapping) else list(params)
        if max_rows is not None:
            body["max_rows"] = max_rows
        return QueryResult.from_json(self._json("POST", "/query", body))
