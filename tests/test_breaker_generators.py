"""Generators are refused by the breaker: their outcome happens while they are iterated."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

import pytest

from strategylab.fault_tolerance import BreakerState, CircuitBreaker, Pipeline, RetryPolicy
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator


def numbers() -> Iterator[int]:
    yield 1
    raise ConnectionError


async def anumbers() -> AsyncIterator[int]:
    yield 1
    raise ConnectionError


class Source:
    """Generator methods of every kind, and a callable object whose ``__call__`` generates."""

    def items(self) -> Iterator[int]:
        yield 1

    async def aitems(self) -> AsyncIterator[int]:
        yield 1

    @staticmethod
    def static_items() -> Iterator[int]:
        yield 1

    @classmethod
    def class_items(cls) -> Iterator[int]:
        yield 1

    def __call__(self) -> Iterator[int]:
        yield 1


GENERATOR_FUNCTIONS: list[Callable[..., Any]] = [
    numbers,
    anumbers,
    Source().items,
    Source().aitems,
    Source.static_items,
    Source.class_items,
    functools.partial(numbers),
    Source(),
]
IDS = ["gen", "asyncgen", "method", "async_method", "static", "class", "partial", "callable"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("dep", 1, 10.0, clock)


@pytest.mark.parametrize("fn", GENERATOR_FUNCTIONS, ids=IDS)
@pytest.mark.parametrize("way", ["wrap", "awrap", "decorator"])
def test_generator_function_is_refused_at_wrap_time(
    breaker: CircuitBreaker, fn: Callable[..., Any], way: str
) -> None:
    """wrap, awrap and the decorator raise TypeError for any generator function."""
    with pytest.raises(TypeError, match="generator") as info:
        getattr(breaker, way if way != "decorator" else "__call__")(fn)
    assert "'dep'" in str(info.value)
    assert "consumes" in str(info.value)


def test_refusal_names_the_function(breaker: CircuitBreaker) -> None:
    """The TypeError names the generator function it refused."""
    with pytest.raises(TypeError, match=r"numbers"):
        breaker.wrap(numbers)


def test_staticmethod_object_is_refused_in_a_class_body(breaker: CircuitBreaker) -> None:
    """Decorating a staticmethod object that wraps a generator function is refused too."""
    with pytest.raises(TypeError, match="generator"):
        breaker(staticmethod(numbers))


def test_ordinary_callables_are_accepted(breaker: CircuitBreaker) -> None:
    """Functions, lambdas returning lists, partials and classes are wrapped as before."""
    assert breaker.wrap(len)([1, 2]) == 2
    assert breaker.wrap(lambda: [1])() == [1]
    assert breaker.wrap(functools.partial(sum, [1]))() == 1
    assert breaker.wrap(dict)(a=1) == {"a": 1}
    assert breaker.metrics().successful_calls == 4


@pytest.mark.parametrize("fn", [numbers, anumbers], ids=["gen", "asyncgen"])
def test_call_refuses_a_generator_result(breaker: CircuitBreaker, fn: Callable[..., Any]) -> None:
    """``call`` raises TypeError for a generator it got back, and records nothing."""
    with pytest.raises(TypeError, match="generator"):
        breaker.call(fn)
    m = breaker.metrics()
    assert (m.successful_calls, m.failed_calls, m.ignored_calls) == (0, 0, 0)


def test_call_refuses_a_lambda_returning_a_generator(breaker: CircuitBreaker) -> None:
    """A plain function that returns a generator expression is refused by ``call`` too."""
    with pytest.raises(TypeError, match="generator"):
        breaker.call(lambda: (i for i in range(3)))
    assert breaker.metrics().successful_calls == 0


@pytest.mark.parametrize("fn", [anumbers, numbers], ids=["asyncgen", "gen"])
async def test_acall_refuses_generators(breaker: CircuitBreaker, fn: Callable[..., Any]) -> None:
    """``acall`` raises TypeError for an async generator function, records nothing."""
    with pytest.raises(TypeError, match="generator"):
        await breaker.acall(fn)
    m = breaker.metrics()
    assert (m.successful_calls, m.failed_calls, m.ignored_calls) == (0, 0, 0)


async def test_acall_refuses_a_coroutine_resolving_to_a_generator(breaker: CircuitBreaker) -> None:
    """An async function whose result is a generator is refused after it is awaited."""

    async def make() -> Iterator[int]:
        return numbers()

    with pytest.raises(TypeError, match="generator"):
        await breaker.acall(make)
    assert breaker.metrics().successful_calls == 0


@pytest.mark.parametrize("way", ["call", "acall"])
def test_refused_generator_frees_the_half_open_trial(
    breaker: CircuitBreaker, clock: FakeClock, way: str
) -> None:
    """A trial refused for returning a generator gives back its place; the next can close."""
    with pytest.raises(ConnectionError):
        breaker.call(_fail)
    clock.advance(10.0)

    def refused() -> object:
        if way == "call":
            return breaker.call(numbers)
        return asyncio.run(breaker.acall(anumbers))  # type: ignore[arg-type]

    with pytest.raises(TypeError):
        refused()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.call(lambda: "ok") == "ok"
    assert state_of(breaker) is BreakerState.CLOSED


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call so the type checker does not narrow it."""
    return breaker.state


def _fail() -> None:
    raise ConnectionError


@pytest.mark.parametrize("fn", [numbers, anumbers], ids=["gen", "asyncgen"])
def test_fused_pipeline_refuses_generators(fn: Callable[..., Any]) -> None:
    """A retry + breaker pipeline (fused) refuses generator functions when it is built."""
    retry, breaker = RetryPolicy(clock=FakeClock()), CircuitBreaker("dep", clock=FakeClock())
    with pytest.raises(TypeError, match="generator"):
        Pipeline(retry, breaker).wrap(fn)
    with pytest.raises(TypeError, match="generator"):
        Pipeline(retry, breaker).awrap(fn)
