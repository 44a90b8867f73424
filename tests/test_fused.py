"""The fused retry + breaker wrapper behaves exactly like the two wrappers nested by hand."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import TYPE_CHECKING, Any

import pytest

from strategylab.errors import CircuitOpenError
from strategylab.fault_tolerance import (
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    Pipeline,
    RetryPolicy,
)
from strategylab.fault_tolerance._fused import is_fused
from strategylab.fault_tolerance._retry import RetryDetails
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable


class Interrupt(BaseException):
    """A BaseException that is not an Exception."""


Outcome = int | type[BaseException]
"""What the protected function does on one invocation: return the int, or raise the type."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A script for the protected function and the steps a test drives through the wrapper."""

    name: str
    outcomes: tuple[Outcome, ...]
    steps: tuple[str, ...]
    retry: dict[str, Any] = dataclasses.field(default_factory=dict)
    breaker: dict[str, Any] = dataclasses.field(default_factory=dict)


def _not_reset(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionResetError)


CE = ConnectionError
SCENARIOS = [
    Scenario(name="successes", outcomes=(1, 2, 3), steps=("call", "call", "call")),
    Scenario(name="recovers", outcomes=(CE, CE, 7), steps=("call",)),
    Scenario(
        name="gives_up", outcomes=(), steps=("call", "call"), breaker={"failure_threshold": 10}
    ),
    Scenario(
        name="trips_mid_retry_and_retries_open",
        outcomes=(CE, CE, 5, 6),
        steps=("call", "call", "advance", "call", "call"),
        retry={"max_attempts": 4},
        breaker={"failure_threshold": 2},
    ),
    Scenario(
        name="open_not_retried",
        outcomes=(CE, 1),
        steps=("call", "call", "advance", "call"),
        retry={"retry_on": ConnectionError},
        breaker={"failure_threshold": 1},
    ),
    Scenario(
        name="non_retryable_is_recorded",
        outcomes=(ValueError, ValueError, 3),
        steps=("call", "call", "call"),
        retry={"retry_on": ConnectionError},
        breaker={"failure_threshold": 2},
    ),
    Scenario(
        name="predicate",
        outcomes=(ConnectionRefusedError, ConnectionResetError, ConnectionResetError, 4),
        steps=("call", "call", "call"),
        retry={"retry_on": _not_reset},
    ),
    Scenario(
        name="ignored_by_breaker",
        outcomes=(KeyError, KeyError, 1),
        steps=("call",),
        breaker={"failure_threshold": 1, "ignore_on": (KeyError,)},
    ),
    Scenario(
        name="unrecorded_error_counts_as_success",
        outcomes=(ValueError, CE, 2),
        steps=("call",),
        breaker={"failure_threshold": 1, "record_on": (ConnectionError,)},
    ),
    Scenario(
        name="interrupt_not_swallowed",
        outcomes=(Interrupt, 1, CE, Interrupt),
        steps=("call", "call", "call"),
    ),
    Scenario(
        name="interrupt_recorded_when_named",
        outcomes=(Interrupt, 1),
        steps=("call", "call"),
        breaker={"failure_threshold": 1, "record_on": (Exception, Interrupt)},
    ),
    Scenario(
        name="overrides",
        outcomes=(CE, CE, CE, 1, CE, 2, 3, 4),
        steps=(
            "force_open",
            "call",
            "force_closed",
            "call",
            "call",
            "disable",
            "call",
            "reset",
            "call",
        ),
        breaker={"failure_threshold": 1},
    ),
    Scenario(
        name="kwargs",
        outcomes=(CE, 1, 2, CE, 3),
        steps=("call_kw", "call", "call_kw"),
    ),
    Scenario(
        name="half_open_trial_fails",
        outcomes=(CE, CE, CE),
        steps=("call", "advance", "call", "advance", "call"),
        retry={"max_attempts": 2},
        breaker={"failure_threshold": 1},
    ),
    Scenario(
        name="single_attempt",
        outcomes=(CE, 1, CE, CE, 2),
        steps=("call", "call", "call", "call", "trip", "call"),
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 2},
    ),
]


@dataclasses.dataclass(slots=True)
class Record:
    """Everything observable about one run of a scenario."""

    results: list[tuple[object, ...]] = dataclasses.field(default_factory=list)
    invocations: list[tuple[tuple[object, ...], dict[str, object]]] = dataclasses.field(
        default_factory=list
    )
    metrics: list[object] = dataclasses.field(default_factory=list)
    hooks: list[tuple[object, ...]] = dataclasses.field(default_factory=list)
    transitions: list[tuple[BreakerState, BreakerState]] = dataclasses.field(default_factory=list)
    sleeps: list[float] = dataclasses.field(default_factory=list)


def _hook(record: Record, kind: str) -> Callable[[RetryDetails], None]:
    def hook(details: RetryDetails) -> None:
        error = details.exception
        record.hooks.append(
            (
                kind,
                details.name,
                details.attempt,
                details.delay,
                details.elapsed,
                None if error is None else (type(error), str(error)),
            )
        )

    return hook


def _build(scenario: Scenario, record: Record) -> tuple[RetryPolicy, CircuitBreaker, FakeClock]:
    clock = FakeClock()
    retry = RetryPolicy(
        **{
            "max_attempts": 3,
            "jitter": random.Random(1234),
            "clock": clock,
            "before_sleep": _hook(record, "before_sleep"),
            "on_give_up": _hook(record, "on_give_up"),
            **scenario.retry,
        }
    )
    breaker = CircuitBreaker(
        "fused",
        **{
            "failure_threshold": 3,
            "recovery_timeout": 10.0,
            "clock": clock,
            "listeners": [lambda _b, old, new: record.transitions.append((old, new))],
            **scenario.breaker,
        },
    )
    return retry, breaker, clock


def _next_outcome(record: Record, script: list[Outcome], args: Any, kwargs: Any) -> int:
    record.invocations.append((args, kwargs))
    outcome = script.pop(0) if script else ConnectionError
    if isinstance(outcome, type):
        raise outcome(f"invocation {len(record.invocations)}")
    return outcome


def _step(step: str, breaker: CircuitBreaker, clock: FakeClock) -> None:
    if step == "advance":
        clock.advance(60.0)
    else:
        getattr(breaker, step)()


async def drive(mode: str, scenario: Scenario, *, fused: bool) -> Record:
    """Run ``scenario`` through the fused pipeline or the hand-nested wrappers."""
    record = Record()
    retry, breaker, clock = _build(scenario, record)
    script = list(scenario.outcomes)

    def fn(*args: object, **kwargs: object) -> int:
        return _next_outcome(record, script, args, kwargs)

    async def afn(*args: object, **kwargs: object) -> int:
        await asyncio.sleep(0)
        return _next_outcome(record, script, args, kwargs)

    if mode == "sync":
        wrapped: Any = Pipeline(retry, breaker).wrap(fn) if fused else retry.wrap(breaker.wrap(fn))
    else:
        wrapped = Pipeline(retry, breaker).awrap(afn) if fused else retry.awrap(breaker.awrap(afn))
    assert is_fused(wrapped) is fused
    for step in scenario.steps:
        if step.startswith("call"):
            args, kwargs = ((1, 2), {"key": "value"}) if step == "call_kw" else ((), {})
            try:
                result = wrapped(*args, **kwargs)
                if mode == "async":
                    result = await result
            except (Exception, Interrupt) as exc:
                record.results.append(("raised", type(exc), str(exc)))
            else:
                record.results.append(("returned", result))
        else:
            _step(step, breaker, clock)
        record.metrics.append(breaker.metrics())
    record.sleeps = clock.sleeps
    return record


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_fused_matches_nested(mode: str, scenario: Scenario) -> None:
    """Outcomes, invocations, breaker metrics, hooks, transitions and sleeps are identical."""
    fused = await drive(mode, scenario, fused=True)
    nested = await drive(mode, scenario, fused=False)
    assert fused.invocations
    assert fused == nested


@pytest.mark.parametrize("mode", MODES)
async def test_scenarios_exercise_the_slow_paths(mode: str) -> None:
    """The scenarios really retry, sleep, trip and reject (so the comparison covers them)."""
    records = [await drive(mode, s, fused=True) for s in SCENARIOS]
    assert any(r.sleeps for r in records)
    assert any((BreakerState.CLOSED, BreakerState.OPEN) in r.transitions for r in records)
    # A call returns after the breaker tripped and recovered (6 comes after the trip).
    assert any(res[:2] == ("returned", 6) for r in records for res in r.results)
    assert any(("raised", CircuitOpenError) == res[:2] for r in records for res in r.results)
    assert any(("raised", Interrupt) == res[:2] for r in records for res in r.results)


def _retry(**changes: Any) -> RetryPolicy:
    return RetryPolicy(clock=FakeClock(), **changes)


def _breaker(**changes: Any) -> CircuitBreaker:
    return CircuitBreaker("eligibility", clock=FakeClock(), **changes)


def _wrap(pipeline: Pipeline, mode: str) -> Callable[..., Any]:
    if mode == "sync":
        return pipeline.wrap(lambda: 1)

    async def afn() -> int:
        return 1

    return pipeline.awrap(afn)


def _chain(fn: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The wrapper and every wrapper it wraps, through ``__wrapped__``."""
    chain = [fn]
    while hasattr(chain[-1], "__wrapped__"):
        chain.append(chain[-1].__wrapped__)
    return chain


class _MyRetry(RetryPolicy):
    """A subclass, which may override wrap()."""


class _MyBreaker(CircuitBreaker):
    """A subclass, which may override wrap()."""


ELIGIBLE: dict[str, Callable[[], Pipeline]] = {
    "positional": lambda: Pipeline(_retry(), _breaker()),
    "of": lambda: Pipeline.of(retry=_retry(), breaker=_breaker()),
    "with_bulkhead": lambda: Pipeline.of(retry=_retry(), breaker=_breaker(), bulkhead=Bulkhead(2)),
    "predicate_and_hooks": lambda: Pipeline(
        _retry(retry_on=lambda _e: True, before_sleep=print), _breaker(ignore_on=(KeyError,))
    ),
}

INELIGIBLE: dict[str, Callable[[], Pipeline]] = {
    "deadline": lambda: Pipeline(_retry(deadline=5.0), _breaker()),
    "retry_on_result": lambda: Pipeline(_retry(retry_on_result=lambda r: r is None), _breaker()),
    "failure_rate": lambda: Pipeline(_retry(), _breaker(failure_rate_threshold=50.0)),
    "slow_calls": lambda: Pipeline(_retry(), _breaker(slow_call_duration_threshold=1.0)),
    "retry_subclass": lambda: Pipeline(_MyRetry(), _breaker()),
    "breaker_subclass": lambda: Pipeline(_retry(), _MyBreaker("sub")),
    "breaker_outside": lambda: Pipeline(_breaker(), _retry()),
    "not_adjacent": lambda: Pipeline(_retry(), Bulkhead(2), _breaker()),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", ELIGIBLE.values(), ids=ELIGIBLE.keys())
def test_eligible_pair_is_fused(mode: str, make: Callable[[], Pipeline]) -> None:
    """A plain retry directly around a fast-driver breaker becomes the fused wrapper."""
    assert is_fused(_wrap(make(), mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", INELIGIBLE.values(), ids=INELIGIBLE.keys())
def test_ineligible_pair_is_not_fused(mode: str, make: Callable[[], Pipeline]) -> None:
    """No layer of an ineligible pipeline is a fused wrapper."""
    assert not any(is_fused(layer) for layer in _chain(_wrap(make(), mode)))


@pytest.mark.parametrize("mode", MODES)
def test_fused_wrapper_keeps_the_function_metadata(mode: str) -> None:
    """The fused wrapper carries the function's name and wraps the breaker-guarded function."""

    def fetch() -> int:
        """Fetch a thing."""
        return 1

    async def afetch() -> int:
        """Fetch a thing."""
        return 1

    pipeline = Pipeline(_retry(), _breaker())
    fn: Callable[..., Any] = fetch if mode == "sync" else afetch
    wrapped = pipeline.wrap(fetch) if mode == "sync" else pipeline.awrap(afetch)
    assert (wrapped.__qualname__, wrapped.__doc__) == (fn.__qualname__, fn.__doc__)
    assert _chain(wrapped)[2] is fn


def test_fused_async_wrapper_is_a_coroutine_function() -> None:
    """Decorator-style detection still sees the fused async wrapper as async."""

    async def afn() -> int:
        return 1

    assert asyncio.iscoroutinefunction(Pipeline(_retry(), _breaker()).awrap(afn))


async def test_fused_async_propagates_task_cancellation() -> None:
    """Cancelling a task inside the fused wrapper raises CancelledError; the breaker ignores it."""
    breaker = _breaker(failure_threshold=1)
    started = asyncio.Event()

    async def slow() -> int:
        started.set()
        await asyncio.Event().wait()
        return 1

    wrapped = Pipeline(_retry(), breaker).awrap(slow)
    task = asyncio.ensure_future(wrapped())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    metrics = breaker.metrics()
    assert (metrics.state, metrics.ignored_calls, metrics.failed_calls) == (
        BreakerState.CLOSED,
        1,
        0,
    )


def test_fused_success_counts_under_threads() -> None:
    """Successes through the fused wrapper are counted exactly when threads call it at once."""
    import threading  # noqa: PLC0415 - only this test needs it

    breaker = _breaker()
    wrapped = Pipeline(_retry(), breaker).wrap(lambda: 1)

    def worker() -> None:
        for _ in range(2_000):
            wrapped()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.metrics().successful_calls == 8_000


def _is_none(result: object) -> bool:
    return result is None


def test_breaker_with_result_predicate_is_not_fused() -> None:
    """A breaker that inspects results needs its general driver, so the pair is not fused."""
    pipeline = Pipeline(_retry(), _breaker(record_result=_is_none))
    assert not is_fused(pipeline.wrap(_one))


def _one() -> int:
    return 1


class _CallRecorder:
    """A call listener that writes down the events it hears."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def before_call(self, breaker: CircuitBreaker) -> None:
        self.events.append("before")

    def on_success(self, breaker: CircuitBreaker, duration: float) -> None:
        self.events.append("success")

    def on_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        self.events.append("rejected")


async def _invoke(wrapped: Callable[[], Any], mode: str) -> Any:
    result = wrapped()
    return await result if mode == "async" else result


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fused", [True, False])
async def test_fused_wrapper_publishes_to_call_listeners(mode: str, fused: bool) -> None:
    """A call listener added after wrapping hears the same events, fused or nested."""

    def fn() -> int:
        return 1

    async def afn() -> int:
        return 1

    breaker, retry, recorder = _breaker(), _retry(max_attempts=1), _CallRecorder()
    if mode == "sync":
        wrapped: Any = Pipeline(retry, breaker).wrap(fn) if fused else retry.wrap(breaker.wrap(fn))
    else:
        wrapped = Pipeline(retry, breaker).awrap(afn) if fused else retry.awrap(breaker.awrap(afn))
    assert is_fused(wrapped) is fused
    breaker.add_call_listener(recorder)
    assert [await _invoke(wrapped, mode) for _ in range(2)] == [1, 1]
    breaker.trip()
    with pytest.raises(CircuitOpenError):
        await _invoke(wrapped, mode)
    assert recorder.events == ["before", "success", "before", "success", "rejected"]
