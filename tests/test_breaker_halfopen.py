"""Half-open trials: ignored and cancelled trials, slow trials, and the maximum wait."""

from __future__ import annotations

import asyncio
import math
import types
from typing import TYPE_CHECKING, Any

import pytest

from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import BreakerState, CircuitBreaker
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Generator

SYNC_MODES = ["wrap", "call", "decorator"]
ASYNC_MODES = ["awrap", "acall", "adecorator"]
MODES = SYNC_MODES + ASYNC_MODES


class BoomError(ConnectionError):
    """The failure that trips the breaker."""


class IgnoredError(ConnectionError):
    """An exception the breaker is configured to ignore."""


class Interrupt(BaseException):
    """A BaseException that is not an Exception, like KeyboardInterrupt."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0)


def run(
    breaker: CircuitBreaker,
    mode: str,
    clock: FakeClock,
    *,
    duration: float = 0.0,
    raises: BaseException | None = None,
    result: object = "ok",
) -> object:
    """One call through ``breaker`` in ``mode`` whose body takes ``duration`` fake seconds."""

    def body() -> object:
        clock.advance(duration)
        if raises is not None:
            raise raises
        return result

    async def abody() -> object:
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


def half_open(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    """A breaker tripped by one failure and now HALF_OPEN (recovery timeout 10 s)."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, **kwargs)
    with pytest.raises(BoomError):
        breaker.call(_boom)
    clock.advance(10.0)
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker


def _boom() -> None:
    raise BoomError


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call so the type checker does not narrow it."""
    return breaker.state


# ----------------------------------------------------------------------- ignored trials


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("duration", [0.0, 5.0, 500.0])
def test_ignored_exception_trial_changes_nothing(
    clock: FakeClock, mode: str, duration: float
) -> None:
    """A trial ending in an ``ignore_on`` exception leaves HALF_OPEN as it was, however slow."""
    breaker = half_open(
        clock,
        ignore_on=(IgnoredError,),
        slow_call_duration_threshold=1.0,
        slow_call_rate_threshold=50.0,
        max_wait_in_half_open=None,
    )
    with pytest.raises(IgnoredError):
        run(breaker, mode, clock, duration=duration, raises=IgnoredError())
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.metrics().ignored_calls == 1


@pytest.mark.parametrize("mode", MODES)
def test_ignored_trial_frees_its_place(clock: FakeClock, mode: str) -> None:
    """After an ignored trial the next trial is admitted and can close the breaker."""
    breaker = half_open(clock, ignore_on=(IgnoredError,), slow_call_duration_threshold=1.0)
    with pytest.raises(IgnoredError):
        run(breaker, mode, clock, duration=3.0, raises=IgnoredError())
    assert run(breaker, mode, clock) == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize("mode", MODES)
def test_slow_interrupt_trial_is_ignored(clock: FakeClock, mode: str) -> None:
    """A slow trial ending in a non-Exception BaseException neither opens nor closes."""
    breaker = half_open(clock, slow_call_duration_threshold=1.0, slow_call_rate_threshold=10.0)
    with pytest.raises(Interrupt):
        run(breaker, mode, clock, duration=30.0, raises=Interrupt())
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert run(breaker, mode, clock) == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


async def test_slow_cancelled_trial_is_ignored(clock: FakeClock) -> None:
    """A trial cancelled after a long time frees its place and changes nothing else."""
    breaker = half_open(clock, slow_call_duration_threshold=1.0, slow_call_rate_threshold=10.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.acall(hang))
    await started.wait()
    clock.advance(40.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert await breaker.acall(asyncio.sleep, 0, "ok") == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


# -------------------------------------------------------------------------- slow trials


@pytest.mark.parametrize("mode", MODES)
def test_slow_success_closes_without_a_slow_rate_threshold(clock: FakeClock, mode: str) -> None:
    """With only ``slow_call_duration_threshold`` (metrics) a slow successful trial closes."""
    breaker = half_open(clock, slow_call_duration_threshold=1.0)
    assert run(breaker, mode, clock, duration=5.0) == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize("mode", MODES)
def test_slow_success_reopens_with_a_slow_rate_threshold(clock: FakeClock, mode: str) -> None:
    """With ``slow_call_rate_threshold`` set, a slow successful trial re-opens the breaker."""
    breaker = half_open(clock, slow_call_duration_threshold=1.0, slow_call_rate_threshold=100.0)
    assert run(breaker, mode, clock, duration=1.0) == "ok"
    assert state_of(breaker) is BreakerState.OPEN


@pytest.mark.parametrize("mode", MODES)
def test_unrecorded_exception_trial_counts_as_success(clock: FakeClock, mode: str) -> None:
    """A slow trial raising an exception outside ``record_on`` is a success: it closes."""
    breaker = half_open(clock, record_on=(BoomError,), slow_call_duration_threshold=1.0)
    with pytest.raises(KeyError):
        run(breaker, mode, clock, duration=3.0, raises=KeyError("x"))
    assert state_of(breaker) is BreakerState.CLOSED


# ----------------------------------------------------------------------- maximum wait


def test_default_max_wait_is_sixty_seconds(clock: FakeClock) -> None:
    """The default bounds HALF_OPEN at 60 s, so a hung trial cannot wedge the breaker."""
    assert CircuitBreaker("dep", clock=clock).max_wait_in_half_open == 60.0


@pytest.mark.parametrize("value", [None, 0, 0.0])
def test_none_or_zero_max_wait_waits_for_ever(clock: FakeClock, value: float | None) -> None:
    """``None`` and ``0`` (resilience4j's 0) mean no maximum wait."""
    breaker = half_open(clock, max_wait_in_half_open=value)
    assert breaker.max_wait_in_half_open is None
    hung = breaker.wrap(lambda: "unused")
    _hold_trial(breaker)
    clock.advance(1e6)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        hung()


@types.coroutine
def _suspend() -> Generator[None, None, None]:
    yield


async def _never_returns() -> None:
    await _suspend()


def _hold_trial(breaker: CircuitBreaker) -> None:
    """Take a trial place and never give it back, as a trial that never returns would."""
    coro = breaker.acall(_never_returns)
    coro.send(None)  # the trial is admitted, then suspends until the test ends
    # Dropping the coroutine unclosed would record its GeneratorExit; keep it alive instead.
    _HELD.append(coro)


_HELD: list[Any] = []


@pytest.fixture(autouse=True)
def _release_held() -> Any:
    yield
    for coro in _HELD:
        coro.close()
    _HELD.clear()


@pytest.mark.parametrize("mode", MODES)
def test_hung_trial_reopens_after_max_wait(clock: FakeClock, mode: str) -> None:
    """With the only trial hung, HALF_OPEN turns OPEN after ``max_wait_in_half_open`` seconds."""
    breaker = half_open(clock, max_wait_in_half_open=20.0)
    _hold_trial(breaker)
    clock.advance(19.9)
    with pytest.raises(CircuitOpenError) as saturated:
        run(breaker, mode, clock)
    assert saturated.value.retry_after == 0.0
    clock.advance(0.1)
    with pytest.raises(CircuitOpenError) as info:
        run(breaker, mode, clock)
    assert state_of(breaker) is BreakerState.OPEN
    assert info.value.retry_after == pytest.approx(10.0)


@pytest.mark.parametrize("mode", MODES)
def test_after_max_wait_a_new_trial_is_admitted(clock: FakeClock, mode: str) -> None:
    """Once the fresh recovery timeout passes, a new trial runs and can close the breaker."""
    breaker = half_open(clock, max_wait_in_half_open=20.0)
    _hold_trial(breaker)
    clock.advance(20.0 + 10.0)
    assert run(breaker, mode, clock) == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


def test_max_wait_is_evaluated_on_reading_the_state(clock: FakeClock) -> None:
    """Reading ``state`` or ``metrics()`` applies the maximum wait; no call is needed."""
    breaker = half_open(clock, max_wait_in_half_open=5.0)
    _hold_trial(breaker)
    clock.advance(5.0)
    assert breaker.metrics().state is BreakerState.OPEN


def test_max_wait_expiry_notifies_listeners(clock: FakeClock) -> None:
    """The expiry is a HALF_OPEN -> OPEN transition that state listeners see."""
    breaker = half_open(clock, max_wait_in_half_open=5.0)
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda _b, old, new: seen.append((old, new)))
    _hold_trial(breaker)
    clock.advance(6.0)
    assert breaker.state is BreakerState.OPEN
    assert seen == [(BreakerState.HALF_OPEN, BreakerState.OPEN)]


def test_reopened_breaker_waits_from_the_moment_the_wait_ran_out(clock: FakeClock) -> None:
    """The fresh recovery timeout starts when the maximum wait ran out, as a timer would."""
    breaker = half_open(clock, max_wait_in_half_open=5.0)
    _hold_trial(breaker)
    clock.advance(8.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: "unused")
    assert info.value.retry_after == pytest.approx(7.0)


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_trial_returning_after_max_wait_is_not_counted(clock: FakeClock, outcome: str) -> None:
    """A trial that outlives the half-open period neither closes nor re-opens the new period."""
    breaker = half_open(clock, max_wait_in_half_open=5.0)

    def late() -> str:
        clock.advance(6.0)
        if outcome == "failure":
            raise BoomError
        return "late"

    if outcome == "failure":
        with pytest.raises(BoomError):
            breaker.call(late)
    else:
        assert breaker.call(late) == "late"
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: "unused")
    assert state_of(breaker) is BreakerState.OPEN
    assert info.value.retry_after == pytest.approx(9.0)


def test_decided_half_open_is_not_reopened_by_the_wait(clock: FakeClock) -> None:
    """A breaker closed by its trial is not affected when the maximum wait would have passed."""
    breaker = half_open(clock, max_wait_in_half_open=5.0)
    breaker.call(lambda: "ok")
    clock.advance(100.0)
    assert state_of(breaker) is BreakerState.CLOSED


def test_max_wait_with_several_trial_places(clock: FakeClock) -> None:
    """One success out of two trials, the other hung: after the wait the breaker re-opens."""
    breaker = half_open(clock, half_open_max_calls=2, max_wait_in_half_open=30.0)
    _hold_trial(breaker)
    assert breaker.call(lambda: "ok") == "ok"
    assert state_of(breaker) is BreakerState.HALF_OPEN
    clock.advance(30.0)
    assert state_of(breaker) is BreakerState.OPEN


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1.0, ConfigurationError),
        (math.nan, ConfigurationError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_bad_max_wait_names_the_key(value: object, error: type[Exception]) -> None:
    """A negative, NaN or non-number maximum wait is refused, naming the key."""
    with pytest.raises(error, match="max_wait_in_half_open"):
        CircuitBreaker("dep", max_wait_in_half_open=value)  # type: ignore[arg-type]


def test_infinite_max_wait_waits_for_ever(clock: FakeClock) -> None:
    """``math.inf`` is accepted and means the same as None."""
    assert (
        CircuitBreaker("dep", clock=clock, max_wait_in_half_open=math.inf).max_wait_in_half_open
        is None
    )
