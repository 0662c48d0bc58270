"""End to end with the real OpenCode client: opencode from the npm registry, run offline against a
mock LLM on 127.0.0.1, writes its opencode.db while ``indexer-service run`` follows it; then the
index is compared with the database (every id, cost and token sums, part counts by type).

    python -m e2e.real_opencode [--prompts 5] [--version 1.18.34]   (make e2e)

Needs the npm registry (the ``opencode-linux-x64`` package is fetched once into the cache
folder) and takes about a minute; it is not part of ``make test``. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "indexer-service-e2e"


def opencode_binary(version: str) -> Path:
    """The opencode executable of ``version``, fetched with ``npm pack`` once."""
    folder = CACHE / f"opencode-{version}"
    binary = folder / "package" / "bin" / "opencode"
    if not binary.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "pack", f"opencode-linux-x64@{version}", "--silent"],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        with tarfile.open(next(folder.glob("opencode-linux-x64-*.tgz"))) as tar:
            tar.extractall(folder, filter="data")
        binary.chmod(0o755)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _chat(request: web.Request) -> web.StreamResponse:
    """An OpenAI-compatible streamed answer: a few words, then usage."""
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {
            "id": "mock",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    await resp.write(chunk({"role": "assistant", "content": ""}))
    words = ["Indexed", " by", " a", " mock", " model", " on", " loopback."]
    for word in words:
        await resp.write(chunk({"content": word}))
    usage = {
        "prompt_tokens": 120 + len(body.get("messages", [])),
        "completion_tokens": len(words),
        "total_tokens": 120 + len(words),
    }
    await resp.write(chunk({}, "stop", usage=usage))
    await resp.write(b"data: [DONE]\n\n")
    return resp


def _mock_llm(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


def _config(home: Path, port: int) -> None:
    config = home / "config" / "opencode"
    config.mkdir(parents=True)
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "Mock",
        "options": {"baseURL": f"http://127.0.0.1:{port}/v1", "apiKey": "mock"},
        "models": {"mock-model": {"name": "Mock model"}},
    }
    (config / "opencode.json").write_text(
        json.dumps(
            {
                "provider": {"mock": provider},
                "model": "mock/mock-model",
                "autoupdate": False,
                "share": "disabled",
            }
        )
    )


def compare(opencode_db: Path, index: Path) -> list[str]:
    """Differences between the database and the index (none: an empty list)."""
    problems: list[str] = []
    with (
        sqlite3.connect(f"file:{opencode_db}?mode=ro", uri=True) as src,
        duckdb.connect(str(index), read_only=True) as dst,
    ):
        for table, ours in (
            ("project", "projects"),
            ("session", "sessions"),
            ("message", "messages"),
            ("part", "parts"),
        ):
            theirs = {r[0] for r in src.execute(f"SELECT id FROM {table}")}
            mine = {r[0] for r in dst.execute(f"SELECT id FROM {ours}").fetchall()}
            if theirs != mine:
                problems.append(
                    f"{table}: {len(theirs - mine)} missing, {len(mine - theirs)} extra"
                )
        sums = ("cost", "tokens.input", "tokens.output", "tokens.reasoning", "tokens.cache.read")
        theirs_sums = (
            src.execute(
                "SELECT "
                + ", ".join(f"coalesce(sum(json_extract(data, '$.{f}')), 0)" for f in sums)
                + " FROM message"
            ).fetchone()
            or ()
        )
        mine_sums = (
            dst.execute(
                "SELECT coalesce(sum(cost), 0), coalesce(sum(tokens_input), 0), "
                "coalesce(sum(tokens_output), 0), coalesce(sum(tokens_reasoning), 0), "
                "coalesce(sum(tokens_cache_read), 0) FROM messages"
            ).fetchone()
            or ()
        )
        if [round(float(x), 9) for x in theirs_sums] != [round(float(x), 9) for x in mine_sums]:
            problems.append(f"cost and token sums differ: {theirs_sums} != {mine_sums}")
        theirs_types = dict(
            src.execute("SELECT json_extract(data, '$.type'), count(*) FROM part GROUP BY 1")
        )
        mine_types = dict(dst.execute("SELECT type, count(*) FROM parts GROUP BY 1").fetchall())
        if theirs_types != mine_types:
            problems.append(f"part counts by type differ: {theirs_types} != {mine_types}")
    return problems


def _indexed_parts(index: Path) -> int:
    """Parts in the running service's index, asked through its API."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "indexer_service",
            "query",
            "--db",
            str(index),
            "SELECT count(*) FROM parts",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
    )
    return int(out.stdout.splitlines()[1]) if out.returncode == 0 else -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--version", default="1.18.34")
    args = ap.parse_args()
    binary = opencode_binary(args.version)
    with tempfile.TemporaryDirectory(prefix="indexer-e2e-") as tmp:
        home = Path(tmp)
        port = _free_port()
        _config(home, port)
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_STATE_HOME": str(home / "state"),
        }
        opencode_db = home / "data" / "opencode" / "opencode.db"
        index = home / "index.duckdb"
        project = home / "project"
        project.mkdir()
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        mock = subprocess.Popen(
            [sys.executable, "-c", f"from e2e.real_opencode import _mock_llm; _mock_llm({port})"]
        )
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "indexer_service",
                "run",
                "--opencode-db",
                str(opencode_db),
                "--db",
                str(index),
                "--http-port",
                "0",
                "--log-level",
                "warning",
            ],
            env={k: v for k, v in env.items() if not k.startswith("XDG_DATA")},
        )
        try:
            started = time.monotonic()
            for i in range(args.prompts):
                subprocess.run(
                    [
                        str(binary),
                        "run",
                        f"prompt {i}: say something short",
                        "-m",
                        "mock/mock-model",
                    ],
                    cwd=project,
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
            wrote = time.monotonic() - started
            with sqlite3.connect(f"file:{opencode_db}?mode=ro", uri=True) as con:
                parts = con.execute("SELECT count(*) FROM part").fetchone()[0]
            deadline = time.monotonic() + 30
            while _indexed_parts(index) != parts and time.monotonic() < deadline:
                time.sleep(0.2)
            caught_up = time.monotonic() - started - wrote
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
            mock.terminate()
            mock.wait(timeout=10)
        problems = compare(opencode_db, index)
        with sqlite3.connect(f"file:{opencode_db}?mode=ro", uri=True) as con:
            counts = {
                t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("project", "session", "message", "part")
            }
        print(f"opencode {args.version}: {args.prompts} prompts in {wrote:.1f} s wrote {counts}")
        print(f"index caught up {caught_up:.1f} s after the last prompt")
        for problem in problems:
            print(f"DIFFERENT: {problem}")
        print("index equals the database" if not problems else f"{len(problems)} differences")
        return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
