"""Per-attempt and total timeouts in a pipeline: what the breaker and the retry see."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from strategylab.errors import CallTimeoutError, CircuitOpenError
from strategylab.fault_tolerance import (
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from strategylab.testing import FakeClock


class LoopTime:
    """Moves the running event loop's clock, so that asyncio timeouts expire without waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = loop.time
        monkeypatch.setattr(loop, "time", lambda: real() + self.offset)

    async def jump(self, seconds: float) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.offset += seconds
        for _ in range(3):
            await asyncio.sleep(0)


@pytest.fixture
async def loop_time(monkeypatch: pytest.MonkeyPatch) -> LoopTime:
    return LoopTime(asyncio.get_running_loop(), monkeypatch)


async def _hang() -> str:
    await asyncio.Event().wait()
    return "never"


async def _call_through(
    loop_time: LoopTime, guarded: Callable[[], Awaitable[str]], jump: float
) -> BaseException | str:
    task = asyncio.ensure_future(guarded())
    await loop_time.jump(jump)
    try:
        return await task
    except Exception as exc:
        return exc


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that hung sync calls wait on; set at teardown so no worker stays stuck."""
    event = threading.Event()
    yield event
    event.set()


def _wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for a worker thread to finish its part; bounded."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the worker thread did not finish in time"
        time.sleep(0.002)


# -- the case: a hung call through timeout and breaker --------------------------------


@pytest.mark.parametrize("threshold", [1, 3, 5])
async def test_async_attempt_timeout_counts_as_a_breaker_failure(
    loop_time: LoopTime, threshold: int
) -> None:
    """Hung calls time out inside the breaker: it opens after `threshold`, then rejects at once."""
    clock = FakeClock()
    breaker = CircuitBreaker("q", failure_threshold=threshold, recovery_timeout=30, clock=clock)
    guarded = Pipeline.of(timeout=Timeout(0.05), breaker=breaker).awrap(_hang)
    outcomes = [await _call_through(loop_time, guarded, 0.06) for _ in range(10)]
    assert all(isinstance(o, CallTimeoutError) for o in outcomes[:threshold])
    assert all(isinstance(o, CircuitOpenError) for o in outcomes[threshold:])
    metrics = breaker.metrics()
    assert metrics.state is BreakerState.OPEN
    assert metrics.failed_calls == threshold
    assert metrics.ignored_calls == 0
    assert metrics.rejected_calls == 10 - threshold


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_sync_attempt_timeout_counts_as_a_breaker_failure(release: threading.Event) -> None:
    """The sync twin: hung calls time out, the breaker counts them and opens."""
    breaker = CircuitBreaker("q", failure_threshold=2, recovery_timeout=30)
    guarded = Pipeline.of(timeout=Timeout(0.02), breaker=breaker).wrap(release.wait)
    for _ in range(2):
        with pytest.raises(CallTimeoutError):
            guarded()
    with pytest.raises(CircuitOpenError):
        guarded()
    assert breaker.metrics().failed_calls == 2
    assert breaker.state is BreakerState.OPEN


async def test_half_open_trial_that_hangs_times_out_and_reopens(loop_time: LoopTime) -> None:
    """A trial that hangs ends at the attempt timeout as a failure: the breaker re-opens."""
    clock = FakeClock()
    breaker = CircuitBreaker("q", failure_threshold=1, recovery_timeout=10, clock=clock)
    guarded = Pipeline.of(timeout=Timeout(0.05), breaker=breaker).awrap(_hang)
    assert isinstance(await _call_through(loop_time, guarded, 0.06), CallTimeoutError)
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN
    assert isinstance(await _call_through(loop_time, guarded, 0.06), CallTimeoutError)
    assert breaker.metrics().state is BreakerState.OPEN


# -- per attempt inside the retry, total outside it -------------------------------------------


@pytest.mark.parametrize("attempts", [2, 4])
async def test_attempt_timeout_is_retried_per_attempt(loop_time: LoopTime, attempts: int) -> None:
    """Each attempt gets its own deadline; the retry tries again after each timeout."""
    started: list[int] = []

    async def hang() -> str:
        started.append(1)
        return await _hang()

    pipeline = Pipeline.of(
        retry=RetryPolicy(max_attempts=attempts, base_delay=0, retry_on=TimeoutError, jitter=None),
        timeout=Timeout(0.05),
    )
    task = asyncio.ensure_future(pipeline.acall(hang))
    for _ in range(attempts):
        await loop_time.jump(0.06)
    with pytest.raises(CallTimeoutError):
        await task
    assert len(started) == attempts


async def test_total_timeout_cuts_the_attempts_short(loop_time: LoopTime) -> None:
    """The total deadline ends the retried call even though attempts remain."""
    started: list[int] = []

    async def hang() -> str:
        started.append(1)
        return await _hang()

    pipeline = Pipeline.of(
        total_timeout=Timeout(1.0, name="total"),
        retry=RetryPolicy(max_attempts=100, base_delay=0, retry_on=TimeoutError, jitter=None),
        timeout=Timeout(0.3, name="attempt"),
    )
    task = asyncio.ensure_future(pipeline.acall(hang))
    for _ in range(4):
        await loop_time.jump(0.31)
    with pytest.raises(CallTimeoutError) as info:
        await task
    assert info.value.operation == "total"
    assert len(started) == 4


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_sync_total_and_attempt_timeouts_both_apply(release: threading.Event) -> None:
    """Sync: attempts time out and are retried, and the total deadline ends it all."""
    started: list[int] = []

    def hang() -> bool:
        started.append(1)
        return release.wait()

    pipeline = Pipeline.of(
        total_timeout=Timeout(0.5, name="total"),
        retry=RetryPolicy(max_attempts=100, base_delay=0.05, retry_on=TimeoutError, jitter=None),
        timeout=Timeout(0.05, name="attempt"),
    )
    with pytest.raises(CallTimeoutError) as info:
        pipeline.call(hang)
    assert info.value.operation == "total"
    assert 2 <= len(started) < 100


# -- a sync call abandoned by its timeout ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize("form", ["wrap", "call"])
def test_sync_call_abandoned_by_total_timeout_is_never_a_late_success(
    release: threading.Event, form: str
) -> None:
    """The worker finishes after the caller gave up: the breaker inside records no success."""
    finished = threading.Event()

    def slow() -> str:
        release.wait()
        finished.set()
        return "late"

    breaker = CircuitBreaker("q", failure_threshold=3)
    pipeline = Pipeline.of(total_timeout=Timeout(0.02), breaker=breaker)
    with pytest.raises(CallTimeoutError):
        pipeline.wrap(slow)() if form == "wrap" else pipeline.call(slow)
    release.set()
    assert finished.wait(10)
    _wait_for(lambda: breaker.metrics().ignored_calls == 1)
    metrics = breaker.metrics()
    assert metrics.successful_calls == 0
    assert metrics.failed_calls == 0


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_retry_inside_an_expired_total_timeout_starts_no_more_attempts(
    release: threading.Event,
) -> None:
    """The abandoned worker's failure is not retried: only one attempt ever starts."""
    started: list[int] = []

    def flaky() -> str:
        started.append(1)
        release.wait()
        raise ConnectionError("reset")

    breaker = CircuitBreaker("q", failure_threshold=10)
    pipeline = Pipeline.of(
        total_timeout=Timeout(0.02),
        retry=RetryPolicy(max_attempts=5, base_delay=0, retry_on=ConnectionError, jitter=None),
        breaker=breaker,
    )
    guarded = pipeline.wrap(flaky)
    with pytest.raises(CallTimeoutError):
        guarded()
    release.set()
    _wait_for(lambda: breaker.metrics().ignored_calls == 1)
    assert started == [1]
    assert breaker.metrics().failed_calls == 0


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_abandoned_sync_call_keeps_its_bulkhead_slot_until_it_returns(
    release: threading.Event,
) -> None:
    """The bulkhead inside the attempt timeout bounds the threads still busy on the dependency."""
    bulkhead = Bulkhead(1, max_waiting=0)
    breaker = CircuitBreaker("q", failure_threshold=10)
    guarded = Pipeline.of(breaker=breaker, timeout=Timeout(0.02), bulkhead=bulkhead).wrap(
        release.wait
    )
    with pytest.raises(CallTimeoutError):
        guarded()
    _wait_for(lambda: bulkhead.statistics().running == 1)
    release.set()
    _wait_for(lambda: bulkhead.statistics().running == 0)
    assert breaker.metrics().successful_calls == 0
    assert breaker.metrics().failed_calls == 1


def test_a_timeout_alone_still_returns_a_prompt_result() -> None:
    """A call that finishes in time returns its value through the worker thread."""
    assert Pipeline.of(total_timeout=Timeout(5), timeout=Timeout(5)).call(lambda: 7) == 7


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_attempt_timeout_expiring_after_the_total_one_is_not_a_failure(
    release: threading.Event,
) -> None:
    """An attempt timeout firing after the total one gave up is not counted by the breaker."""
    breaker = CircuitBreaker("q", failure_threshold=1)
    guarded = Pipeline.of(
        total_timeout=Timeout(0.02, name="total"),
        breaker=breaker,
        timeout=Timeout(0.2, name="attempt"),
    ).wrap(release.wait)
    with pytest.raises(CallTimeoutError) as info:
        guarded()
    assert info.value.operation == "total"
    _wait_for(lambda: breaker.metrics().ignored_calls == 1)
    metrics = breaker.metrics()
    assert metrics.failed_calls == 0
    assert metrics.state is BreakerState.CLOSED
