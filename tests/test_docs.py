"""The documentation's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import TreeFactory

DOCS = Path(__file__).parent.parent / "docs"


def _python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)


def test_api_example_runs(storage_tree: TreeFactory, tmp_path: Path) -> None:
    """docs/api.md's library example indexes a tree, queries it, and shows a refusal."""
    tree = storage_tree(sessions=1)
    script = tmp_path / "example.py"
    script.write_text(_python_blocks(DOCS / "api.md")[0])
    done = subprocess.run(
        [sys.executable, str(script), str(tree.root), str(tmp_path / "ex.duckdb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^tool\s+\d+$", done.stdout, flags=re.M)
    assert "refused:" in done.stdout
