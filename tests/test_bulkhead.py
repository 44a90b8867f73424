"""Bulkhead: concurrency limit, bounded FIFO queue, cancellation, threads and tasks together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from typing import TYPE_CHECKING

import pytest

from strategylab.errors import BulkheadFullError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

from strategylab.fault_tolerance import Bulkhead

WAIT = 5.0
"""Upper bound for any cross-thread hand-off in these tests; reached only when a test fails."""


def wait_until(predicate: Callable[[], bool]) -> None:
    """Spin (yielding the GIL) until ``predicate()`` holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_concurrent": 0}, ConfigurationError, "max_concurrent"),
        ({"max_concurrent": 2.0}, TypeError, "max_concurrent"),
        ({"max_concurrent": True}, TypeError, "max_concurrent"),
        ({"max_concurrent": 1, "max_waiting": -1}, ConfigurationError, "max_waiting"),
        ({"max_concurrent": 1, "max_waiting": "2"}, TypeError, "max_waiting"),
        ({"max_concurrent": 1, "max_wait": 0}, ConfigurationError, "max_wait"),
        ({"max_concurrent": 1, "max_wait": float("inf")}, ConfigurationError, "max_wait"),
        ({"max_concurrent": 1, "max_wait": "1"}, TypeError, "max_wait"),
        ({"max_concurrent": 1, "name": ""}, ConfigurationError, "name"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    """Each invalid argument raises an error whose message names it."""
    with pytest.raises(error, match=field):
        Bulkhead(**kwargs)  # type: ignore[arg-type]


def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() returns an immutable record that does not follow later calls."""
    bulkhead = Bulkhead(2)
    before = bulkhead.statistics()
    bulkhead.call(lambda: None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.admitted = 5  # type: ignore[misc]
    assert (before.admitted, bulkhead.statistics().admitted) == (0, 1)


# -- threads ---------------------------------------------------------------------------------


def test_threads_three_run_two_wait_and_the_sixth_is_rejected_at_once() -> None:
    """With 3 slots and 2 queue places, 5 threads are admitted or queued and a 6th call fails."""
    bulkhead = Bulkhead(3, 2, name="orders")
    gate = threading.Event()
    results: list[int] = []

    def work(i: int) -> None:
        gate.wait(WAIT)
        results.append(i)

    threads = [threading.Thread(target=bulkhead.call, args=(work, i)) for i in range(5)]
    for thread in threads:
        thread.start()
    wait_until(lambda: bulkhead.statistics().waiting == 2)
    assert bulkhead.statistics().running == 3
    with pytest.raises(BulkheadFullError) as info:
        bulkhead.call(work, 99)
    gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert (info.value.name, info.value.max_concurrent, info.value.max_waiting) == ("orders", 3, 2)
    assert sorted(results) == [0, 1, 2, 3, 4]


def test_threads_slot_is_released_when_the_call_raises() -> None:
    """A call that raises gives its slot back."""
    bulkhead = Bulkhead(1)

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        bulkhead.call(boom)
    assert bulkhead.statistics().running == 0
    assert bulkhead.call(lambda: 7) == 7


def test_threads_waiter_gives_up_after_max_wait() -> None:
    """A thread that gets no slot within max_wait is rejected and leaves the queue."""
    bulkhead = Bulkhead(1, 1, max_wait=0.02)
    gate = threading.Event()
    holder = threading.Thread(target=bulkhead.call, args=(gate.wait, WAIT))
    holder.start()
    wait_until(lambda: bulkhead.statistics().running == 1)
    try:
        with pytest.raises(BulkheadFullError):
            bulkhead.call(lambda: None)
        stats = bulkhead.statistics()
    finally:
        gate.set()
        holder.join(WAIT)
    assert (stats.waiting, stats.rejected) == (0, 1)


def test_threads_counts_add_up_under_load() -> None:
    """Under contention from many threads, admitted + rejected equals the calls made."""
    bulkhead = Bulkhead(3, 2)
    peak = 0
    active = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal peak, active
        with guard:
            active += 1
            peak = max(peak, active)
        time.sleep(0)
        with guard:
            active -= 1

    def worker() -> None:
        for _ in range(300):
            with contextlib.suppress(BulkheadFullError):
                bulkhead.call(work)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 4)
    stats = bulkhead.statistics()
    assert stats.admitted + stats.rejected == 8 * 300
    assert (stats.running, stats.waiting) == (0, 0)
    assert peak <= 3


# -- asyncio tasks ---------------------------------------------------------------------------


async def test_tasks_three_run_two_wait_and_the_sixth_is_rejected_at_once() -> None:
    """With 3 slots and 2 queue places, 5 tasks are admitted or queued and a 6th call fails."""
    bulkhead = Bulkhead(3, 2)
    gate = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(bulkhead.acall(gate.wait)) for _ in range(5)]
        await settle()
        stats = bulkhead.statistics()
        with pytest.raises(BulkheadFullError):
            await bulkhead.acall(gate.wait)
        gate.set()
    assert (stats.running, stats.waiting) == (3, 2)
    assert all(task.result() is True for task in tasks)
    assert bulkhead.statistics().admitted == 5


async def test_tasks_are_woken_first_in_first_out() -> None:
    """Freed slots go to waiting tasks in the order they queued."""
    bulkhead = Bulkhead(1, 5)
    gates = [asyncio.Event() for _ in range(4)]
    order: list[int] = []

    async def work(i: int) -> None:
        order.append(i)
        await gates[i].wait()

    async with asyncio.TaskGroup() as group:
        for i in range(4):
            group.create_task(bulkhead.acall(work, i))
            await settle()
        for i in (0, 1, 2, 3):
            gates[i].set()
            await settle()
    assert order == [0, 1, 2, 3]


async def test_freed_slot_is_handed_straight_to_the_first_waiter() -> None:
    """On release the slot passes to the queued task at once, so no newcomer can take it first."""
    bulkhead = Bulkhead(1, 1)

    async def hold() -> None:
        await settle()  # the waiter queues meanwhile

    waiter = asyncio.create_task(bulkhead.acall(settle))
    await bulkhead.acall(hold)
    # The waiter has not run yet, but already owns the slot.
    stats = bulkhead.statistics()
    await waiter
    assert (stats.running, stats.waiting) == (1, 0)


async def test_cancelled_waiter_gives_back_its_queue_place() -> None:
    """Cancelling a queued task removes it from the queue, so another call can queue."""
    bulkhead = Bulkhead(1, 1)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.acall(gate.wait))
    waiter = asyncio.create_task(bulkhead.acall(gate.wait))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    stats = bulkhead.statistics()
    second = asyncio.create_task(bulkhead.acall(gate.wait))
    await settle()
    gate.set()
    assert await second is True
    await holder
    assert (stats.running, stats.waiting, stats.rejected) == (1, 0, 0)


async def test_waiter_cancelled_after_being_handed_a_slot_does_not_leak_it() -> None:
    """A waiter cancelled in the same instant it was given a slot passes the slot on."""
    bulkhead = Bulkhead(1, 1)
    entered: list[str] = []

    async def hold() -> None:
        await settle()  # the waiter queues meanwhile

    async def work() -> None:
        entered.append("waiter")

    waiter = asyncio.create_task(bulkhead.acall(work))
    await bulkhead.acall(hold)  # its release hands the slot to the waiter, which has not run
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    stats = bulkhead.statistics()
    assert (stats.running, stats.waiting, entered) == (0, 0, [])


async def test_task_waiter_gives_up_after_max_wait() -> None:
    """A task that gets no slot within max_wait is rejected and leaves the queue."""
    bulkhead = Bulkhead(1, 1, max_wait=0.01)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.acall(gate.wait))
    await settle()
    with pytest.raises(BulkheadFullError):
        await bulkhead.acall(gate.wait)
    stats = bulkhead.statistics()
    gate.set()
    await holder
    assert (stats.running, stats.waiting, stats.rejected) == (1, 0, 1)


async def test_tasks_counts_add_up_under_load() -> None:
    """Thousands of tasks: admitted + rejected equals the calls, and the limit always held."""
    bulkhead = Bulkhead(10, 50)
    active = 0
    peak = 0
    rejected = 0

    async def work() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        active -= 1

    async def one() -> None:
        nonlocal rejected
        try:
            await bulkhead.acall(work)
        except BulkheadFullError:
            rejected += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(3000):
            group.create_task(one())
    stats = bulkhead.statistics()
    assert stats.admitted + stats.rejected == 3000
    assert stats.rejected == rejected
    assert (stats.running, stats.waiting) == (0, 0)
    assert peak <= 10


async def test_slot_released_by_a_thread_wakes_a_waiting_task() -> None:
    """Threads and tasks share one bulkhead: a thread's release wakes a task on the loop."""
    bulkhead = Bulkhead(1, 1)
    entered = threading.Event()
    gate = threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(WAIT)

    thread = threading.Thread(target=bulkhead.call, args=(hold,))
    thread.start()
    assert entered.wait(WAIT)

    async def work() -> str:
        return "task ran"

    waiter = asyncio.create_task(bulkhead.acall(work))
    await settle()
    queued = bulkhead.statistics().waiting
    gate.set()
    async with asyncio.timeout(WAIT):
        result = await waiter
    thread.join(WAIT)
    assert (queued, result) == (1, "task ran")


# -- wrapping and decorating -----------------------------------------------------------------


def test_decorated_sync_function_runs_in_a_slot() -> None:
    """@bulkhead on a sync function counts its calls and returns its result."""
    bulkhead = Bulkhead(1)

    @bulkhead
    def double(x: int) -> int:
        return 2 * x

    assert (double(4), double.__name__, bulkhead.statistics().admitted) == (8, "double", 1)


async def test_decorated_async_function_runs_in_a_slot() -> None:
    """@bulkhead on a coroutine function guards it as async."""
    bulkhead = Bulkhead(1)
    seen: list[int] = []

    @bulkhead
    async def record() -> int:
        seen.append(bulkhead.statistics().running)
        return 1

    assert await record() == 1
    assert seen == [1]


def test_wrapped_call_rejected_when_full_is_not_called() -> None:
    """A rejected call never reaches the wrapped function, and each rejection is a new error."""
    bulkhead = Bulkhead(1)
    calls: list[int] = []
    errors: list[BulkheadFullError] = []

    @bulkhead.wrap
    def inner() -> None:
        calls.append(1)

    def outer() -> None:
        for _ in range(2):
            try:
                inner()
            except BulkheadFullError as exc:
                errors.append(exc)

    bulkhead.call(outer)
    assert (calls, len(errors)) == ([], 2)
    assert errors[0] is not errors[1]
