"""Pipeline: composition order, no frame of its own, and a real retry + breaker + fallback stack."""

from __future__ import annotations

import asyncio
import functools
import traceback
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import pytest

from strategylab.errors import BulkheadFullError, CircuitOpenError
from strategylab.fault_tolerance import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from strategylab.fault_tolerance._typing import Policy
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

P = ParamSpec("P")
R = TypeVar("R")


class Recorder:
    """A policy that logs when a call enters and leaves it."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self.log.append(f">{self.name}")
            try:
                return fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.name}")

        wrapper.wrapped_by = self.name  # type: ignore[attr-defined]
        return wrapper

    def awrap(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self.log.append(f">{self.name}")
            try:
                return await fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return wrapper

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.wrap(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.awrap(fn)(*args, **kwargs)


def recorders(log: list[str], *names: str) -> list[Recorder]:
    """One recording policy per name, all writing to ``log``."""
    return [Recorder(name, log) for name in names]


def test_recorder_satisfies_the_policy_protocol() -> None:
    """The test double, and every real policy, is a Policy."""
    policies = [
        Recorder("r", []),
        Bulkhead(1),
        Timeout(1),
        Fallback.value(0),
        Pipeline(),
        RetryPolicy(),
        CircuitBreaker("b"),
    ]
    assert all(isinstance(p, Policy) for p in policies)


# -- order -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["wrap", "call", "decorator"])
def test_sync_layers_run_outermost_first(form: str) -> None:
    """Pipeline(a, b, c) enters a, then b, then c, then the function, and leaves in reverse."""
    log: list[str] = []
    pipeline = Pipeline(*recorders(log, "a", "b", "c"))

    def fn(x: int) -> int:
        log.append("fn")
        return x * 2

    if form == "wrap":
        result = pipeline.wrap(fn)(21)
    elif form == "call":
        result = pipeline.call(fn, 21)
    else:
        result = pipeline(fn)(21)
    assert result == 42
    assert log == [">a", ">b", ">c", "fn", "<c", "<b", "<a"]


@pytest.mark.parametrize("form", ["awrap", "acall", "decorator"])
async def test_async_layers_run_outermost_first(form: str) -> None:
    """The async forms keep the same order as the sync ones."""
    log: list[str] = []
    pipeline = Pipeline(*recorders(log, "a", "b", "c"))

    async def fn(x: int) -> int:
        log.append("fn")
        return x * 2

    if form == "awrap":
        result = await pipeline.awrap(fn)(21)
    elif form == "acall":
        result = await pipeline.acall(fn, 21)
    else:
        result = await pipeline(fn)(21)
    assert result == 42
    assert log == [">a", ">b", ">c", "fn", "<c", "<b", "<a"]


def test_of_builds_the_documented_order() -> None:
    """Pipeline.of orders fallback, total timeout, retry, breaker, attempt timeout, bulkhead."""
    log: list[str] = []
    bulkhead, breaker, retry, timeout, total, fallback = recorders(
        log, "bulkhead", "breaker", "retry", "timeout", "total_timeout", "fallback"
    )
    pipeline = Pipeline.of(
        bulkhead=bulkhead,
        timeout=timeout,
        breaker=breaker,
        retry=retry,
        total_timeout=total,
        fallback=fallback,
    )
    pipeline.call(lambda: None)
    assert log[:6] == [
        ">fallback",
        ">total_timeout",
        ">retry",
        ">breaker",
        ">timeout",
        ">bulkhead",
    ]


def test_of_leaves_out_missing_layers() -> None:
    """Layers given as None are not part of the pipeline."""
    log: list[str] = []
    retry, bulkhead = recorders(log, "retry", "bulkhead")
    pipeline = Pipeline.of(retry=retry, bulkhead=bulkhead)
    assert pipeline.policies == (retry, bulkhead)


def test_nested_pipeline_joins_its_layers() -> None:
    """A pipeline given as a layer is flattened into the outer one."""
    log: list[str] = []
    a, b, c = recorders(log, "a", "b", "c")
    assert Pipeline(a, Pipeline(b, c)).policies == (a, b, c)


def test_non_policy_is_rejected_naming_its_position() -> None:
    """A layer without the policy methods raises TypeError naming its index."""
    with pytest.raises(TypeError, match=r"policies\[1\]"):
        Pipeline(Bulkhead(1), object())  # type: ignore[arg-type]


# -- cost ------------------------------------------------------------------------------------


def test_wrap_returns_the_outermost_layers_own_wrapper() -> None:
    """wrap composes once: the result is the outer layer's wrapper, not a pipeline function."""
    log: list[str] = []
    wrapped = Pipeline(*recorders(log, "outer", "inner")).wrap(lambda: None)
    assert wrapped.wrapped_by == "outer"  # type: ignore[attr-defined]


def test_empty_pipeline_returns_the_function_itself() -> None:
    """A pipeline with no layers adds nothing at all."""

    def fn() -> None:
        return None

    assert Pipeline().wrap(fn) is fn


def test_pipeline_adds_no_frame_of_its_own() -> None:
    """A call through a wrapped pipeline has exactly one frame per layer above the function."""

    def fail() -> None:
        raise KeyError("x")

    frames: list[str] = []

    def handler(exc: Exception) -> int:
        frames.extend(f.name for f in traceback.extract_tb(exc.__traceback__))
        return 0

    wrapped = Pipeline(Fallback(handler, on=LookupError), Bulkhead(1)).wrap(fail)
    wrapped()
    assert frames == ["fallback_wrapper", "bulkhead_wrapper", "fail"]


# -- real policies together ------------------------------------------------------------------


def test_fallback_answers_a_full_bulkhead() -> None:
    """A rejected call is answered by the outer fallback instead of raising."""
    pipeline = Pipeline.of(
        fallback=Fallback.value("busy", on=BulkheadFullError), bulkhead=Bulkhead(1)
    )
    inner = pipeline.wrap(lambda: "done")
    assert pipeline.call(inner) == "busy"


async def test_async_timeout_bounds_the_whole_retried_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A total timeout outside the retry ends the retrying; the fallback answers."""
    attempts: list[int] = []
    never = asyncio.Event()

    async def stuck() -> str:
        attempts.append(1)
        await never.wait()
        return "never"

    pipeline = Pipeline.of(
        fallback=Fallback.value("stale quote", on=TimeoutError),
        total_timeout=Timeout(10),
        retry=RetryPolicy(max_attempts=5, retry_on=TimeoutError, jitter=None),
    )
    task = asyncio.create_task(pipeline.acall(stuck))
    for _ in range(3):
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    now = loop.time()
    monkeypatch.setattr(loop, "time", lambda: now + 11)
    assert await task == "stale quote"
    assert attempts == [1]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_retry_breaker_fallback_pipeline_recovers_then_fails_fast(mode: str) -> None:
    """Flaky: retries succeed. Persistent failure: the breaker opens and the fallback answers."""
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=3, recovery_timeout=60, clock=clock)
    retry = RetryPolicy(
        max_attempts=3,
        base_delay=0.5,
        multiplier=2.0,
        jitter=None,
        retry_on=ConnectionError,
        clock=clock,
    )
    answers: list[Exception] = []

    def fallback(exc: Exception) -> str:
        answers.append(exc)
        return "fallback"

    pipeline = Pipeline.of(
        fallback=Fallback(fallback, on=(ConnectionError, CircuitOpenError)),
        retry=retry,
        breaker=breaker,
        bulkhead=Bulkhead(2),
    )
    failures = [ConnectionError("reset"), ConnectionError("reset")]
    calls: list[str] = []

    def flaky() -> str:
        calls.append("flaky")
        if failures:
            raise failures.pop()
        return "filled"

    def broken() -> str:
        calls.append("broken")
        raise ConnectionError("down")

    async def run(fn: Callable[[], str]) -> str:
        if mode == "sync":
            return pipeline.call(fn)

        async def afn() -> str:
            return fn()

        return await pipeline.acall(afn)

    assert await run(flaky) == "filled"
    assert (calls.count("flaky"), clock.sleeps) == (3, [0.5, 1.0])
    # Success reset the consecutive count: three more failures in a row trip the breaker.
    assert await run(broken) == "fallback"
    assert await run(broken) == "fallback"
    assert calls.count("broken") == 3
    assert isinstance(answers[-1], CircuitOpenError)
