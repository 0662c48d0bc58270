"""The package's structure, read from its source with ``ast``: no import cycle, leaves that stay
leaves, sources reached only through the service and the CLI, small documented modules, and
asyncio needed by the HTTP server alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "indexer_service"
NAME = PACKAGE.name
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> Iterator[str]:
    """The package's modules that ``path`` imports, at any depth (lazy imports count too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != NAME:
                continue
            while name not in MODULES:  # `from mod import thing`: the module itself
                name = name.rpartition(".")[0]
            yield name


GRAPH = {
    module: {dep for dep in _imports(path) if dep != module} - {NAME}
    for module, path in MODULES.items()
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_walk_sees_the_package() -> None:
    """The graph has the modules and the edges it is about (a broken walk would pass all)."""
    assert f"{NAME}.service" in GRAPH and f"{NAME}.sources.json_tree.loader" in GRAPH
    assert f"{NAME}.sources.json_tree" in GRAPH[f"{NAME}.service"]
    assert f"{NAME}.store.database" in GRAPH[f"{NAME}.pool"]


def test_no_import_cycle() -> None:
    """No module imports itself through any chain of imports."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(GRAPH[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


@pytest.mark.parametrize(
    ("leaf", "allowed"),
    [
        ("errors", set()),
        ("model", set()),
        ("backoff", set()),
        ("threads", set()),
        ("events", set()),
        ("stats", set()),
        ("limits", {"errors"}),
        ("settings", {"errors", "limits"}),
    ],
)
def test_leaves_import_nothing_above_them(leaf: str, allowed: set[str]) -> None:
    """Settings, errors and the values passed between stages import nothing of the package
    but what is named here."""
    assert GRAPH[f"{NAME}.{leaf}"] == {f"{NAME}.{name}" for name in allowed}


@pytest.mark.parametrize(
    ("guarded", "users"),
    [
        ("sources", ("service", "cli")),
        ("demo", ("cli",)),
        ("cli", ("__main__",)),
    ],
)
def test_packages_are_imported_only_from_above(guarded: str, users: tuple[str, ...]) -> None:
    """A source is picked only by the service and the CLI (the shared stages never know which
    source fed them); the demo and its generator only by the CLI."""
    prefix = f"{NAME}.{guarded}"
    allowed = [prefix, *(f"{NAME}.{user}" for user in users)]
    offenders = sorted(
        f"{module} -> {dep}"
        for module, deps in GRAPH.items()
        for dep in deps
        if _within(dep, prefix) and not any(_within(module, a) for a in allowed)
    )
    assert offenders == []


def test_modules_are_small_and_say_what_they_do() -> None:
    """Every module stays under the size limit and opens with a docstring."""
    too_long = {
        m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}
    undocumented = [
        m
        for m, p in MODULES.items()
        if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert undocumented == []


def _top_level_imports(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_http_server_is_tied_to_asyncio() -> None:
    """The pipeline runs on any anyio backend: asyncio, and aiohttp built on it, are imported by
    the HTTP server alone (which refuses to start under trio)."""
    tied = {m for m, p in MODULES.items() if _top_level_imports(p) & {"asyncio", "aiohttp"}}
    assert tied == {f"{NAME}.http.server"}


def test_the_cli_and_the_package_load_without_the_http_server() -> None:
    """aiohttp (a quarter of a second to import) is loaded only when the HTTP API is enabled,
    psycopg only when a team database is named: ``index``, ``status`` and ``query`` start
    without either."""
    code = (
        "import sys, indexer_service, indexer_service.cli.main; "
        "print([m for m in ('aiohttp', 'psycopg') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
