"""The fused retry + breaker wrapper declared with the guarded function's own parameters."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from strategylab.fault_tolerance import CircuitBreaker, Pipeline, RetryPolicy
from strategylab.fault_tolerance._fused import is_fused
from strategylab.testing import FakeClock

SENTINEL: list[int] = []


def _pipeline() -> tuple[Pipeline, CircuitBreaker]:
    breaker = CircuitBreaker("sig", failure_threshold=5, clock=FakeClock())
    retry = RetryPolicy(max_attempts=3, retry_on=ConnectionError, jitter=None, clock=FakeClock())
    return Pipeline(retry, breaker), breaker


def positional_only(a: int, b: int, /) -> tuple[int, int]:
    return a, b


def with_defaults(a: int, b: int = 2, *, c: int = 3, d: int) -> tuple[int, int, int, int]:
    return a, b, c, d


def mutable_default(items: list[int] = SENTINEL) -> bool:
    return items is SENTINEL


def internal_names(result: int, failure: int, exc: int, args: int, kwargs: int) -> int:
    return result + failure + exc + args + kwargs


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "expected"),
    [
        (positional_only, (1, 2), {}, (1, 2)),
        (with_defaults, (1,), {"d": 4}, (1, 2, 3, 4)),
        (with_defaults, (1, 5), {"c": 6, "d": 7}, (1, 5, 6, 7)),
        (with_defaults, (), {"a": 9, "d": 0}, (9, 2, 3, 0)),
        (mutable_default, (), {}, True),
        (internal_names, (1, 2, 3, 4, 5), {}, 15),
        (lambda: "bare", (), {}, "bare"),
    ],
    ids=["positional-only", "defaults", "all-given", "by-keyword", "same-default", "names", "none"],
)
def test_exact_wrapper_passes_arguments_as_the_function_would_bind_them(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], expected: object
) -> None:
    """Positional, keyword, default and keyword-only arguments all reach fn as given."""
    pipeline, _ = _pipeline()
    wrapped = pipeline.wrap(fn)
    assert is_fused(wrapped)
    assert wrapped(*args, **kwargs) == expected


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_retried_attempts_get_the_same_arguments(mode: str) -> None:
    """After a failure the retry calls fn again with the arguments of the first call."""
    seen: list[tuple[int, int, int]] = []

    def flaky(a: int, b: int = 2, *, c: int) -> int:
        seen.append((a, b, c))
        if len(seen) == 1:
            raise ConnectionError("reset")
        return a + b + c

    async def aflaky(a: int, b: int = 2, *, c: int) -> int:
        return flaky(a, b, c=c)

    pipeline, breaker = _pipeline()
    if mode == "sync":
        result = pipeline.wrap(flaky)(1, c=3)
    else:
        result = await pipeline.awrap(aflaky)(1, c=3)
    assert result == 6
    assert seen == [(1, 2, 3), (1, 2, 3)]
    assert breaker.metrics().failed_calls == 1


def test_wrong_arguments_fail_before_the_breaker_counts_anything() -> None:
    """A call that does not match fn's signature is a TypeError the breaker never sees."""
    pipeline, breaker = _pipeline()
    wrapped = pipeline.wrap(positional_only)
    with pytest.raises(TypeError):
        wrapped(1)  # type: ignore[call-arg]
    metrics = breaker.metrics()
    assert (metrics.successful_calls, metrics.failed_calls) == (0, 0)


class Quotes:
    def price(self, symbol: str) -> str:
        return symbol


@pytest.mark.parametrize(
    "fn",
    [
        Quotes().price,
        functools.partial(with_defaults, d=1),
        lambda *args, **kwargs: (args, kwargs),
        len,
    ],
    ids=["bound-method", "partial", "varargs", "builtin"],
)
def test_other_callables_are_fused_with_the_generic_wrapper(fn: Any) -> None:
    """Callables without a plain signature still get the fused pair, declared (*args, **kwargs)."""
    pipeline, _ = _pipeline()
    wrapped = pipeline.wrap(fn)
    assert is_fused(wrapped)
    assert wrapped("ab") == fn("ab")


def test_decorated_method_binds_self() -> None:
    """@pipeline on a method in a class body: the exact wrapper binds like the function."""
    pipeline, breaker = _pipeline()

    class Book:
        @pipeline
        def quote(self, symbol: str, size: int = 1) -> tuple[str, int]:
            return symbol, size

    assert Book().quote("AAPL", size=3) == ("AAPL", 3)
    assert breaker.metrics().successful_calls == 1
