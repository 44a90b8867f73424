"""Tests for RetryPolicy: backoff, jitter, deadline, hooks, test mode, sync and async drivers."""

from __future__ import annotations

import asyncio
import random
import traceback
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    RetryDetails,
    RetryExhaustedError,
    RetryPolicy,
    set_testing,
)
from strategylab.fault_tolerance._retry import is_testing
from strategylab.testing import FakeClock

# ------------------------------------------------------------------------------------ helpers


class Flaky:
    """Raises ``failures`` fresh exceptions, then returns ``value``; a call may cost clock time."""

    def __init__(
        self,
        failures: int,
        *,
        exc_type: type[Exception] = ConnectionError,
        value: object = "ok",
        clock: FakeClock | None = None,
        cost: float = 0.0,
    ) -> None:
        self.failures = failures
        self.exc_type = exc_type
        self.value = value
        self.clock = clock
        self.cost = cost
        self.calls = 0
        self.raised: list[Exception] = []

    def __call__(self) -> object:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.cost)
        if self.calls <= self.failures:
            exc = self.exc_type(f"attempt {self.calls}")
            self.raised.append(exc)
            raise exc
        return self.value


Drive = Callable[[RetryPolicy, Callable[[], object]], Awaitable[object]]


async def _via_call(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    return policy.call(fn)


async def _via_wrap(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    return policy.wrap(fn)()


async def _via_acall(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    async def afn() -> object:
        return fn()

    return await policy.acall(afn)


async def _via_awrap(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    async def afn() -> object:
        return fn()

    return await policy.awrap(afn)()


drivers = pytest.mark.parametrize(
    "drive",
    [_via_call, _via_wrap, _via_acall, _via_awrap],
    ids=["call", "wrap", "acall", "awrap"],
)


def exact(clock: FakeClock, **kwargs: object) -> RetryPolicy:
    """A policy without jitter on ``clock``."""
    return RetryPolicy(jitter=None, clock=clock, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def testing_switch() -> Iterator[Callable[..., object]]:
    yield set_testing
    set_testing(False)


# ---------------------------------------------------------------------------------- backoff


@drivers
async def test_exact_delays_grow_and_are_capped(drive: Drive, clock: FakeClock) -> None:
    """Without jitter the sleeps are base * multiplier**n, capped at max_delay."""
    policy = exact(clock, max_attempts=6, base_delay=1.0, multiplier=2.0, max_delay=5.0)
    with pytest.raises(ConnectionError):
        await drive(policy, Flaky(10))
    assert clock.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


@drivers
async def test_full_jitter_stays_within_the_capped_delay(drive: Drive, clock: FakeClock) -> None:
    """With full jitter each sleep lies in [0, capped delay]."""
    policy = RetryPolicy(
        max_attempts=8, base_delay=1.0, max_delay=10.0, jitter=random.Random(7), clock=clock
    )
    with pytest.raises(ConnectionError):
        await drive(policy, Flaky(10))
    caps = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert len(clock.sleeps) == len(caps)
    assert all(0.0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))


def test_seeded_jitter_is_reproducible() -> None:
    """Two policies seeded alike choose the same delays."""
    runs = []
    for _ in range(2):
        clock = FakeClock()
        policy = RetryPolicy(max_attempts=5, jitter=random.Random(42), clock=clock)
        with pytest.raises(ConnectionError):
            policy.call(Flaky(10))
        runs.append(clock.sleeps)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


def test_default_jitter_is_a_fresh_generator_per_policy() -> None:
    """The default jitter is full jitter from a Random owned by each policy."""
    a, b = RetryPolicy(), RetryPolicy()
    assert isinstance(a.jitter, random.Random)
    assert a.jitter is not b.jitter


@given(
    base=st.floats(0.0, 10.0),
    multiplier=st.floats(1.0, 10.0),
    max_delay=st.floats(0.0, 100.0),
    retries=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_delay_formula_properties(
    base: float, multiplier: float, max_delay: float, retries: int, seed: int
) -> None:
    """Delays never exceed max_delay, never shrink without jitter, and jitter stays in [0, cap]."""
    plain = RetryPolicy(
        max_attempts=retries + 1,
        base_delay=base,
        multiplier=multiplier,
        max_delay=max_delay,
        jitter=None,
    )
    jittered = plain.with_(jitter=random.Random(seed))
    delays = [plain.decide(n, 0.0) for n in range(1, retries + 1)]
    assert all(d is not None and 0.0 <= d <= max_delay for d in delays)
    assert delays == sorted(delays)  # type: ignore[type-var]
    for attempt, cap in enumerate(delays, start=1):
        drawn = jittered.decide(attempt, 0.0)
        assert drawn is not None
        assert cap is not None
        assert 0.0 <= drawn <= cap


def test_huge_retry_numbers_are_capped_not_overflowing() -> None:
    """A retry number large enough to overflow the power still yields max_delay."""
    policy = RetryPolicy(multiplier=10.0, max_delay=7.0, jitter=None)
    assert policy.backoff(10_000) == 7.0


# --------------------------------------------------------------------------------- attempts


@drivers
async def test_succeeds_after_transient_failures(drive: Drive, clock: FakeClock) -> None:
    """A call that fails twice then succeeds returns its value after three attempts."""
    fn = Flaky(2, value=41)
    assert await drive(exact(clock, max_attempts=3), fn) == 41
    assert fn.calls == 3
    assert len(clock.sleeps) == 2


@drivers
async def test_exhaustion_reraises_the_last_original_exception(
    drive: Drive, clock: FakeClock
) -> None:
    """When attempts run out, the caller's own last exception object is re-raised."""
    fn = Flaky(10)
    with pytest.raises(ConnectionError) as info:
        await drive(exact(clock, max_attempts=4), fn)
    assert fn.calls == 4
    assert info.value is fn.raised[-1]


@drivers
async def test_reraised_exception_keeps_its_traceback(drive: Drive, clock: FakeClock) -> None:
    """The re-raised exception's traceback still reaches the frame that raised it."""
    with pytest.raises(ConnectionError) as info:
        await drive(exact(clock, max_attempts=2), Flaky(10))
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "__call__"


@drivers
async def test_reraised_exception_is_not_chained_to_earlier_attempts(
    drive: Drive, clock: FakeClock
) -> None:
    """Earlier attempts' exceptions are not attached as the last one's context."""
    with pytest.raises(ConnectionError) as info:
        await drive(exact(clock, max_attempts=3), Flaky(10))
    assert info.value.__context__ is None


@drivers
async def test_non_retryable_exception_propagates_at_once(drive: Drive, clock: FakeClock) -> None:
    """An exception outside retry_on propagates after one attempt, with no sleep or hook."""
    hooks: list[RetryDetails] = []
    policy = exact(
        clock, retry_on=ConnectionError, before_sleep=hooks.append, on_give_up=hooks.append
    )
    fn = Flaky(10, exc_type=KeyError)
    with pytest.raises(KeyError):
        await drive(policy, fn)
    assert (fn.calls, clock.sleeps, hooks) == (1, [], [])


@drivers
async def test_non_retryable_exception_on_a_later_attempt_propagates(
    drive: Drive, clock: FakeClock
) -> None:
    """A retry that meets a non-retryable exception stops there and raises it."""
    outcomes: list[Exception] = [ConnectionError("first"), KeyError("second")]

    def fn() -> object:
        raise outcomes.pop(0)

    with pytest.raises(KeyError):
        await drive(exact(clock, max_attempts=5, retry_on=ConnectionError), fn)
    assert clock.sleeps == [0.1]


@pytest.mark.parametrize(
    ("exc_type", "retried"),
    [(TimeoutError, True), (ValueError, False)],
    ids=["matching", "not-matching"],
)
@drivers
async def test_predicate_retry_on(
    drive: Drive, clock: FakeClock, exc_type: type[Exception], retried: bool
) -> None:
    """A predicate retry_on retries exactly the exceptions it accepts."""
    policy = exact(clock, max_attempts=3, retry_on=lambda e: isinstance(e, TimeoutError))
    fn = Flaky(10, exc_type=exc_type)
    with pytest.raises(exc_type):
        await drive(policy, fn)
    assert fn.calls == (3 if retried else 1)


@drivers
async def test_tuple_retry_on(drive: Drive, clock: FakeClock) -> None:
    """A tuple retry_on retries any of its types."""
    fn = Flaky(2, exc_type=TimeoutError)
    policy = exact(clock, max_attempts=3, retry_on=(ConnectionError, TimeoutError))
    assert await drive(policy, fn) == "ok"


# ----------------------------------------------------------------------------------- results


@drivers
async def test_rejected_results_are_retried_until_accepted(drive: Drive, clock: FakeClock) -> None:
    """A result rejected by retry_on_result is retried; an accepted one is returned."""
    results = iter([None, None, 7])
    policy = exact(clock, max_attempts=5, retry_on_result=lambda r: r is None)
    assert await drive(policy, lambda: next(results)) == 7
    assert len(clock.sleeps) == 2


@drivers
async def test_rejected_result_exhaustion_raises_retry_exhausted(
    drive: Drive, clock: FakeClock
) -> None:
    """Running out of attempts on rejected results raises RetryExhaustedError with the last one."""
    results = iter(range(10))
    policy = exact(clock, max_attempts=3, retry_on_result=lambda r: r < 100)
    with pytest.raises(RetryExhaustedError) as info:
        await drive(policy, lambda: next(results))
    assert (info.value.attempts, info.value.result) == (3, 2)


# ---------------------------------------------------------------------------------- deadline


@drivers
async def test_deadline_gives_up_before_a_sleep_that_would_overrun(
    drive: Drive, clock: FakeClock
) -> None:
    """A sleep that would end past the deadline is not started; the retry gives up instead."""
    policy = exact(clock, max_attempts=10, base_delay=1.0, deadline=5.0)
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        await drive(policy, fn)
    assert clock.sleeps == [1.0, 2.0]
    assert fn.calls == 3


@drivers
async def test_deadline_counts_from_the_start_of_the_first_attempt(
    drive: Drive, clock: FakeClock
) -> None:
    """Time spent inside attempts counts against the deadline, never sleeping past it."""
    policy = exact(clock, max_attempts=10, base_delay=1.0, deadline=6.0)
    fn = Flaky(10, clock=clock, cost=2.0)
    with pytest.raises(ConnectionError):
        await drive(policy, fn)
    # attempt 1 ends at 2, sleep 1 -> 3; attempt 2 ends at 5, and a 2 s sleep would end at 7 > 6.
    assert clock.sleeps == [1.0]
    assert fn.calls == 2


@drivers
async def test_success_path_reads_the_clock_only_with_a_deadline(drive: Drive) -> None:
    """Without a deadline a successful call never reads the clock; with one, exactly once."""

    class CountingClock(FakeClock):
        reads = 0

        def monotonic(self) -> float:
            self.reads += 1
            return super().monotonic()

    plain, timed = CountingClock(), CountingClock()
    await drive(RetryPolicy(clock=plain), lambda: 1)
    await drive(RetryPolicy(clock=timed, deadline=1.0), lambda: 1)
    assert (plain.reads, timed.reads) == (0, 1)


# ------------------------------------------------------------------------------------- hooks


def test_hooks_receive_the_right_details(clock: FakeClock) -> None:
    """before_sleep sees each failed attempt and its delay; on_give_up sees the last, delay 0."""
    slept: list[RetryDetails] = []
    gave_up: list[RetryDetails] = []
    policy = exact(
        clock,
        max_attempts=3,
        base_delay=1.0,
        deadline=100.0,
        before_sleep=slept.append,
        on_give_up=gave_up.append,
        name="fetch",
    )
    fn = Flaky(10, clock=clock, cost=0.5)
    with pytest.raises(ConnectionError):
        policy.call(fn)
    e1, e2, e3 = fn.raised
    assert slept == [
        RetryDetails(name="fetch", attempt=1, delay=1.0, elapsed=0.5, exception=e1),
        RetryDetails(name="fetch", attempt=2, delay=2.0, elapsed=2.0, exception=e2),
    ]
    assert gave_up == [
        RetryDetails(name="fetch", attempt=3, delay=0.0, elapsed=4.5, exception=e3),
    ]


def test_hook_details_carry_a_rejected_result(clock: FakeClock) -> None:
    """For a rejected result the details hold the result and no exception."""
    gave_up: list[RetryDetails] = []
    policy = exact(clock, max_attempts=1, retry_on_result=bool, on_give_up=gave_up.append)
    with pytest.raises(RetryExhaustedError):
        policy.call(lambda: "bad")
    assert (gave_up[0].exception, gave_up[0].result) == (None, "bad")


def test_hook_name_defaults_to_the_callable(clock: FakeClock) -> None:
    """Without a policy name, details are named after the guarded callable."""
    names: list[str] = []

    def fetch_quotes() -> None:
        raise ConnectionError

    policy = exact(clock, max_attempts=2, before_sleep=lambda d: names.append(d.name))
    with pytest.raises(ConnectionError):
        policy.call(fetch_quotes)
    assert names == [fetch_quotes.__qualname__]


def test_a_raising_hook_propagates(clock: FakeClock) -> None:
    """An exception raised by a hook ends the retry and reaches the caller."""

    def hook(details: RetryDetails) -> None:
        raise RuntimeError("hook failed")

    fn = Flaky(10)
    with pytest.raises(RuntimeError, match="hook failed"):
        exact(clock, before_sleep=hook).call(fn)
    assert fn.calls == 1


# --------------------------------------------------------------------------------- test mode


@drivers
async def test_test_mode_skips_every_sleep(
    drive: Drive, clock: FakeClock, testing_switch: Callable[..., object]
) -> None:
    """In test mode no sleep is called at all, though every attempt still runs."""
    testing_switch(enabled=True)
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        await drive(exact(clock, max_attempts=4, base_delay=1.0), fn)
    assert (fn.calls, clock.sleeps) == (4, [])


@drivers
async def test_test_mode_caps_attempts(
    drive: Drive, clock: FakeClock, testing_switch: Callable[..., object]
) -> None:
    """In test mode with attempts=N, no policy makes more than N attempts."""
    testing_switch(enabled=True, attempts=2)
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        await drive(exact(clock, max_attempts=10), fn)
    assert fn.calls == 2


def test_test_mode_hooks_see_zero_delay(
    clock: FakeClock, testing_switch: Callable[..., object]
) -> None:
    """In test mode before_sleep is still called, with a delay of zero."""
    testing_switch(enabled=True)
    delays: list[float] = []
    policy = exact(clock, max_attempts=3, before_sleep=lambda d: delays.append(d.delay))
    with pytest.raises(ConnectionError):
        policy.call(Flaky(10))
    assert delays == [0.0, 0.0]


def test_test_mode_switches_off(testing_switch: Callable[..., object]) -> None:
    """set_testing(False) turns test mode off again."""
    testing_switch(enabled=True, attempts=1)
    assert is_testing()
    testing_switch(enabled=False)
    assert not is_testing()


def test_test_mode_rejects_bad_attempts(testing_switch: Callable[..., object]) -> None:
    """set_testing names attempts when it is not a positive int."""
    with pytest.raises(ConfigurationError, match="attempts"):
        testing_switch(enabled=True, attempts=0)


# ------------------------------------------------------------------------------------- API


def test_decorator_keeps_the_name_of_a_sync_function(clock: FakeClock) -> None:
    """Decorating a sync function keeps its name and retries it."""
    fn = Flaky(1)

    @exact(clock)
    def load_bars() -> object:
        return fn()

    assert load_bars.__name__ == "load_bars"
    assert load_bars() == "ok"


async def test_decorator_keeps_the_name_of_an_async_function(clock: FakeClock) -> None:
    """Decorating a coroutine function gives a coroutine function that keeps its name."""
    fn = Flaky(1)

    @exact(clock)
    async def load_bars() -> object:
        return fn()

    assert load_bars.__name__ == "load_bars"
    assert asyncio.iscoroutinefunction(load_bars)
    assert await load_bars() == "ok"
    assert clock.sleeps == [0.1]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_arguments_are_passed_on_every_attempt(clock: FakeClock, is_async: bool) -> None:
    """call/acall pass positional and keyword arguments to each attempt."""
    seen: list[tuple[int, int]] = []

    def record(a: int, *, b: int) -> int:
        seen.append((a, b))
        if len(seen) < 2:
            raise ConnectionError
        return a + b

    async def arecord(a: int, *, b: int) -> int:
        return record(a, b=b)

    policy = exact(clock)
    total = await policy.acall(arecord, 1, b=2) if is_async else policy.call(record, 1, b=2)
    assert (total, seen) == (3, [(1, 2), (1, 2)])


def test_wrap_refuses_a_coroutine_function() -> None:
    """wrap() on a coroutine function raises TypeError pointing at awrap()."""

    async def fetch() -> None:
        return None

    with pytest.raises(TypeError, match="awrap"):
        RetryPolicy().wrap(fetch)


async def test_cancelled_error_is_never_retried(clock: FakeClock) -> None:
    """asyncio.CancelledError raised by an attempt propagates at once."""
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await exact(clock, retry_on=Exception).acall(fn)
    assert (calls, clock.sleeps) == (1, [])


async def test_cancelling_during_backoff_stops_the_retry() -> None:
    """Cancelling the task while it sleeps between attempts ends the retry with CancelledError."""

    class BlockingClock(FakeClock):
        def __init__(self) -> None:
            super().__init__()
            self.sleeping = asyncio.Event()

        async def asleep(self, seconds: float) -> None:
            self.sleeping.set()
            await asyncio.Event().wait()

    clock = BlockingClock()
    fn = Flaky(10)

    async def afn() -> object:
        return fn()

    task = asyncio.create_task(exact(clock).acall(afn))
    await clock.sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fn.calls == 1


def test_with_returns_a_validated_copy() -> None:
    """with_() changes the named fields, leaves the original alone, and validates the copy."""
    policy = RetryPolicy(max_attempts=3, name="a")
    copy = policy.with_(max_attempts=5)
    assert (copy.max_attempts, copy.name, policy.max_attempts) == (5, "a", 3)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        policy.with_(max_attempts=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 2.0),
        ("max_attempts", True),
        ("base_delay", -0.1),
        ("base_delay", float("nan")),
        ("max_delay", float("inf")),
        ("multiplier", 0.5),
        ("deadline", 0.0),
        ("jitter", 0.5),
        ("retry_on", asyncio.CancelledError),
        ("retry_on", (ValueError, KeyboardInterrupt)),
        ("retry_on", ()),
        ("retry_on", "ValueError"),
        ("retry_on_result", 3),
        ("before_sleep", "print"),
        ("clock", object()),
        ("name", ""),
    ],
)
def test_invalid_configuration_names_the_field(field: str, value: object) -> None:
    """Every invalid argument raises ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field


def test_policy_is_frozen() -> None:
    """A policy cannot be changed after construction."""
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]
