"""Outcome classification: exception predicates and result predicates (record/ignore)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import BreakerState, CircuitBreaker, Pipeline, RetryPolicy
from strategylab.testing import FakeClock

MODES = ["wrap", "call", "decorator", "awrap", "acall", "adecorator"]


class HttpError(Exception):
    """An error carrying a status code, for predicates to look at."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Interrupt(BaseException):
    """A BaseException that is not an Exception."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=50.0)


def run(
    breaker: CircuitBreaker,
    mode: str,
    *,
    raises: BaseException | None = None,
    result: object = "ok",
) -> object:
    """One call through ``breaker`` in ``mode`` that raises ``raises`` or returns ``result``."""

    def body() -> object:
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


def server_error(exc: BaseException) -> bool:
    return isinstance(exc, HttpError) and exc.status >= 500


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call so the type checker does not narrow it."""
    return breaker.state


# -------------------------------------------------------------------- exception predicates


@pytest.mark.parametrize("mode", MODES)
def test_record_on_predicate_counts_matching_exceptions(clock: FakeClock, mode: str) -> None:
    """A ``record_on`` predicate decides which exceptions are failures."""
    breaker = CircuitBreaker("dep", 2, 10.0, clock, record_on=server_error)
    for _ in range(2):
        with pytest.raises(HttpError):
            run(breaker, mode, raises=HttpError(503))
    assert state_of(breaker) is BreakerState.OPEN


@pytest.mark.parametrize("mode", MODES)
def test_record_on_predicate_rejection_counts_as_success(clock: FakeClock, mode: str) -> None:
    """An exception the ``record_on`` predicate rejects counts as a success."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_on=server_error)
    with pytest.raises(HttpError):
        run(breaker, mode, raises=HttpError(404))
    m = breaker.metrics()
    assert (m.state, m.successful_calls, m.failed_calls) == (BreakerState.CLOSED, 1, 0)


@pytest.mark.parametrize("mode", MODES)
def test_ignore_on_predicate_ignores_matching_exceptions(clock: FakeClock, mode: str) -> None:
    """An ``ignore_on`` predicate makes matching exceptions neither success nor failure."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, ignore_on=lambda e: isinstance(e, HttpError))
    with pytest.raises(HttpError):
        run(breaker, mode, raises=HttpError(503))
    m = breaker.metrics()
    assert (m.state, m.ignored_calls, m.failed_calls) == (BreakerState.CLOSED, 1, 0)


def test_single_exception_class_is_accepted(clock: FakeClock) -> None:
    """``record_on`` may be one exception class rather than a tuple."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_on=HttpError)
    with pytest.raises(KeyError):
        breaker.call(_raise, KeyError())
    assert state_of(breaker) is BreakerState.CLOSED
    with pytest.raises(HttpError):
        breaker.call(_raise, HttpError(500))
    assert state_of(breaker) is BreakerState.OPEN


def _raise(exc: BaseException) -> None:
    raise exc


def test_predicate_never_sees_a_cancellation(clock: FakeClock) -> None:
    """A ``record_on`` predicate is asked about Exceptions only: an interrupt stays ignored."""
    asked: list[BaseException] = []

    def everything(exc: BaseException) -> bool:
        asked.append(exc)
        return True

    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_on=everything)
    with pytest.raises(Interrupt):
        breaker.call(_raise, Interrupt())
    assert asked == []
    assert breaker.metrics().ignored_calls == 1


def test_raising_predicate_propagates_and_frees_the_trial(clock: FakeClock) -> None:
    """A predicate that raises propagates its error; the call counts as ignored."""

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in predicate") from exc

    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_on=broken)
    with pytest.raises(RuntimeError, match="bug in predicate"):
        breaker.call(_raise, HttpError(500))
    assert breaker.metrics().ignored_calls == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("record_on", 42), ("ignore_on", (ValueError, 3)), ("record_on", int), ("record_on", ())],
)
def test_bad_matcher_names_the_key(key: str, value: object) -> None:
    """A ``record_on``/``ignore_on`` that is not classes or a predicate is refused by name."""
    settings: dict[str, Any] = {key: value}
    with pytest.raises((TypeError, ConfigurationError), match=key):
        CircuitBreaker("dep", **settings)


# ----------------------------------------------------------------------- result predicates


@pytest.mark.parametrize("mode", MODES)
def test_recorded_result_counts_as_failure_in_closed(clock: FakeClock, mode: str) -> None:
    """A value ``record_result`` accepts is returned, counted as a failure, and trips."""
    breaker = CircuitBreaker("dep", 2, 10.0, clock, record_result=lambda r: r is None)
    assert run(breaker, mode, result=None) is None
    assert breaker.metrics().consecutive_failures == 1
    assert run(breaker, mode, result=None) is None
    m = breaker.metrics()
    assert (m.state, m.failed_calls) == (BreakerState.OPEN, 2)


@pytest.mark.parametrize("mode", MODES)
def test_recorded_result_counts_in_the_rate_window(clock: FakeClock, mode: str) -> None:
    """Failures by result count toward the failure rate of the sliding window."""
    breaker = CircuitBreaker(
        "dep",
        None,
        10.0,
        clock,
        failure_rate_threshold=50.0,
        minimum_calls=4,
        record_result=lambda r: r == "error",
    )
    for result in ("ok", "error", "ok", "error"):
        run(breaker, mode, result=result)
    m = breaker.metrics()
    assert (m.state, m.window_failures, m.failure_rate) == (BreakerState.OPEN, 2, 50.0)


@pytest.mark.parametrize("mode", MODES)
def test_recorded_result_reopens_half_open(clock: FakeClock, mode: str) -> None:
    """In HALF_OPEN a trial whose result is recorded as a failure re-opens the breaker."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_result=lambda r: r == "error")
    run(breaker, mode, result="error")
    clock.advance(10.0)
    assert run(breaker, mode, result="error") == "error"
    assert state_of(breaker) is BreakerState.OPEN


@pytest.mark.parametrize("mode", MODES)
def test_ignored_result_is_neither_outcome(clock: FakeClock, mode: str) -> None:
    """A value ``ignore_result`` accepts is neither success nor failure, even if recorded."""
    breaker = CircuitBreaker(
        "dep", 1, 10.0, clock, record_result=lambda r: r < 0, ignore_result=lambda r: r == -1
    )
    assert run(breaker, mode, result=-1) == -1
    m = breaker.metrics()
    assert (m.state, m.ignored_calls, m.failed_calls, m.successful_calls) == (
        BreakerState.CLOSED,
        1,
        0,
        0,
    )


@pytest.mark.parametrize("mode", MODES)
def test_ignored_result_frees_the_half_open_trial(clock: FakeClock, mode: str) -> None:
    """An ignored result in HALF_OPEN releases the trial and changes nothing else."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, ignore_result=lambda r: r == "meh")
    with pytest.raises(ConnectionError):
        breaker.call(_raise, ConnectionError())
    clock.advance(10.0)
    assert run(breaker, mode, result="meh") == "meh"
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert run(breaker, mode, result="ok") == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize("mode", MODES)
def test_other_results_are_successes(clock: FakeClock, mode: str) -> None:
    """A value neither predicate accepts is a success that clears the consecutive count."""
    breaker = CircuitBreaker("dep", 3, 10.0, clock, record_result=lambda r: r is None)
    run(breaker, mode, result=None)
    run(breaker, mode, result=0)
    m = breaker.metrics()
    assert (m.consecutive_failures, m.successful_calls) == (0, 1)


def test_result_predicate_is_not_consulted_on_exceptions(clock: FakeClock) -> None:
    """Result predicates look only at returned values."""
    seen: list[Any] = []

    def record(result: object) -> bool:
        seen.append(result)
        return False

    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_result=record)
    with pytest.raises(KeyError):
        breaker.call(_raise, KeyError())
    assert seen == []


def test_failure_by_result_rejects_with_no_last_failure(clock: FakeClock) -> None:
    """A breaker tripped by a result carries ``last_failure=None`` in its rejections."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_result=lambda r: r is None)
    breaker.call(lambda: None)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: "unused")
    assert info.value.last_failure is None


@pytest.mark.parametrize("key", ["record_result", "ignore_result"])
def test_non_callable_result_predicate_names_the_key(key: str) -> None:
    """A result predicate that is not callable is refused, naming the key."""
    settings: dict[str, Any] = {key: "yes"}
    with pytest.raises(TypeError, match=key):
        CircuitBreaker("dep", **settings)


def test_result_predicates_work_through_a_pipeline(clock: FakeClock) -> None:
    """A retry + breaker pipeline still records results the breaker rejects."""
    breaker = CircuitBreaker("dep", 1, 10.0, clock, record_result=lambda r: r is None)
    guarded = Pipeline(RetryPolicy(clock=clock, max_attempts=1), breaker).wrap(lambda: None)
    assert guarded() is None
    assert state_of(breaker) is BreakerState.OPEN
