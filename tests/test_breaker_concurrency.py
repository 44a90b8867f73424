"""The circuit breaker under many threads and many asyncio tasks at once."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from strategylab.errors import CircuitOpenError
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator

from strategylab.fault_tolerance import BreakerState, CircuitBreaker

S = BreakerState
LEGAL = {(S.CLOSED, S.OPEN), (S.OPEN, S.HALF_OPEN), (S.HALF_OPEN, S.OPEN), (S.HALF_OPEN, S.CLOSED)}
THREADS, PER_THREAD, TASKS = 8, 5_000, 5_000


class FlakyError(ConnectionError):
    """The injected failure."""


@pytest.fixture(autouse=True)
def eager_switching() -> Iterator[None]:
    """Switch threads every microsecond so the threads really interleave inside the breaker."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def balanced(transitions: list[tuple[BreakerState, BreakerState]], final: BreakerState) -> bool:
    """Entries minus exits per state: one for the final state, zero for all others."""
    net: Counter[BreakerState] = Counter({S.CLOSED: 1})
    for old, new in transitions:
        net[old] -= 1
        net[new] += 1
    return all(count == (1 if state is final else 0) for state, count in net.items())


def recorder(
    breaker: CircuitBreaker,
) -> list[tuple[BreakerState, BreakerState]]:
    """A list that a listener fills with every transition (list.append is atomic)."""
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda b, old, new: seen.append((old, new)))
    return seen


def test_thread_counters_add_up() -> None:
    """8 threads x 5,000 mixed calls: successes + failures + not permitted == calls made."""
    clock = FakeClock()
    breaker = CircuitBreaker("threads", 3, 0.0, clock, half_open_max_calls=2)
    transitions = recorder(breaker)
    overfull: list[int] = []

    def work(seed: int) -> None:
        for i in range(PER_THREAD):
            fails = (i // 4 + seed) % 3 == 0  # bursts of four failures

            def body(*, fails: bool = fails, i: int = i) -> int:
                if breaker._trials_in_flight > 2:
                    overfull.append(breaker._trials_in_flight)
                if fails:
                    raise FlakyError
                return i

            with contextlib.suppress(FlakyError, CircuitOpenError):
                breaker.call(body)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    m = breaker.metrics()
    assert m.successful_calls + m.failed_calls + m.not_permitted == THREADS * PER_THREAD
    assert overfull == []
    assert transitions, "the mix must make the breaker move"
    assert set(transitions) <= LEGAL
    assert balanced(transitions, m.state)


def test_thread_counters_add_up_through_the_fast_wrapper() -> None:
    """The lock-free success path of ``wrap`` loses no count under 8 threads."""
    clock = FakeClock()
    breaker = CircuitBreaker("threads-fast", 4, 0.0, clock)

    def body(i: int) -> int:
        if i % 3 == 0:
            raise FlakyError
        return i

    guarded = breaker.wrap(body)

    def work() -> None:
        for i in range(PER_THREAD):
            with contextlib.suppress(FlakyError, CircuitOpenError):
                guarded(i)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    m = breaker.metrics()
    assert m.successful_calls + m.failed_calls + m.not_permitted == THREADS * PER_THREAD
    assert m.failed_calls == THREADS * (PER_THREAD // 3 + 1)


def test_threads_half_open_admits_exactly_max_trials() -> None:
    """8 threads at a HALF_OPEN breaker: exactly ``half_open_max_calls`` run, 5 are rejected."""
    clock = FakeClock()
    breaker = CircuitBreaker("threads-half", 1, 10.0, clock, half_open_max_calls=3)
    breaker.trip()
    clock.advance(10.0)
    admitted = threading.Semaphore(0)
    release = threading.Event()
    lock = threading.Lock()
    outcomes: list[str] = []

    def trial() -> str:
        admitted.release()
        release.wait(timeout=10)
        return "trial"

    def work() -> None:
        try:
            result = breaker.call(trial)
        except CircuitOpenError as exc:
            result = f"rejected {exc.retry_after}"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for _ in range(3):
        assert admitted.acquire(timeout=10)
    while True:  # the five that were not admitted finish on their own
        with lock:
            if len(outcomes) == THREADS - 3:
                break
        threading.Event().wait(0.001)
    assert not admitted.acquire(timeout=0.05)
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert sorted(outcomes) == ["rejected 0.0"] * 5 + ["trial"] * 3
    assert breaker.state is BreakerState.CLOSED


async def test_tasks_counters_add_up() -> None:
    """5,000 interleaved tasks: successes + failures + not permitted == calls made."""
    clock = FakeClock()
    breaker = CircuitBreaker("tasks", 3, 0.0, clock, half_open_max_calls=2)
    transitions = recorder(breaker)
    overfull: list[int] = []

    async def body(i: int) -> int:
        await asyncio.sleep(0)
        if breaker._trials_in_flight > 2:
            overfull.append(breaker._trials_in_flight)
        if i % 8 < 4:
            raise FlakyError
        return i

    guarded = breaker(body)

    async def one(i: int) -> None:
        with contextlib.suppress(FlakyError, CircuitOpenError):
            await guarded(i)

    async with asyncio.TaskGroup() as group:
        for i in range(TASKS):
            group.create_task(one(i))
    m = breaker.metrics()
    assert m.successful_calls + m.failed_calls + m.not_permitted == TASKS
    assert overfull == []
    assert transitions, "the mix must make the breaker move"
    assert set(transitions) <= LEGAL
    assert balanced(transitions, m.state)


@pytest.mark.parametrize("max_calls", [1, 3])
async def test_tasks_half_open_admits_exactly_max_trials(max_calls: int) -> None:
    """Tasks arriving at a HALF_OPEN breaker: exactly ``half_open_max_calls`` trials run."""
    clock = FakeClock()
    breaker = CircuitBreaker("tasks-half", 1, 10.0, clock, half_open_max_calls=max_calls)
    breaker.trip()
    clock.advance(10.0)
    release = asyncio.Event()
    all_rejected = asyncio.Event()
    running = rejected = 0

    async def trial() -> str:
        nonlocal running
        running += 1
        await release.wait()
        return "trial"

    async def one() -> str:
        nonlocal rejected
        try:
            return await breaker.acall(trial)
        except CircuitOpenError:
            rejected += 1
            if rejected == 50 - max_calls:
                all_rejected.set()
            return "rejected"

    tasks = [asyncio.create_task(one()) for _ in range(50)]
    async with asyncio.timeout(10):
        await all_rejected.wait()
    assert running == max_calls
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("trial") == max_calls
    assert breaker.state is BreakerState.CLOSED
    assert breaker.metrics().not_permitted == 50 - max_calls
