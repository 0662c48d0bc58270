"""The service's HTTP API on loopback: health, status, Prometheus metrics, read-only SQL.

``GET /healthz`` (no token): 200 while the pipeline runs, 503 with the reason otherwise.
``GET /status``: ``stats()`` plus the latest file errors, as JSON. ``GET /metrics``: Prometheus
text format. ``POST /query`` with ``{"sql": ..., "params": [...] | {...}, "max_rows": n}``:
the rows as JSON (see `query.QueryResult.to_json`); refused or failed queries answer 400,
a query past its time limit 408.

Every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>``; `serve_api` writes a
fresh token at start to a file only the service's user can read (``<db>.token``, mode 0600),
and a discovery file (``<db>.api.json``: host, port, pid) that `client.find_service` reads.

The server is aiohttp's `AppRunner`/`TCPSite`: it runs as one task of the service's task group,
installs no signal handlers, and stops cleanly when that task is cancelled. aiohttp needs
anyio's asyncio backend: under trio, `require_asyncio` (and so `serve_api`) raises `ConfigError`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from anyio.abc import TaskStatus

from indexer_service.errors import ConfigError, QueryError, QueryFailed, QueryRefused, QueryTimeout
from indexer_service.http.discovery import discovery_path, remove_if_ours, token_path, write_private
from indexer_service.http.metrics import CONTENT_TYPE, Metrics
from indexer_service.read.query import Params, QueryResult, jsonable
from indexer_service.reports.status import RECENT_ERRORS_SQL
from indexer_service.stats import ServiceStats

__all__ = ["ServedService", "is_loopback", "require_asyncio", "serve_api"]

log = structlog.get_logger(__name__)

_SHUTDOWN_GRACE_S = 2.0
"""Seconds in-flight requests get to finish when the API stops (queries are interrupted)."""


class ServedService(Protocol):
    """What the API needs from the service (`IndexerService` provides it)."""

    @property
    def metrics(self) -> Metrics: ...

    def stats(self) -> ServiceStats: ...

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): healthy while the pipeline runs."""
        ...

    async def query(
        self, sql: str, params: Params = None, *, max_rows: int | None = None
    ) -> QueryResult: ...


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; other names do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_asyncio() -> None:
    """Raise `ConfigError` unless an asyncio event loop runs in this thread: aiohttp, which
    serves the API, runs on nothing else (not on anyio's trio backend)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "http_enabled: the HTTP API (aiohttp) needs anyio's asyncio backend, and this runs "
            "on another event loop (trio); run it under asyncio, or set http_enabled=False "
            "(INDEXER_HTTP_ENABLED=false)"
        ) from None


def _dumps(data: Any) -> str:
    return json.dumps(data, default=jsonable)


def _error(status: int, error: str, reason: str, **headers: str) -> web.Response:
    body = {"error": error, "reason": reason}
    return web.json_response(body, status=status, dumps=_dumps, headers=headers or None)


def _auth_middleware(token: str, token_file: Path) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(
                401,
                "unauthorized",
                f"send 'Authorization: Bearer <token>'; the token is in {token_file}",
                **{"WWW-Authenticate": 'Bearer realm="indexer-service"'},
            )
        if not hmac.compare_digest(given.strip().encode(), expected):
            log.warning("api_bad_token", remote=request.remote, path=request.path)
            return _error(403, "forbidden", "wrong token")
        return await handler(request)

    return auth


class _Handlers:
    def __init__(self, service: ServedService) -> None:
        self.service = service

    async def healthz(self, request: web.Request) -> web.Response:
        ok, reason = self.service.health()
        body = {"status": "ok" if ok else "unavailable", "reason": reason}
        return web.json_response(body, status=200 if ok else 503)

    async def status(self, request: web.Request) -> web.Response:
        data = dict(self.service.stats())
        try:
            result = await self.service.query(RECENT_ERRORS_SQL, {"n": 10})
            data["recent_errors"] = [dict(zip(result.columns, r, strict=True)) for r in result.rows]
        except QueryError as exc:
            data["recent_errors"] = None
            data["recent_errors_unavailable"] = exc.reason
        return web.json_response(data, dumps=_dumps)

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.service.metrics.render(self.service.stats())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def query(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "bad_request", 'the body must be JSON: {"sql": "SELECT ..."}')
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            return _error(400, "bad_request", 'the body must be a JSON object with "sql"')
        params, max_rows = body.get("params"), body.get("max_rows")
        if params is not None and not isinstance(params, list | dict):
            return _error(400, "bad_request", '"params" must be a list or an object')
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 0):
            return _error(400, "bad_request", '"max_rows" must be a non-negative integer')
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await self.service.query(body["sql"], params, max_rows=max_rows)
        except QueryError as exc:
            outcome, status = _OUTCOMES[type(exc)]
            log.info("query_rejected", outcome=outcome, reason=exc.reason, remote=request.remote)
            return _error(status, outcome, exc.reason)
        finally:
            self.service.metrics.query_done(outcome, time.perf_counter() - started)
        log.debug("query_answered", rows=len(result.rows), ms=round(result.elapsed_s * 1000, 1))
        return web.json_response(result.to_json(), dumps=_dumps)


_OUTCOMES: dict[type[QueryError], tuple[str, int]] = {
    QueryError: ("failed", 400),
    QueryRefused: ("refused", 400),
    QueryFailed: ("failed", 400),
    QueryTimeout: ("timeout", 408),
}


def build_app(service: ServedService, token: str, token_file: Path) -> web.Application:
    """The aiohttp application (routes and the token check), not yet listening."""
    app = web.Application(middlewares=[_auth_middleware(token, token_file)])
    h = _Handlers(service)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/status", h.status)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_post("/query", h.query)
    return app


async def serve_api(
    service: ServedService,
    *,
    db_path: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allow_remote: bool = False,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; ``task_status.started(port)`` once listening.

    ``port=0`` picks a free port. ``token=None`` generates one. Binding to a non-loopback
    ``host`` raises `ConfigError` unless ``allow_remote`` (then a warning is logged: the token
    travels in clear over plain HTTP), and under trio (see `require_asyncio`).
    """
    require_asyncio()
    if not is_loopback(host):
        if not allow_remote:
            raise ConfigError(
                f"http_host {host!r} is not a loopback address; set http_allow_remote to "
                "serve the API to other machines"
            )
        log.warning("api_remote_bind", host=host, risk="plain HTTP: the token is sent in clear")
    token = token or secrets.token_urlsafe(32)
    token_file, discovery = token_path(db_path), discovery_path(db_path)
    db = str(discovery.with_name(discovery.name.removesuffix(".api.json")))
    runner = web.AppRunner(
        build_app(service, token, token_file),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    written: dict[Path, bytes] = {}
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(f"cannot serve the API on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0][1]
        info = {"host": host, "port": bound, "pid": os.getpid(), "db": db}
        written[token_file] = token.encode() + b"\n"
        written[discovery] = json.dumps({**info, "started_at": time.time()}).encode()
        for path, content in written.items():  # the token first: discovery means "usable"
            await anyio.to_thread.run_sync(write_private, path, content)
        log.info("api_started", host=host, port=bound, discovery=str(discovery))
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            for path, content in reversed(written.items()):
                await anyio.to_thread.run_sync(remove_if_ours, path, content)
            await runner.cleanup()
            log.info("api_stopped")
