"""The HTTP side: the API server, its client, discovery files and metrics."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any


def load_server() -> tuple[Callable[[], None], Callable[..., Coroutine[Any, Any, None]]]:
    """The API's start-up check and server (`server.require_asyncio`, `server.serve_api`),
    imported on demand: aiohttp costs a quarter of a second to import, which ``index``,
    ``status`` and hosts without the API never pay."""
    from indexer_service.http.server import require_asyncio, serve_api

    return require_asyncio, serve_api
