"""The autouse `_no_blocking_calls` fixture (conftest.py) is live, and blames the right code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from blockbuster import BlockingError

from indexer_service.accumulator import FileBatchAccumulator
from indexer_service.demo.synthetic import TreeSpec, generate_tree


def _asyncio_only() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pytest.skip("blockbuster watches the asyncio event loop only")


async def test_a_blocking_call_from_the_packages_coroutine_fails_the_test() -> None:
    """The package's own coroutine (here `add_many`, through its clock) must not block."""
    _asyncio_only()

    def blocking_clock() -> float:
        time.sleep(0)  # any blocking call made while the package's coroutine runs
        return 0.0

    acc = FileBatchAccumulator(clock=blocking_clock)
    with pytest.raises(BlockingError, match=r"time\.sleep"):
        await acc.add("/storage/part/msg_1/prt_1.json")


async def test_a_test_body_may_block_while_it_plays_opencode(tmp_path: Path) -> None:
    """A test writing files from its own body (through the package's generator too) is the
    writer's side, not the service's: allowed."""
    _asyncio_only()
    tree = generate_tree(tmp_path / "storage", TreeSpec(sessions=1))
    (tmp_path / "note.txt").write_text("written by the test itself")
    assert tree.files > 0
