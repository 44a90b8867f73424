"""Call listeners (before call, success, failure, ignored, rejected) and ``last_failure``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import tracemalloc
from typing import TYPE_CHECKING, Any

import pytest

from strategylab.errors import CircuitOpenError
from strategylab.fault_tolerance import (
    BreakerCallListener,
    BreakerState,
    CircuitBreaker,
    Pipeline,
    RetryPolicy,
    open_breaker_names,
)
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

MODES = ["wrap", "call", "decorator", "awrap", "acall", "adecorator", "fused", "afused"]


class BoomError(ConnectionError):
    """The injected failure."""


class Recorder(BreakerCallListener):
    """Writes down every event it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def before_call(self, breaker: CircuitBreaker) -> None:
        self.events.append(("before", breaker.name))

    def on_success(self, breaker: CircuitBreaker, duration: float) -> None:
        self.events.append(("success", duration))

    def on_failure(
        self, breaker: CircuitBreaker, exc: BaseException | None, duration: float, result: object
    ) -> None:
        self.events.append(("failure", type(exc), duration, result))

    def on_ignored(
        self, breaker: CircuitBreaker, exc: BaseException | None, duration: float
    ) -> None:
        self.events.append(("ignored", type(exc), duration))

    def on_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        self.events.append(("rejected", type(error)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=10.0)


def run(
    breaker: CircuitBreaker,
    mode: str,
    clock: FakeClock,
    *,
    raises: BaseException | None = None,
    result: object = "ok",
    duration: float = 0.0,
) -> object:
    """One call through ``breaker`` in ``mode`` (``fused``: a one-attempt retry + breaker)."""

    def body() -> object:
        clock.advance(duration)
        if raises is not None:
            raise raises
        return result

    async def abody() -> object:
        return body()

    once = RetryPolicy(max_attempts=1, clock=clock)
    ways: dict[str, Callable[[], object]] = {
        "wrap": breaker.wrap(body),
        "call": functools.partial(breaker.call, body),
        "decorator": breaker(body),
        "fused": Pipeline(once, breaker).wrap(body),
        "awrap": breaker.awrap(abody),
        "acall": functools.partial(breaker.acall, abody),
        "adecorator": breaker(abody),
        "afused": Pipeline(once, breaker).awrap(abody),
    }
    if not mode.startswith("a"):
        return ways[mode]()

    async def main() -> object:
        return await ways[mode]()  # type: ignore[misc]

    return asyncio.run(main())


# ---------------------------------------------------------------------------- call events


@pytest.mark.parametrize("mode", MODES)
def test_success_publishes_before_and_success(clock: FakeClock, mode: str) -> None:
    """A successful call publishes ``before_call`` then ``on_success`` with its duration."""
    breaker, recorder = CircuitBreaker("dep", clock=clock), Recorder()
    breaker.add_call_listener(recorder)
    assert run(breaker, mode, clock, duration=0.25) == "ok"
    assert recorder.events == [("before", "dep"), ("success", 0.25)]


@pytest.mark.parametrize("mode", MODES)
def test_failure_publishes_the_exception(clock: FakeClock, mode: str) -> None:
    """A failed call publishes ``on_failure`` with the exception and the duration."""
    breaker, recorder = CircuitBreaker("dep", clock=clock), Recorder()
    breaker.add_call_listener(recorder)
    with pytest.raises(BoomError):
        run(breaker, mode, clock, raises=BoomError(), duration=1.5)
    assert recorder.events == [("before", "dep"), ("failure", BoomError, 1.5, None)]


@pytest.mark.parametrize("mode", MODES)
def test_failure_by_result_publishes_the_result(clock: FakeClock, mode: str) -> None:
    """A failure by result publishes ``on_failure`` with no exception and the result."""
    breaker = CircuitBreaker("dep", clock=clock, record_result=lambda r: r == "bad")
    recorder = Recorder()
    breaker.add_call_listener(recorder)
    assert run(breaker, mode, clock, result="bad") == "bad"
    assert recorder.events == [("before", "dep"), ("failure", type(None), 0.0, "bad")]


@pytest.mark.parametrize("mode", MODES)
def test_ignored_exception_publishes_on_ignored(clock: FakeClock, mode: str) -> None:
    """An ignored exception publishes ``on_ignored``."""
    breaker = CircuitBreaker("dep", clock=clock, ignore_on=(KeyError,))
    recorder = Recorder()
    breaker.add_call_listener(recorder)
    with pytest.raises(KeyError):
        run(breaker, mode, clock, raises=KeyError("k"))
    assert recorder.events == [("before", "dep"), ("ignored", KeyError, 0.0)]


@pytest.mark.parametrize("mode", MODES)
def test_rejection_publishes_on_rejected(clock: FakeClock, mode: str) -> None:
    """A call refused by an open breaker publishes only ``on_rejected``."""
    breaker, recorder = CircuitBreaker("dep", clock=clock), Recorder()
    breaker.trip()
    breaker.add_call_listener(recorder)
    with pytest.raises(CircuitOpenError):
        run(breaker, mode, clock)
    assert recorder.events == [("rejected", CircuitOpenError)]


@pytest.mark.parametrize("mode", ["wrap", "awrap", "fused", "afused"])
def test_listener_added_after_wrap_is_honoured(clock: FakeClock, mode: str) -> None:
    """A wrapper built before the listener was added still publishes to it."""
    breaker, recorder = CircuitBreaker("dep", clock=clock), Recorder()
    once = RetryPolicy(max_attempts=1, clock=clock)

    def sync_ok() -> str:
        return "ok"

    async def ok() -> str:
        return "ok"

    if mode == "wrap":
        wrapped: Any = breaker.wrap(sync_ok)
    elif mode == "fused":
        wrapped = Pipeline(once, breaker).wrap(sync_ok)
    elif mode == "awrap":
        wrapped = breaker.awrap(ok)
    else:
        wrapped = Pipeline(once, breaker).awrap(ok)
    breaker.add_call_listener(recorder)
    result = wrapped()
    if mode.startswith("a"):
        result = asyncio.run(result)
    assert result == "ok"
    assert recorder.events == [("before", "dep"), ("success", 0.0)]


def test_removed_listener_hears_nothing(clock: FakeClock) -> None:
    """After ``remove_call_listener`` the listener gets no more events."""
    breaker, recorder = CircuitBreaker("dep", clock=clock), Recorder()
    guarded = breaker.wrap(lambda: "ok")
    breaker.add_call_listener(recorder)
    breaker.remove_call_listener(recorder)
    guarded()
    assert recorder.events == []


def test_removing_an_unknown_call_listener_raises(clock: FakeClock) -> None:
    """Removing a listener that was never added raises ValueError."""
    with pytest.raises(ValueError, match="not a call listener"):
        CircuitBreaker("dep", clock=clock).remove_call_listener(Recorder())


def test_duck_typed_listener_with_one_method(clock: FakeClock) -> None:
    """Any object with at least one event method is a listener; missing methods are skipped."""
    rejected: list[CircuitOpenError] = []

    class OnlyRejections:
        def on_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
            rejected.append(error)

    breaker = CircuitBreaker("dep", clock=clock)
    breaker.add_call_listener(OnlyRejections())
    breaker.call(lambda: "ok")
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: "ok")
    assert rejected == [info.value]


def test_object_without_event_methods_is_refused(clock: FakeClock) -> None:
    """An object with none of the event methods is refused with TypeError."""
    with pytest.raises(TypeError, match="before_call"):
        CircuitBreaker("dep", clock=clock).add_call_listener(object())


@pytest.mark.parametrize("mode", ["wrap", "call", "awrap", "fused"])
def test_raising_listener_is_logged_and_the_call_goes_on(
    clock: FakeClock, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the call's result and the recording are unaffected."""

    class Broken(BreakerCallListener):
        def before_call(self, breaker: CircuitBreaker) -> None:
            raise RuntimeError("listener bug")

        def on_success(self, breaker: CircuitBreaker, duration: float) -> None:
            raise RuntimeError("listener bug")

    breaker = CircuitBreaker("dep", clock=clock)
    breaker.add_call_listener(Broken())
    with caplog.at_level(logging.ERROR):
        assert run(breaker, mode, clock) == "ok"
    assert breaker.metrics().successful_calls == 1
    assert sum("call listener" in r.getMessage() for r in caplog.records) == 2


def test_listeners_leave_the_real_state_readable(clock: FakeClock) -> None:
    """With a listener registered, the state and ``open_breaker_names`` are the real ones."""
    breaker = CircuitBreaker("listened-open", clock=clock)
    breaker.add_call_listener(Recorder())
    breaker.trip()
    assert breaker.state is BreakerState.OPEN
    assert "listened-open" in open_breaker_names()


def test_listener_sees_the_state_after_recording(clock: FakeClock) -> None:
    """``on_failure`` runs after the failure is recorded: the tripping call sees OPEN."""
    states: list[BreakerState] = []

    class Watcher(BreakerCallListener):
        def on_failure(
            self,
            breaker: CircuitBreaker,
            exc: BaseException | None,
            duration: float,
            result: object,
        ) -> None:
            states.append(breaker.state)

    breaker = CircuitBreaker("dep", 1, clock=clock)
    breaker.add_call_listener(Watcher())
    with pytest.raises(BoomError):
        breaker.call(_raise, BoomError())
    assert states == [BreakerState.OPEN]


def test_disabled_breaker_publishes_nothing(clock: FakeClock) -> None:
    """A DISABLED breaker records nothing, so it publishes no call event."""
    breaker, recorder = CircuitBreaker("dep", clock=clock), Recorder()
    breaker.add_call_listener(recorder)
    breaker.disable()
    assert breaker.call(lambda: "ok") == "ok"
    assert recorder.events == []


def _raise(exc: BaseException) -> None:
    raise exc


# ---------------------------------------------------------------------------- last failure


@pytest.mark.parametrize("mode", MODES)
def test_rejection_carries_the_last_failure(clock: FakeClock, mode: str) -> None:
    """Every rejection carries the exception that was last recorded as a failure."""
    breaker = CircuitBreaker("dep", 2, 10.0, clock)
    first, second = BoomError("first"), BoomError("second")
    for exc in (first, second):
        with pytest.raises(BoomError):
            run(breaker, mode, clock, raises=exc)
    with pytest.raises(CircuitOpenError) as info:
        run(breaker, mode, clock)
    assert info.value.last_failure is second
    assert info.value.__cause__ is None


@pytest.mark.parametrize("mode", MODES)
def test_forced_open_rejection_carries_the_last_failure(clock: FakeClock, mode: str) -> None:
    """A FORCED_OPEN rejection carries the last failure too."""
    breaker = CircuitBreaker("dep", 5, 10.0, clock)
    failure = BoomError()
    with pytest.raises(BoomError):
        breaker.call(_raise, failure)
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as info:
        run(breaker, mode, clock)
    assert info.value.last_failure is failure


def test_saturated_half_open_rejection_carries_the_last_failure(clock: FakeClock) -> None:
    """A rejection because HALF_OPEN is full of trials carries the last failure."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock)
    failure = BoomError()
    with pytest.raises(BoomError):
        breaker.call(_raise, failure)
    clock.advance(10.0)
    seen: list[CircuitOpenError] = []

    def trial() -> None:
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(lambda: "unused")
        seen.append(info.value)

    breaker.call(trial)
    assert seen[0].last_failure is failure


def test_no_failure_yet_means_none(clock: FakeClock) -> None:
    """A breaker tripped by hand, with no failure recorded, carries None."""
    breaker = CircuitBreaker("dep", clock=clock)
    breaker.trip()
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: "unused")
    assert info.value.last_failure is None


def test_reset_clears_the_last_failure(clock: FakeClock) -> None:
    """``reset`` forgets the last failure."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock)
    with pytest.raises(BoomError):
        breaker.call(_raise, BoomError())
    breaker.reset()
    assert breaker.last_failure is None


def test_each_rejection_is_a_fresh_instance(clock: FakeClock) -> None:
    """Two rejections are two exception objects sharing one ``last_failure``."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock)
    with pytest.raises(BoomError):
        breaker.call(_raise, BoomError())
    guarded = breaker.wrap(lambda: "unused")
    errors = []
    for _ in range(2):
        with pytest.raises(CircuitOpenError) as info:
            guarded()
        errors.append(info.value)
    assert errors[0] is not errors[1]
    assert errors[0].last_failure is errors[1].last_failure


def test_rejections_with_a_last_failure_retain_no_memory() -> None:
    """Many rejections carrying the last failure leave no memory behind."""
    breaker = CircuitBreaker("mem", 1, 1e9)
    with pytest.raises(BoomError):
        breaker.call(_raise, BoomError())
    guarded = breaker.wrap(lambda: "unused")

    def reject(n: int) -> None:
        for _ in range(n):
            with contextlib.suppress(CircuitOpenError):
                guarded()

    reject(1000)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    reject(20_000)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - before < 4096
