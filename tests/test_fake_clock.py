"""FakeClock: trio-MockClock-style sleepers, deadline order, advance, autojump, sync sleep."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategylab.clock import Clock
from strategylab.testing import FakeClock


async def _sleep_and_log(
    clock: FakeClock, name: str, delays: list[float], log: list[tuple[str, float]]
) -> None:
    for delay in delays:
        await clock.asleep(delay)
        log.append((name, clock.monotonic()))


async def _until_sleeping(clock: FakeClock, count: int) -> None:
    """Yield until ``count`` tasks are suspended in ``asleep`` (bounded)."""
    for _ in range(100):
        if clock.pending_sleepers >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{clock!r}: expected {count} sleepers")


# ---------------------------------------------------------------- reading and moving


def test_is_a_clock() -> None:
    """FakeClock satisfies the Clock protocol."""
    assert isinstance(FakeClock(), Clock)


def test_time_is_start_plus_elapsed() -> None:
    """monotonic() and time() both read start plus the elapsed fake time."""
    clock = FakeClock(start=1_000.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (1_002.5, 1_002.5)


def test_advance_refuses_to_go_backwards() -> None:
    """A negative advance raises ValueError naming the argument and leaves the time alone."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(-1.0)
    assert clock.monotonic() == 0.0


def test_jump_is_advance() -> None:
    """jump, trio's name, moves the clock like advance."""
    clock = FakeClock()
    clock.jump(3.0)
    assert clock.monotonic() == 3.0


def test_sync_sleep_moves_at_once_and_records() -> None:
    """sleep() advances by the delay without blocking and records every delay as given."""
    clock = FakeClock()
    clock.sleep(1.5)
    clock.sleep(-2.0)
    clock.sleep(0.0)
    assert (clock.monotonic(), clock.sleeps) == (1.5, [1.5, -2.0, 0.0])


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sync_sleep_and_advance_refuse_non_finite(value: float) -> None:
    """A NaN or infinite delay is a ValueError, not a clock stuck at inf or NaN."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="seconds"):
        clock.sleep(value)
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(value)


@pytest.mark.parametrize("value", [-1.0, math.nan])
def test_bad_autojump_threshold_is_refused(value: float) -> None:
    """A negative or NaN threshold raises ValueError naming autojump_threshold."""
    with pytest.raises(ValueError, match="autojump_threshold"):
        FakeClock(autojump_threshold=value)


async def test_infinite_threshold_means_never() -> None:
    """autojump_threshold=inf, like None, never jumps: the sleeper waits for advance."""
    clock = FakeClock(autojump_threshold=math.inf)
    task = asyncio.create_task(clock.asleep(1.0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert (task.done(), clock.autojump_threshold) == (False, math.inf)
    clock.advance(1.0)
    await asyncio.wait_for(task, timeout=5.0)


def test_sync_sleep_is_thread_safe() -> None:
    """Concurrent sync sleeps from several threads all count."""
    clock = FakeClock()

    def work() -> None:
        for _ in range(1_000):
            clock.sleep(1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert (clock.monotonic(), len(clock.sleeps)) == (4_000.0, 4_000)


def test_repr_shows_time_sleepers_and_threshold() -> None:
    """The repr names the time, the sleepers, the recorded sleeps and the threshold."""
    clock = FakeClock(start=5.0, autojump_threshold=None)
    assert repr(clock) == "FakeClock(now=5.0, sleepers=0, sleeps=0, autojump_threshold=None)"


# ---------------------------------------------------------------- async sleepers, autojump


async def test_single_sleeper_returns_with_time_moved_by_its_delay() -> None:
    """A lone asleep returns at once, the clock exactly its delay later, the delay recorded."""
    clock = FakeClock(start=100.0)
    started = time.monotonic()
    await clock.asleep(3600.0)
    assert (clock.monotonic(), clock.sleeps) == (3700.0, [3600.0])
    assert time.monotonic() - started < 5.0


async def test_concurrent_sleepers_end_at_the_latest_deadline() -> None:
    """Sleepers of 5 s and 10 s started together leave the clock at 10, not 15."""
    clock = FakeClock()
    async with asyncio.TaskGroup() as group:
        group.create_task(clock.asleep(5.0))
        group.create_task(clock.asleep(10.0))
    assert clock.monotonic() == 10.0


async def test_sleepers_wake_in_deadline_order() -> None:
    """Each sleeper wakes at its own deadline, earliest first, whatever the start order."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []
    async with asyncio.TaskGroup() as group:
        for name, delay in [("c", 7.0), ("a", 2.0), ("b", 4.0)]:
            group.create_task(_sleep_and_log(clock, name, [delay], log))
    assert log == [("a", 2.0), ("b", 4.0), ("c", 7.0)]


async def test_equal_deadlines_wake_in_registration_order() -> None:
    """Ties wake in the order the sleepers registered."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []
    async with asyncio.TaskGroup() as group:
        for name in "xyz":
            group.create_task(_sleep_and_log(clock, name, [3.0], log))
    assert log == [("x", 3.0), ("y", 3.0), ("z", 3.0)]


async def test_woken_task_sleeps_again_before_the_next_jump() -> None:
    """A sleeping 5 then 1 alongside B sleeping 10: A wakes at 5 and 6, B at 10."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []
    async with asyncio.TaskGroup() as group:
        group.create_task(_sleep_and_log(clock, "A", [5.0, 1.0], log))
        group.create_task(_sleep_and_log(clock, "B", [10.0], log))
    assert log == [("A", 5.0), ("A", 6.0), ("B", 10.0)]


async def test_sleeper_started_later_counts_from_its_start() -> None:
    """A sleeper registered at t=4 for 3 s wakes at 7, before one registered at 0 for 10 s."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []

    async def late() -> None:
        await clock.asleep(4.0)
        await _sleep_and_log(clock, "late", [3.0], log)

    async with asyncio.TaskGroup() as group:
        group.create_task(_sleep_and_log(clock, "early", [10.0], log))
        group.create_task(late())
    assert log == [("late", 7.0), ("early", 10.0)]


@pytest.mark.parametrize("delay", [0.0, -1.0])
async def test_zero_or_negative_asleep_only_yields(delay: float) -> None:
    """asleep(0) or less lets another task run once and does not move the clock."""
    clock = FakeClock()
    ran: list[bool] = []

    async def other() -> None:
        ran.append(True)

    task = asyncio.create_task(other())
    await clock.asleep(delay)
    assert (ran, clock.monotonic(), clock.sleeps) == ([True], 0.0, [delay])
    await task


async def test_cancelled_sleeper_does_not_move_the_clock() -> None:
    """Cancelling a sleeping task unregisters it; time never reaches its deadline."""
    clock = FakeClock(autojump_threshold=None)
    task = asyncio.create_task(clock.asleep(50.0))
    await _until_sleeping(clock, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (clock.pending_sleepers, clock.next_deadline(), clock.monotonic()) == (0, None, 0.0)


async def test_cancelled_sleeper_does_not_wedge_autojump() -> None:
    """With the earliest sleeper cancelled, autojump goes on to the next one."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []
    doomed = asyncio.create_task(clock.asleep(1.0))
    survivor = asyncio.create_task(_sleep_and_log(clock, "s", [8.0], log))
    await asyncio.sleep(0)
    doomed.cancel()
    await survivor
    assert (log, doomed.cancelled()) == ([("s", 8.0)], True)
    await clock.asleep(2.0)
    assert clock.monotonic() == 10.0


async def test_infinite_sleep_lasts_until_cancelled() -> None:
    """asleep(inf) never wakes by autojump, and its cancellation leaves the clock alone."""
    clock = FakeClock()
    forever = asyncio.create_task(clock.asleep(math.inf))
    await clock.asleep(1.0)
    assert not forever.done()
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert clock.monotonic() == 1.0


async def test_without_autojump_only_advance_wakes_sleepers() -> None:
    """With autojump_threshold=None a sleeper waits until advance reaches its deadline."""
    clock = FakeClock(autojump_threshold=None)
    task = asyncio.create_task(clock.asleep(5.0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    clock.advance(4.0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1.0)
    await asyncio.wait_for(task, timeout=5.0)
    assert clock.monotonic() == 5.0


async def test_advance_wakes_every_reached_sleeper_in_deadline_order() -> None:
    """One advance past several deadlines wakes those sleepers earliest first, not the later one."""
    clock = FakeClock(autojump_threshold=None)
    woken: list[str] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.asleep(delay)
        woken.append(name)

    tasks = [
        asyncio.create_task(sleeper(name, delay))
        for name, delay in [("nine", 9.0), ("three", 3.0), ("six", 6.0), ("twenty", 20.0)]
    ]
    await _until_sleeping(clock, 4)
    clock.advance(10.0)
    await asyncio.wait_for(asyncio.gather(*tasks[:3]), timeout=5.0)
    assert (woken, clock.pending_sleepers, clock.next_deadline()) == (
        ["three", "six", "nine"],
        1,
        20.0,
    )
    tasks[3].cancel()
    await asyncio.gather(tasks[3], return_exceptions=True)


async def test_enabling_autojump_releases_waiting_sleepers() -> None:
    """Setting autojump_threshold from None to 0 lets the waiting sleeper jump."""
    clock = FakeClock(autojump_threshold=None)
    task = asyncio.create_task(clock.asleep(30.0))
    await _until_sleeping(clock, 1)
    clock.autojump_threshold = 0.0
    await asyncio.wait_for(task, timeout=5.0)
    assert clock.monotonic() == 30.0


async def test_positive_threshold_waits_that_long_in_real_time() -> None:
    """A 0.05 s threshold jumps only after 0.05 real seconds without clock activity."""
    clock = FakeClock(autojump_threshold=0.05)
    started = time.monotonic()
    await asyncio.wait_for(clock.asleep(100.0), timeout=5.0)
    assert time.monotonic() - started >= 0.05
    assert clock.monotonic() == 100.0


async def test_sync_sleep_in_the_loop_wakes_reached_sleepers() -> None:
    """A sync sleep that passes a sleeper's deadline wakes it; the time is the sync one."""
    clock = FakeClock(autojump_threshold=None)
    task = asyncio.create_task(clock.asleep(2.0))
    await _until_sleeping(clock, 1)
    clock.sleep(3.0)
    await asyncio.wait_for(task, timeout=5.0)
    assert (clock.monotonic(), clock.sleeps) == (3.0, [2.0, 3.0])


async def test_sync_sleep_from_a_thread_wakes_sleepers_threadsafely() -> None:
    """A sync retry sleeping in a worker thread wakes the loop's sleeper."""
    clock = FakeClock(autojump_threshold=None)
    task = asyncio.create_task(clock.asleep(5.0))
    await _until_sleeping(clock, 1)
    await asyncio.to_thread(clock.sleep, 5.0)
    await asyncio.wait_for(task, timeout=5.0)
    assert clock.monotonic() == 5.0


async def test_sync_sleep_mixed_with_autojump() -> None:
    """A sync sleep of 3 s during a 10 s async sleep does not make the sleeper wake late."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []
    task = asyncio.create_task(_sleep_and_log(clock, "a", [10.0], log))
    await _until_sleeping(clock, 1)
    clock.sleep(3.0)
    await task
    assert log == [("a", 10.0)]


def test_one_clock_serves_several_event_loops() -> None:
    """The same clock works across successive event loops and with none running."""
    clock = FakeClock()
    asyncio.run(clock.asleep(2.0))
    clock.sleep(1.0)
    asyncio.run(clock.asleep(4.0))
    assert clock.monotonic() == 7.0


def test_sleeper_left_in_a_closed_loop_is_forgotten() -> None:
    """A sleeper abandoned in a closed loop neither blocks nor moves later sleeps."""
    clock = FakeClock(autojump_threshold=None)
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(clock.asleep(1.0))
        loop.run_until_complete(asyncio.sleep(0))
        assert clock.pending_sleepers == 1
    finally:
        task.cancel()
        loop.close()
    clock.autojump_threshold = 0.0
    asyncio.run(clock.asleep(5.0))
    assert clock.monotonic() == 5.0


# ---------------------------------------------------------------- properties

_delays = st.floats(min_value=0.001, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(_delays, min_size=1, max_size=12))
def test_random_sleepers_wake_sorted_and_end_at_the_max(delays: list[float]) -> None:
    """Any set of concurrent sleepers wakes in (deadline, start) order, ending at the max."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for index, delay in enumerate(delays):
                group.create_task(_sleep_and_log(clock, str(index), [delay], log))

    asyncio.run(main())
    order = sorted(range(len(delays)), key=lambda i: (delays[i], i))
    assert log == [(str(i), delays[i]) for i in order]
    assert clock.monotonic() == max(delays)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_delays, min_size=1, max_size=4), min_size=1, max_size=5))
def test_random_chains_wake_at_their_cumulative_deadlines(chains: list[list[float]]) -> None:
    """Tasks sleeping in chains each wake at the running sums of their delays."""
    clock = FakeClock()
    log: list[tuple[str, float]] = []

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for index, chain in enumerate(chains):
                group.create_task(_sleep_and_log(clock, str(index), chain, log))

    asyncio.run(main())
    for index, chain in enumerate(chains):
        woke = [at for name, at in log if name == str(index)]
        assert woke == list(itertools.accumulate(chain))
    assert [at for _, at in log] == sorted(at for _, at in log)
    assert clock.monotonic() == max(sum(chain) for chain in chains)
