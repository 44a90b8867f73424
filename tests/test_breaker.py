"""The circuit breaker: transitions, windows, overrides, listeners, rejections and memory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import math
import tracemalloc
from typing import TYPE_CHECKING, Any

import pytest

from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

from strategylab.fault_tolerance import (
    BreakerMetrics,
    BreakerState,
    CircuitBreaker,
    SlidingWindowType,
    open_breaker_names,
)

MODES = ["wrap", "call", "decorator", "awrap", "acall", "adecorator"]


class BoomError(ConnectionError):
    """The failure the tests inject."""


def invoke(  # noqa: C901 - one branch per way in
    breaker: CircuitBreaker,
    mode: str,
    *,
    exc: BaseException | None = None,
    clock: FakeClock | None = None,
    duration: float = 0.0,
    calls: list[int] | None = None,
) -> str:
    """Run one call through ``breaker`` the way ``mode`` says; the body may fail or take time."""

    def body() -> str:
        if calls is not None:
            calls.append(1)
        if clock is not None and duration:
            clock.advance(duration)
        if exc is not None:
            raise exc
        return "ok"

    async def abody() -> str:
        return body()

    if mode == "wrap":
        return breaker.wrap(body)()
    if mode == "call":
        return breaker.call(body)
    if mode == "decorator":
        return breaker(body)()
    if mode == "awrap":
        return asyncio.run(breaker.awrap(abody)())
    if mode == "acall":
        return asyncio.run(breaker.acall(abody))
    return asyncio.run(breaker(abody)())


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call so the type checker does not narrow it."""
    return breaker.state


def fail(breaker: CircuitBreaker, mode: str, times: int = 1) -> None:
    """Make ``times`` failing calls, each of which must raise BoomError."""
    for _ in range(times):
        with pytest.raises(BoomError):
            invoke(breaker, mode, exc=BoomError())


def opened(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    """A breaker tripped by three failures, recovery timeout 10 s."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock, **kwargs)
    fail(breaker, "call", 3)
    assert state_of(breaker) is BreakerState.OPEN
    return breaker


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0)


# ------------------------------------------------------------------------------ basics


def test_enum_values_are_lowercase() -> None:
    """Every state and window type has its lowercase name as value."""
    for member in [*BreakerState, *SlidingWindowType]:
        assert member.value == member.name.lower()


def test_new_breaker_is_closed_with_empty_metrics(clock: FakeClock) -> None:
    """A new breaker is CLOSED and its metrics are all zero, rates -1."""
    m = CircuitBreaker("dep", clock=clock).metrics()
    assert m.state is BreakerState.CLOSED
    assert (m.failure_rate, m.slow_call_rate) == (-1.0, -1.0)
    assert m.successful_calls == m.failed_calls == m.not_permitted == m.window_calls == 0


@pytest.mark.parametrize("mode", MODES)
def test_success_returns_the_result(clock: FakeClock, mode: str) -> None:
    """A permitted call returns the function's own result and counts a success."""
    breaker = CircuitBreaker("dep", clock=clock)
    assert invoke(breaker, mode) == "ok"
    assert breaker.metrics().successful_calls == 1


@pytest.mark.parametrize("mode", MODES)
def test_consecutive_failures_trip(clock: FakeClock, mode: str) -> None:
    """``failure_threshold`` consecutive failures open the breaker."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock)
    fail(breaker, mode, 2)
    assert state_of(breaker) is BreakerState.CLOSED
    fail(breaker, mode)
    assert state_of(breaker) is BreakerState.OPEN


@pytest.mark.parametrize("mode", MODES)
def test_success_resets_consecutive_failures(clock: FakeClock, mode: str) -> None:
    """A success between failures restarts the consecutive count."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock)
    fail(breaker, mode, 2)
    invoke(breaker, mode)
    fail(breaker, mode, 2)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.metrics().consecutive_failures == 2


def test_no_failure_threshold_never_trips_on_consecutive_failures(clock: FakeClock) -> None:
    """``failure_threshold=None`` turns the consecutive rule off."""
    breaker = CircuitBreaker("dep", None, 10.0, clock)
    fail(breaker, "wrap", 50)
    assert state_of(breaker) is BreakerState.CLOSED


# ------------------------------------------------------------------------------ open


@pytest.mark.parametrize("mode", MODES)
def test_open_breaker_does_not_call_the_function(clock: FakeClock, mode: str) -> None:
    """While OPEN the wrapped function is never called."""
    breaker = opened(clock)
    calls: list[int] = []
    with pytest.raises(CircuitOpenError):
        invoke(breaker, mode, calls=calls)
    assert calls == []


@pytest.mark.parametrize("mode", MODES)
def test_each_rejection_raises_a_fresh_error(clock: FakeClock, mode: str) -> None:
    """Two rejections raise two distinct CircuitOpenError instances."""
    breaker = opened(clock)
    with pytest.raises(CircuitOpenError) as first:
        invoke(breaker, mode)
    with pytest.raises(CircuitOpenError) as second:
        invoke(breaker, mode)
    assert first.value is not second.value


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_is_the_remaining_recovery_time(clock: FakeClock, mode: str) -> None:
    """``retry_after`` counts down to the moment a trial call is permitted."""
    breaker = opened(clock)
    clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as info:
        invoke(breaker, mode)
    assert info.value.retry_after == pytest.approx(6.0)
    assert info.value.breaker == "dep"


def test_rejections_are_counted(clock: FakeClock) -> None:
    """Rejected calls appear in ``rejected_calls`` and ``not_permitted``."""
    breaker = opened(clock)
    for mode in MODES:
        with pytest.raises(CircuitOpenError):
            invoke(breaker, mode)
    m = breaker.metrics()
    assert (m.rejected_calls, m.not_permitted, m.failed_calls) == (6, 6, 3)


def test_state_read_moves_open_to_half_open(clock: FakeClock) -> None:
    """Reading ``state`` after the recovery timeout shows HALF_OPEN."""
    breaker = opened(clock)
    clock.advance(9.999)
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.001)
    assert state_of(breaker) is BreakerState.HALF_OPEN


# ------------------------------------------------------------------------------ half-open


@pytest.mark.parametrize("mode", MODES)
def test_successful_trial_closes(clock: FakeClock, mode: str) -> None:
    """A successful trial call after the timeout closes the breaker with a fresh window."""
    breaker = opened(clock)
    clock.advance(10.0)
    assert invoke(breaker, mode) == "ok"
    m = breaker.metrics()
    assert m.state is BreakerState.CLOSED
    assert m.consecutive_failures == 0


@pytest.mark.parametrize("mode", MODES)
def test_failed_trial_reopens_with_a_new_timeout(clock: FakeClock, mode: str) -> None:
    """A failed trial re-opens at once, for a whole new recovery timeout."""
    breaker = opened(clock)
    clock.advance(10.0)
    fail(breaker, mode)
    assert state_of(breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        invoke(breaker, mode)
    assert info.value.retry_after == pytest.approx(10.0)


def test_half_open_needs_max_calls_successes(clock: FakeClock) -> None:
    """With ``half_open_max_calls=3`` three successful trials are needed to close."""
    breaker = opened(clock, half_open_max_calls=3)
    clock.advance(10.0)
    invoke(breaker, "call")
    invoke(breaker, "call")
    assert state_of(breaker) is BreakerState.HALF_OPEN
    invoke(breaker, "call")
    assert state_of(breaker) is BreakerState.CLOSED


def test_half_open_rejects_beyond_concurrent_trials(clock: FakeClock) -> None:
    """A call while ``half_open_max_calls`` trials are running is rejected with retry_after 0."""
    breaker = opened(clock, half_open_max_calls=2)
    clock.advance(10.0)
    seen: list[CircuitOpenError] = []

    def innermost() -> str:
        return "never"

    def inner() -> str:
        try:
            breaker.call(innermost)
        except CircuitOpenError as exc:
            seen.append(exc)
        return "inner"

    def outer() -> str:
        return breaker.call(inner)

    assert breaker.call(outer) == "inner"
    assert len(seen) == 1
    assert seen[0].retry_after == 0.0
    assert breaker.metrics().not_permitted == 1


async def test_cancelled_trial_releases_its_slot(clock: FakeClock) -> None:
    """A cancelled trial is neither success nor failure and frees its half-open slot."""
    breaker = opened(clock)
    clock.advance(10.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.acall(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert invoke_async_ok(breaker) == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


def invoke_async_ok(breaker: CircuitBreaker) -> str:
    """One successful sync call (usable from inside a running loop)."""
    return breaker.call(lambda: "ok")


# ------------------------------------------------------------------------------ rate windows


def test_rate_trip_waits_for_minimum_calls(clock: FakeClock) -> None:
    """The failure rate is not evaluated until the window holds ``minimum_calls`` calls."""
    breaker = CircuitBreaker("dep", None, 10.0, clock, failure_rate_threshold=50.0, minimum_calls=4)
    fail(breaker, "wrap", 3)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.metrics().failure_rate == -1.0
    invoke(breaker, "wrap")
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.metrics().failure_rate == 75.0


def test_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    """A failure rate below the threshold keeps the breaker closed."""
    breaker = CircuitBreaker("dep", None, 10.0, clock, failure_rate_threshold=60.0, minimum_calls=4)
    for _ in range(10):
        fail(breaker, "call")
        invoke(breaker, "call")
        invoke(breaker, "call")
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.metrics().failure_rate == pytest.approx(100 / 3, abs=4)


def test_count_window_forgets_the_oldest_outcome(clock: FakeClock) -> None:
    """A count-based window holds only the last ``sliding_window_size`` outcomes."""
    breaker = CircuitBreaker(
        "dep", None, 10.0, clock, failure_rate_threshold=90.0, sliding_window_size=4
    )
    fail(breaker, "wrap")
    for _ in range(4):
        invoke(breaker, "wrap")
    m = breaker.metrics()
    assert (m.window_calls, m.window_failures, m.failure_rate) == (4, 0, 0.0)


def test_time_window_expires_old_buckets(clock: FakeClock) -> None:
    """A time-based window drops outcomes older than ``sliding_window_size`` seconds."""
    breaker = CircuitBreaker(
        "dep",
        None,
        10.0,
        clock,
        failure_rate_threshold=90.0,
        sliding_window_type=SlidingWindowType.TIME_BASED,
        sliding_window_size=5,
    )
    fail(breaker, "wrap", 2)
    clock.advance(3.0)
    invoke(breaker, "wrap")
    assert breaker.metrics().window_calls == 3
    clock.advance(2.0)
    assert (breaker.metrics().window_calls, breaker.metrics().window_failures) == (1, 0)
    clock.advance(100.0)
    assert breaker.metrics().window_calls == 0


def test_time_window_trips_on_failures_within_it(clock: FakeClock) -> None:
    """Failures close together in time trip a time-based rate window."""
    breaker = CircuitBreaker(
        "dep",
        None,
        10.0,
        clock,
        failure_rate_threshold=50.0,
        sliding_window_type=SlidingWindowType.TIME_BASED,
        sliding_window_size=2,
        minimum_calls=3,
    )
    for _ in range(3):
        fail(breaker, "call")
        clock.advance(0.5)
    assert state_of(breaker) is BreakerState.OPEN


def test_time_window_spread_failures_do_not_trip(clock: FakeClock) -> None:
    """Failures further apart than the window never accumulate to ``minimum_calls``."""
    breaker = CircuitBreaker(
        "dep",
        None,
        10.0,
        clock,
        failure_rate_threshold=50.0,
        sliding_window_type=SlidingWindowType.TIME_BASED,
        sliding_window_size=2,
        minimum_calls=3,
    )
    for _ in range(10):
        fail(breaker, "call")
        clock.advance(1.5)
    assert state_of(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize("mode", MODES)
def test_slow_calls_trip(clock: FakeClock, mode: str) -> None:
    """Calls slower than the threshold trip the breaker on the slow-call rate."""
    breaker = CircuitBreaker(
        "dep",
        None,
        10.0,
        clock,
        slow_call_duration_threshold=1.0,
        slow_call_rate_threshold=50.0,
        minimum_calls=2,
    )
    invoke(breaker, mode, clock=clock, duration=0.5)
    invoke(breaker, mode, clock=clock, duration=2.0)
    m = breaker.metrics()
    assert m.state is BreakerState.OPEN
    assert (m.window_slow_calls, m.slow_call_rate, m.successful_calls) == (1, 50.0, 2)


def test_slow_trial_counts_as_failure(clock: FakeClock) -> None:
    """In HALF_OPEN a successful but slow trial re-opens a breaker with a slow-call-rate limit."""
    breaker = opened(clock, slow_call_duration_threshold=1.0, slow_call_rate_threshold=50.0)
    clock.advance(10.0)
    assert invoke(breaker, "call", clock=clock, duration=1.5) == "ok"
    assert state_of(breaker) is BreakerState.OPEN


# ------------------------------------------------------------------------------ classification


@pytest.mark.parametrize("mode", MODES)
def test_ignored_exception_is_neither_outcome(clock: FakeClock, mode: str) -> None:
    """An ``ignore_on`` exception propagates and leaves the consecutive count alone."""
    breaker = CircuitBreaker("dep", 2, 10.0, clock, ignore_on=(KeyError,))
    fail(breaker, mode)
    with pytest.raises(KeyError):
        invoke(breaker, mode, exc=KeyError("k"))
    m = breaker.metrics()
    assert (m.consecutive_failures, m.ignored_calls, m.successful_calls) == (1, 1, 0)


@pytest.mark.parametrize("mode", MODES)
def test_unrecorded_exception_counts_as_success(clock: FakeClock, mode: str) -> None:
    """An exception outside ``record_on`` propagates but counts as a success."""
    breaker = CircuitBreaker("dep", 2, 10.0, clock, record_on=(ConnectionError,))
    fail(breaker, mode)
    with pytest.raises(ValueError, match="bad"):
        invoke(breaker, mode, exc=ValueError("bad"))
    fail(breaker, mode)
    m = breaker.metrics()
    assert m.state is BreakerState.CLOSED
    assert (m.successful_calls, m.failed_calls) == (1, 2)


def test_ignore_on_wins_over_record_on(clock: FakeClock) -> None:
    """An exception in both ``record_on`` and ``ignore_on`` is ignored."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, ignore_on=(BoomError,))
    fail(breaker, "call")
    assert state_of(breaker) is BreakerState.CLOSED


# ------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize("mode", MODES)
def test_forced_open_rejects_until_reset(clock: FakeClock, mode: str) -> None:
    """FORCED_OPEN rejects with an infinite retry_after, whatever the clock, until reset."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock)
    breaker.force_open()
    clock.advance(1000.0)
    with pytest.raises(CircuitOpenError) as info:
        invoke(breaker, mode)
    assert math.isinf(info.value.retry_after)
    breaker.reset()
    assert invoke(breaker, mode) == "ok"


@pytest.mark.parametrize("mode", MODES)
def test_forced_closed_records_but_never_trips(clock: FakeClock, mode: str) -> None:
    """FORCED_CLOSED permits every call and counts it, but does not trip."""
    breaker = CircuitBreaker("dep", 2, 10.0, clock, failure_rate_threshold=10.0, minimum_calls=2)
    breaker.force_closed()
    fail(breaker, mode, 5)
    m = breaker.metrics()
    assert m.state is BreakerState.FORCED_CLOSED
    assert (m.failed_calls, m.consecutive_failures, m.failure_rate) == (5, 5, 100.0)


@pytest.mark.parametrize("mode", MODES)
def test_disabled_permits_and_records_nothing(clock: FakeClock, mode: str) -> None:
    """DISABLED lets every call through and records none of them."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock)
    breaker.disable()
    fail(breaker, mode, 3)
    assert invoke(breaker, mode) == "ok"
    m = breaker.metrics()
    assert m.state is BreakerState.DISABLED
    assert (m.failed_calls, m.successful_calls) == (0, 0)


def test_trip_opens_a_closed_breaker(clock: FakeClock) -> None:
    """``trip()`` opens at once with a full recovery timeout."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock)
    assert breaker.trip() is True
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)
    assert info.value.retry_after == 10.0


def test_trip_leaves_operator_overrides_alone(clock: FakeClock) -> None:
    """``trip()`` does not open a FORCED_CLOSED breaker and says so."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock)
    breaker.force_closed()
    assert breaker.trip() is False
    assert state_of(breaker) is BreakerState.FORCED_CLOSED


def test_reset_clears_window_but_keeps_totals(clock: FakeClock) -> None:
    """``reset()`` closes and clears the window; call totals since creation remain."""
    breaker = opened(clock, failure_rate_threshold=50.0, minimum_calls=3)
    breaker.reset()
    m = breaker.metrics()
    assert m.state is BreakerState.CLOSED
    assert (m.window_calls, m.consecutive_failures, m.failed_calls) == (0, 0, 3)


# ------------------------------------------------------------------------------ listeners


def test_listeners_see_every_transition(clock: FakeClock) -> None:
    """Listeners get (breaker, old, new) for each transition, in order."""
    seen: list[tuple[CircuitBreaker, BreakerState, BreakerState]] = []
    breaker = CircuitBreaker("dep", 1, 10.0, clock, listeners=[lambda *a: seen.append(a)])
    fail(breaker, "call")
    clock.advance(10.0)
    invoke(breaker, "call")
    breaker.force_open()
    breaker.reset()
    s = BreakerState
    assert seen == [
        (breaker, s.CLOSED, s.OPEN),
        (breaker, s.OPEN, s.HALF_OPEN),
        (breaker, s.HALF_OPEN, s.CLOSED),
        (breaker, s.CLOSED, s.FORCED_OPEN),
        (breaker, s.FORCED_OPEN, s.CLOSED),
    ]


def test_removed_listener_is_not_called(clock: FakeClock) -> None:
    """After ``remove_listener`` a listener hears nothing more."""
    seen: list[object] = []

    def listener(*args: object) -> None:
        seen.append(args)

    breaker = CircuitBreaker("dep", 1, 10.0, clock)
    breaker.add_listener(listener)
    breaker.remove_listener(listener)
    breaker.trip()
    assert seen == []


def test_removing_an_unknown_listener_raises(clock: FakeClock) -> None:
    """``remove_listener`` of a listener never added raises ValueError."""
    with pytest.raises(ValueError, match="listener"):
        CircuitBreaker("dep", clock=clock).remove_listener(print)


def test_raising_listener_is_logged_and_tolerated(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; later listeners and the breaker carry on."""
    seen: list[BreakerState] = []

    def broken(*args: object) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("dep", 1, 10.0, clock, listeners=[broken])
    breaker.add_listener(lambda b, old, new: seen.append(new))
    with caplog.at_level(logging.ERROR):
        fail(breaker, "call")
    assert state_of(breaker) is BreakerState.OPEN
    assert seen == [BreakerState.OPEN]
    assert "listener bug" in caplog.text


# ------------------------------------------------------------------------------ registry, API


def test_open_breaker_names_lists_open_breakers(clock: FakeClock) -> None:
    """``open_breaker_names()`` has the open and forced-open breakers, not the closed ones."""
    a = CircuitBreaker("names-a", clock=clock)
    b = CircuitBreaker("names-b", clock=clock)
    c = CircuitBreaker("names-c", clock=clock)
    a.trip()
    c.force_open()
    names = open_breaker_names()
    assert "names-a" in names
    assert "names-c" in names
    assert "names-b" not in names
    del b


def test_collected_breaker_leaves_the_registry(clock: FakeClock) -> None:
    """A breaker that is garbage-collected no longer appears in ``open_breaker_names()``."""
    breaker = CircuitBreaker("names-gone", clock=clock)
    breaker.trip()
    assert "names-gone" in open_breaker_names()
    del breaker
    gc.collect()
    assert "names-gone" not in open_breaker_names()


def test_decorator_keeps_sync_and_async_nature(clock: FakeClock) -> None:
    """``@breaker`` returns a coroutine function for an async function, a plain one otherwise."""
    breaker = CircuitBreaker("dep", clock=clock)

    def sync_fn() -> int:
        return 1

    async def async_fn() -> int:
        return 1

    assert not inspect.iscoroutinefunction(breaker(sync_fn))
    assert inspect.iscoroutinefunction(breaker(async_fn))


def test_wrap_preserves_metadata(clock: FakeClock) -> None:
    """The wrapper carries the wrapped function's name and ``__wrapped__``."""

    def fetch_quotes() -> int:
        return 1

    wrapped = CircuitBreaker("dep", clock=clock).wrap(fetch_quotes)
    assert wrapped.__name__ == "fetch_quotes"
    assert wrapped.__wrapped__ is fetch_quotes  # type: ignore[attr-defined]


def test_arguments_are_passed_through(clock: FakeClock) -> None:
    """Positional and keyword arguments reach the function unchanged."""
    breaker = CircuitBreaker("dep", clock=clock)
    assert breaker.call(divmod, 7, 2) == (3, 1)
    assert breaker.wrap(int)("ff", base=16) == 255


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": 2.5}, "failure_threshold"),
        ({"recovery_timeout": -1.0}, "recovery_timeout"),
        ({"recovery_timeout": math.inf}, "recovery_timeout"),
        ({"clock": object()}, "clock"),
        ({"failure_rate_threshold": 0.0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 101.0}, "failure_rate_threshold"),
        ({"sliding_window_type": "count_based"}, "sliding_window_type"),
        ({"sliding_window_size": 0}, "sliding_window_size"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"slow_call_duration_threshold": 0.0}, "slow_call_duration_threshold"),
        ({"slow_call_rate_threshold": 50.0}, "slow_call_rate_threshold"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"record_on": ()}, "record_on"),
        ({"record_on": (int,)}, "record_on"),
        ({"ignore_on": [KeyError]}, "ignore_on"),
        ({"listeners": [42]}, "listeners"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Every invalid argument is refused with an error that names it."""
    args: dict[str, Any] = {"name": "dep", **kwargs}
    with pytest.raises((TypeError, ValueError)) as info:
        CircuitBreaker(**args)
    assert field in str(info.value)


def test_bad_value_is_a_configuration_error() -> None:
    """An out-of-range value raises ConfigurationError with key and value."""
    with pytest.raises(ConfigurationError) as info:
        CircuitBreaker("dep", half_open_max_calls=-3)
    assert (info.value.key, info.value.value) == ("half_open_max_calls", -3)


def test_metrics_reject_negative_counts() -> None:
    """BreakerMetrics refuses a negative counter and names it."""
    with pytest.raises(ValueError, match="failed_calls"):
        BreakerMetrics(
            state=BreakerState.CLOSED,
            failure_rate=-1.0,
            slow_call_rate=-1.0,
            window_calls=0,
            window_failures=0,
            window_slow_calls=0,
            consecutive_failures=0,
            successful_calls=0,
            failed_calls=-1,
            ignored_calls=0,
            rejected_calls=0,
            not_permitted=0,
        )


# ------------------------------------------------------------------------------ memory


def _retained_after(run: Callable[[], None]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        run()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename"))


def test_rejections_do_not_retain_memory_sync() -> None:
    """100,000 sync rejections leave retained memory within a few KiB."""
    breaker = CircuitBreaker("mem", 1, 1e9)
    breaker.trip()
    wrapped = breaker.wrap(lambda: None)

    def run() -> None:
        for _ in range(100_000):
            with contextlib.suppress(CircuitOpenError):
                wrapped()

    run()  # one-off allocations (interned ints, caches) happen outside the measurement
    assert _retained_after(run) < 16 * 1024
    assert breaker.metrics().rejected_calls == 200_000


def test_rejections_do_not_retain_memory_async() -> None:
    """100,000 async rejections leave retained memory within a few KiB."""
    breaker = CircuitBreaker("amem", 1, 1e9)
    breaker.trip()

    async def noop() -> None:
        return None

    wrapped = breaker.awrap(noop)

    async def loop() -> None:
        for _ in range(100_000):
            with contextlib.suppress(CircuitOpenError):
                await wrapped()

    asyncio.run(loop())  # the event loop's own one-off allocations happen outside the measurement
    assert _retained_after(lambda: asyncio.run(loop())) < 16 * 1024
    assert breaker.metrics().rejected_calls == 200_000
