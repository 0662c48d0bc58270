"""Tests for the file batch accumulator: the pure core on plain numbers, the shell on a fake clock."""

from __future__ import annotations

import math

import anyio
import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer_service.accumulator import AccumulatorConfig, BatchCore, FileBatchAccumulator
from indexer_service.errors import AccumulatorClosed
from indexer_service.model import Batch


def paths(count: int, prefix: str = "/s") -> list[str]:
    return [f"{prefix}/{i}.json" for i in range(count)]


def config(**overrides: float | int | bool) -> AccumulatorConfig:
    """Small batches and a 250 ms window (binary-exact in floats)."""
    values: dict[str, float | int | bool] = {"window_ms": 250, "max_files": 10}
    values.update(overrides)
    return AccumulatorConfig(**values)  # type: ignore[arg-type]


async def drain(acc: FileBatchAccumulator) -> list[Batch]:
    with anyio.fail_after(5):
        return [batch async for batch in acc]


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"window_ms": 0}, "window_ms"),
        ({"window_ms": -5}, "window_ms"),
        ({"window_ms": math.nan}, "window_ms"),
        ({"max_files": 0}, "max_files"),
        ({"max_pending": 9}, "max_pending"),
        ({"max_coalesced_files": 9}, "max_coalesced_files"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(
    overrides: dict[str, float], field: str
) -> None:
    """An invalid setting raises ValueError whose message names the field."""
    with pytest.raises(ValueError, match=field):
        config(**overrides)


# -- pure core ---------------------------------------------------------------------------------


def test_core_is_due_exactly_one_window_after_the_first_file() -> None:
    """A pending file is not due before window_ms has elapsed and is due from then on."""
    core = BatchCore(config())
    assert core.deadline() is None and not core.due(100.0)
    assert core.add(["/a"], now=10.0) == 0
    assert core.deadline() == 10.25
    assert not core.due(10.125)
    assert core.due(10.25)


def test_core_window_runs_from_the_first_file_so_a_trickle_cannot_postpone_it() -> None:
    """Files arriving every 100 ms do not push the deadline back: it stays first + window."""
    core = BatchCore(config(max_files=1000))
    for i in range(3):
        core.add([f"/t{i}"], now=i * 0.1)
    assert core.deadline() == 0.25
    assert core.due(0.25)
    assert core.seal("timer") == 3


def test_core_seals_at_exactly_max_files() -> None:
    """The batch is sealed by the max_files-th distinct file, not before."""
    core = BatchCore(config())
    assert core.add(paths(9), now=0.0) == 0
    assert core.ready == 0
    assert core.add(["/tenth"], now=1.0) == 1
    batch = core.take()
    assert batch is not None
    assert batch.keys == (*paths(9), "/tenth")
    assert batch.trigger == "size" and batch.first_added == 0.0
    assert core.pending == 0


def test_core_delivers_a_path_reported_fifty_times_once() -> None:
    """Fifty adds of the same path while pending yield one path and 49 dropped duplicates."""
    core = BatchCore(config())
    for i in range(50):
        core.add(["/same"], now=i * 0.001)
    core.seal("force")
    assert core.take() == Batch(("/same",), "force", 0.0)
    assert core.stats["files_added"] == 1
    assert core.stats["duplicates_dropped"] == 49


def test_core_drops_paths_already_in_a_ready_batch_but_not_in_a_taken_one() -> None:
    """A path in a sealed batch not yet taken is dropped; once taken, a re-add is new."""
    core = BatchCore(config())
    core.add(["/a"], now=0.0)
    core.seal("force")
    core.add(["/a"], now=1.0)
    assert core.pending == 0 and core.stats["duplicates_dropped"] == 1
    assert core.take() == Batch(("/a",), "force", 0.0)
    core.add(["/a"], now=2.0)
    assert core.pending == 1


def test_core_coalesces_ready_batches_up_to_the_cap_and_never_over() -> None:
    """A take merges consecutive ready batches while the total stays within max_coalesced_files."""
    core = BatchCore(config(max_coalesced_files=25))
    core.add(paths(50), now=0.0)  # five size batches of ten
    core.add(["/x", "/y", "/z"], now=1.0)
    core.seal("force")  # and one of three
    sizes = []
    while (batch := core.take()) is not None:
        sizes.append((len(batch.keys), batch.merged))
    assert sizes == [(20, 2), (20, 2), (13, 2)]
    assert core.stats["batches_coalesced"] == 3
    assert core.stats["largest_batch"] == 20


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.sampled_from(paths(12)), max_size=15)),
        st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=0.5)),
        st.tuples(st.just("force"), st.none()),
        st.tuples(st.just("take"), st.none()),
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, max_files=st.integers(1, 6), extra=st.integers(0, 12))
def test_core_delivers_each_added_path_exactly_once_per_add_epoch(
    ops: list[tuple[str, object]], max_files: int, extra: int
) -> None:
    """Any interleaving of adds, clock ticks, force flushes, takes and a final stop delivers
    every distinct added path exactly once (again only if re-added after being taken)."""
    core = BatchCore(config(max_files=max_files, max_coalesced_files=max_files + extra))
    now, outstanding = 0.0, set[str]()

    def deliver(batch: Batch) -> None:
        assert len(batch.keys) <= core.config.max_coalesced_files
        assert len(set(batch.keys)) == len(batch.keys)
        assert set(batch.keys) <= outstanding
        outstanding.difference_update(batch.keys)

    for op, arg in ops:
        if op == "add":
            assert isinstance(arg, list)
            core.add(arg, now)
            outstanding.update(arg)
        elif op == "tick":
            assert isinstance(arg, float)
            now += arg
            if core.due(now):
                core.seal("timer")
            deadline = core.deadline()
            assert deadline is None or deadline > now
        elif op == "force":
            core.seal("force")
        elif (batch := core.take()) is not None:
            deliver(batch)
        assert core.pending < max_files
        assert core.pending + core.ready == len(outstanding)
    core.seal("stop")
    while (batch := core.take()) is not None:
        deliver(batch)
    assert not outstanding


# -- async shell ---------------------------------------------------------------------------------


async def test_lone_file_is_emitted_by_the_timer_after_the_window_not_before() -> None:
    """With a fake clock, a single file is not emitted at window/2 and is emitted at window."""
    clock = FakeClock(100.0)
    async with FileBatchAccumulator(config(), clock=clock, sleep=clock.sleep) as acc:
        await acc.add("/a")
        clock.advance(0.125)
        await anyio.wait_all_tasks_blocked()
        assert acc.get_stats()["ready"] == 0
        assert acc.get_stats()["pending"] == 1
        clock.advance(0.125)
        with anyio.fail_after(5):
            batch = await acc.next_batch()
        assert batch == Batch(("/a",), "timer", 100.0)


async def test_trickle_on_the_shell_is_flushed_one_window_after_its_first_file() -> None:
    """Adds during the window join the batch; the timer fires at first file + window."""
    clock = FakeClock()
    async with FileBatchAccumulator(config(), clock=clock, sleep=clock.sleep) as acc:
        for name in ("/a", "/b", "/c"):
            await acc.add(name)
            clock.advance(0.0625)
            await anyio.wait_all_tasks_blocked()
        assert acc.get_stats()["ready"] == 0
        clock.advance(0.0625)
        with anyio.fail_after(5):
            batch = await acc.next_batch()
        assert batch == Batch(("/a", "/b", "/c"), "timer", 0.0)


async def test_full_batch_is_delivered_without_waiting_for_the_window() -> None:
    """max_files distinct files are delivered at once, on a clock that never moves."""
    async with FileBatchAccumulator(config(), clock=FakeClock()) as acc:
        await acc.add_many(paths(10))
        with anyio.fail_after(5):
            batch = await acc.next_batch()
        assert batch is not None and batch.trigger == "size" and len(batch.keys) == 10


async def test_force_flush_emits_pending_files_and_returns_their_count() -> None:
    """force_flush seals pending files into one batch and returns how many; 0 when empty."""
    async with FileBatchAccumulator(config(), clock=FakeClock()) as acc:
        await acc.add_many(["/a", "/b", "/a", "/c"])
        assert await acc.force_flush() == 3
        assert await acc.force_flush() == 0
        assert await acc.next_batch() == Batch(("/a", "/b", "/c"), "force", 0.0)


async def test_stop_flushes_the_remainder_ends_iteration_and_rejects_later_adds() -> None:
    """Leaving the block flushes pending files; iteration ends after them; adds then raise."""
    async with FileBatchAccumulator(config(), clock=FakeClock()) as acc:
        await acc.add_many(["/a", "/b"])
    assert await drain(acc) == [Batch(("/a", "/b"), "stop", 0.0)]
    assert await acc.next_batch() is None
    with pytest.raises(AccumulatorClosed):
        await acc.add("/c")
    with pytest.raises(AccumulatorClosed):
        await acc.add_many(["/c", "/d"])
    await acc.stop()  # idempotent


async def test_stop_without_flush_on_stop_discards_pending_files_and_counts_them() -> None:
    """With flush_on_stop=False the pending files are dropped and counted, ready ones kept."""
    async with FileBatchAccumulator(config(flush_on_stop=False), clock=FakeClock()) as acc:
        await acc.add_many(paths(13))
        await acc.stop()
    assert [len(b.keys) for b in await drain(acc)] == [10]
    assert acc.get_stats()["files_discarded"] == 3


async def test_cancelled_run_closes_the_accumulator_so_consumers_finish() -> None:
    """If the timer task is cancelled, the remainder is flushed and iteration still ends."""
    acc = FileBatchAccumulator(config(), clock=FakeClock())
    async with anyio.create_task_group() as tg:
        await tg.start(acc.run)
        await acc.add("/a")
        tg.cancel_scope.cancel()
    assert await drain(acc) == [Batch(("/a",), "stop", 0.0)]


async def test_eight_producers_adding_ten_thousand_keys_each_deliver_every_key_once() -> None:
    """Concurrent producers under back-pressure lose and duplicate nothing."""
    cfg = config(max_files=100, max_pending=1_000, max_coalesced_files=500)
    acc = FileBatchAccumulator(cfg, clock=FakeClock())
    expected = {t: paths(10_000, prefix=f"/t{t}") for t in range(8)}
    delivered: list[str] = []

    async def consume() -> None:
        async for batch in acc:
            delivered.extend(batch.keys)

    async def produce(producer: int) -> None:
        mine = expected[producer]
        for start in range(0, len(mine), 250):
            await acc.add_many(mine[start : start + 250])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            async with acc, anyio.create_task_group() as producers:
                for producer in expected:
                    producers.start_soon(produce, producer)
    assert len(delivered) == 80_000
    assert set(delivered) == {p for ps in expected.values() for p in ps}


async def test_producers_racing_on_the_same_keys_deliver_each_once() -> None:
    """Eight producers adding the same 5,000 keys while nothing is taken yield each key once."""
    acc = FileBatchAccumulator(config(max_files=100), clock=FakeClock())
    shared = paths(5_000)
    async with acc, anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(acc.add_many, shared)
    delivered = [p for batch in await drain(acc) for p in batch.keys]
    assert sorted(delivered) == sorted(shared)
    assert acc.get_stats()["duplicates_dropped"] == 7 * 5_000


async def test_back_pressure_suspends_an_async_producer_until_a_batch_is_taken() -> None:
    """At max_pending, await add_many() waits; taking a batch releases it; wait time is counted."""
    clock = FakeClock()
    cfg = config(max_pending=20, max_coalesced_files=10)
    finished: list[bool] = []
    async with FileBatchAccumulator(cfg, clock=clock) as acc:

        async def producer() -> None:
            await acc.add_many(["/x", "/y"])
            finished.append(True)

        await acc.add_many(paths(20))
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert not finished
            assert acc.get_stats()["producers_waiting"] == 1
            clock.advance(2.0)
            batch = await acc.next_batch()
            assert batch is not None and len(batch.keys) == 10
        assert finished
        stats = acc.get_stats()
        assert (stats["pending"], stats["ready"], stats["backpressure_wait_s"]) == (2, 10, 2.0)


async def test_stop_releases_a_waiting_producer_with_accumulator_closed() -> None:
    """A producer waiting on back-pressure gets AccumulatorClosed when the accumulator stops."""
    cfg = config(max_pending=10)
    async with FileBatchAccumulator(cfg, clock=FakeClock()) as acc:
        await acc.add_many(paths(10))
        errors: list[BaseException] = []

        async def producer() -> None:
            try:
                await acc.add("/late")
            except AccumulatorClosed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            await acc.stop()
        assert len(errors) == 1


async def test_waiting_batches_are_coalesced_into_one_pull_up_to_the_cap() -> None:
    """When several batches wait for a worker, one pull merges them without exceeding the cap."""
    cfg = config(max_coalesced_files=35)
    async with FileBatchAccumulator(cfg, clock=FakeClock()) as acc:
        await acc.add_many(paths(70))
        first, second = await acc.next_batch(), await acc.next_batch()
    assert first is not None and second is not None
    assert (len(first.keys), first.merged) == (30, 3)
    assert first.keys == tuple(paths(30))
    assert (len(second.keys), second.merged) == (30, 3)
    assert [len(b.keys) for b in await drain(acc)] == [10]


async def test_get_stats_counts_adds_duplicates_triggers_and_coalescing() -> None:
    """get_stats reports per-trigger batches, duplicates, coalescing and current queue sizes."""
    clock = FakeClock()
    async with FileBatchAccumulator(config(max_files=3), clock=clock, sleep=clock.sleep) as acc:
        await acc.add_many(["/a", "/b", "/a", "/c"])  # size batch, one duplicate
        await acc.add_many(["/c", "/d"])  # /c is in a ready batch: dropped
        clock.advance(0.25)
        await anyio.wait_all_tasks_blocked()  # timer seals /d
        batch = await acc.next_batch()
        assert batch is not None and batch.keys == ("/a", "/b", "/c", "/d")
        await acc.add("/e")
        await acc.force_flush()
        await acc.add("/f")
    stats = acc.get_stats()
    assert stats == {
        "files_added": 6,
        "duplicates_dropped": 2,
        "files_flushed": 6,
        "files_discarded": 0,
        "batches_size": 1,
        "batches_timer": 1,
        "batches_force": 1,
        "batches_stop": 1,
        "batches_taken": 1,
        "batches_coalesced": 1,
        "largest_batch": 4,
        "pending": 0,
        "ready": 2,
        "producers_waiting": 0,
        "backpressure_wait_s": 0.0,
    }
