"""Tests that retry and every DecoratorMixin policy refuse generators instead of misjudging them."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from strategylab.fault_tolerance import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from strategylab.fault_tolerance._typing import refuse_generator
from strategylab.testing import FakeClock


def ticks() -> Iterator[int]:
    """A generator function that fails while it is iterated."""
    yield 1
    raise ConnectionError("dropped")


async def aticks() -> AsyncIterator[int]:
    """An async generator function that fails while it is iterated."""
    yield 1
    raise ConnectionError("dropped")


class Ticker:
    """A callable object whose __call__ is a generator function."""

    def __call__(self) -> Iterator[int]:
        yield 1


GENERATORS: list[Callable[[], object]] = [
    ticks,
    aticks,
    functools.partial(ticks),
    Ticker(),
]
GENERATOR_IDS = ["generator", "async-generator", "partial", "callable-object"]


def retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=3, jitter=None, clock=FakeClock())


@pytest.mark.parametrize("fn", GENERATORS, ids=GENERATOR_IDS)
@pytest.mark.parametrize("how", ["wrap", "awrap", "decorator"])
def test_retry_refuses_generator_functions_at_decoration(
    fn: Callable[[], object], how: str
) -> None:
    """wrap, awrap and @policy raise TypeError for a (async) generator function."""
    policy = retry()
    decorate = policy if how == "decorator" else getattr(policy, how)
    with pytest.raises(TypeError, match=r"RetryPolicy cannot guard .*generator"):
        decorate(fn)


def test_refusal_names_the_function_and_what_to_do_instead() -> None:
    """The message names the function, says why, and suggests guarding the producing call."""
    with pytest.raises(TypeError) as info:
        retry().wrap(ticks)
    message = str(info.value)
    assert "ticks" in message
    assert "a generator function" in message
    assert "items already yielded" in message
    assert "guard the call that produces each item" in message


def test_refusal_of_an_async_generator_says_so() -> None:
    """An async generator function is named as one."""
    with pytest.raises(TypeError, match="aticks, an async generator function"):
        retry()(aticks)


def test_call_refuses_a_generator_result_without_retrying() -> None:
    """call() raises TypeError for a generator result, after calling fn once."""
    calls: list[int] = []

    def make() -> Iterator[int]:
        calls.append(1)
        return ticks()

    with pytest.raises(TypeError, match="returned a generator object"):
        retry().call(make)
    assert calls == [1]


def test_call_refuses_an_async_generator_result() -> None:
    """call() raises TypeError for an async generator result."""
    with pytest.raises(TypeError, match="returned an async_generator object"):
        retry().call(aticks)


@pytest.mark.parametrize("fn", [aticks, ticks], ids=["async-generator", "generator"])
async def test_acall_refuses_a_generator_instead_of_awaiting_it(fn: Callable[[], object]) -> None:
    """acall() raises TypeError for a generator in place of an awaitable."""
    with pytest.raises(TypeError, match="RetryPolicy cannot guard"):
        await retry().acall(fn)  # type: ignore[arg-type]


async def test_acall_refusal_is_not_retried_even_when_type_errors_are() -> None:
    """The refusal propagates at once, even with retry_on=TypeError."""
    clock = FakeClock()
    calls: list[int] = []

    def make() -> AsyncIterator[int]:
        calls.append(1)
        return aticks()

    policy = RetryPolicy(max_attempts=5, retry_on=TypeError, jitter=None, clock=clock)
    with pytest.raises(TypeError, match="async_generator"):
        await policy.acall(make)  # type: ignore[arg-type]
    assert calls == [1]
    assert clock.sleeps == []


async def test_acall_still_retries_a_type_error_raised_by_the_call() -> None:
    """A TypeError raised by the awaited call itself is retried as before."""
    clock = FakeClock()
    failures = iter([TypeError("bad"), None])

    async def flaky() -> str:
        error = next(failures)
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(max_attempts=2, retry_on=TypeError, jitter=None, clock=clock)
    assert await policy.acall(flaky) == "ok"
    assert clock.sleeps == [0.1]


def test_call_accepts_an_ordinary_iterable_result() -> None:
    """A function returning a list is not mistaken for a generator."""
    assert retry().call(lambda: [1, 2]) == [1, 2]


def test_wrap_accepts_a_function_that_consumes_a_generator() -> None:
    """Guarding the consumer of a generator is the supported pattern."""

    def consume() -> list[int]:
        return list(range(3))

    assert retry().wrap(consume)() == [0, 1, 2]


def _policies() -> list[tuple[str, object]]:
    return [
        ("Bulkhead", Bulkhead(2)),
        ("Fallback", Fallback.value(None)),
        ("Timeout", Timeout(1.0, clock=FakeClock())),
        ("Pipeline", Pipeline(RetryPolicy(clock=FakeClock()))),
    ]


@pytest.mark.parametrize("fn", [ticks, aticks], ids=["generator", "async-generator"])
@pytest.mark.parametrize(("name", "policy"), _policies(), ids=[n for n, _ in _policies()])
def test_every_decorator_policy_refuses_generator_functions(
    fn: Callable[[], object], name: str, policy: Callable[[Callable[[], object]], object]
) -> None:
    """@policy raises TypeError for a generator function, naming the policy."""
    with pytest.raises(TypeError, match=f"{name} cannot guard"):
        policy(fn)


@pytest.mark.parametrize("fn", [ticks, aticks], ids=["generator", "async-generator"])
@pytest.mark.parametrize("how", ["wrap", "awrap"])
@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("Bulkhead", lambda: Bulkhead(2)),
        ("Fallback", lambda: Fallback.value(None)),
        ("Timeout", lambda: Timeout(1.0)),
        # A sync timeout with layers inside makes the pipeline wrap fn first: it must refuse
        # before that wrapper hides the generator from the inner layers.
        ("Pipeline", lambda: Pipeline(Timeout(1.0), RetryPolicy(clock=FakeClock()))),
    ],
    ids=["Bulkhead", "Fallback", "Timeout", "Pipeline"],
)
def test_wrap_and_awrap_refuse_generator_functions(
    fn: Callable[[], object], how: str, name: str, make: Callable[[], object]
) -> None:
    """Bulkhead, Fallback, Timeout and Pipeline refuse generators in wrap and awrap too."""
    with pytest.raises(TypeError, match=f"{name} cannot guard"):
        getattr(make(), how)(fn)


def test_refuse_generator_lets_ordinary_callables_through() -> None:
    """refuse_generator() returns quietly for functions, partials and classes."""
    # calling the class constructs an instance, not a generator
    for fn in (len, functools.partial(sorted, [2, 1]), Ticker, retry):
        refuse_generator(fn, "Policy")  # raises TypeError on a generator function
    assert RetryPolicy().wrap(functools.partial(sorted, [2, 1]))() == [1, 2]
    assert isinstance(RetryPolicy().wrap(Ticker)(), Ticker)


async def _quote() -> int:
    return 1


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("RetryPolicy", lambda: RetryPolicy(clock=FakeClock())),
        ("circuit breaker", lambda: CircuitBreaker("dep", clock=FakeClock())),
        ("Bulkhead", lambda: Bulkhead(2)),
        ("Fallback", lambda: Fallback.value(None)),
        ("Timeout", lambda: Timeout(1.0)),
        ("Pipeline", lambda: Pipeline(Timeout(1.0), RetryPolicy(clock=FakeClock()))),
    ],
    ids=["RetryPolicy", "CircuitBreaker", "Bulkhead", "Fallback", "Timeout", "Pipeline"],
)
def test_sync_wrap_refuses_a_coroutine_function(name: str, make: Callable[[], Any]) -> None:
    """wrap() of a coroutine function would judge the coroutine's creation: it is refused."""
    with pytest.raises(TypeError, match=f"{name}.*awrap"):
        make().wrap(_quote)


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An ordinary pass-through decorator: it hides a generator function from inspect."""

    @functools.wraps(fn)
    def logged(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return logged


def _consumed(fn: Callable[..., Iterator[int]]) -> Callable[..., list[int]]:
    """A decorator that consumes the generator it wraps: its result is a list."""

    @functools.wraps(fn)
    def consumed(*args: Any, **kwargs: Any) -> list[int]:
        return list(fn(*args, **kwargs))

    return consumed


@pytest.mark.parametrize(
    "make",
    [
        lambda f: CircuitBreaker("dep", clock=FakeClock()).wrap(f),
        lambda f: RetryPolicy(clock=FakeClock()).wrap(f),
        lambda f: Pipeline(RetryPolicy(clock=FakeClock()), CircuitBreaker("d")).wrap(f),
    ],
    ids=["breaker", "retry", "fused-pipeline"],
)
def test_generator_behind_a_wraps_decorator_is_refused_when_called(
    make: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """A generator function hidden by @functools.wraps is refused at its first call."""
    with pytest.raises(TypeError, match="generator"):
        make(_logged(ticks))()


def test_breaker_records_nothing_for_a_hidden_generator() -> None:
    """The refused call is neither a success nor a failure."""
    breaker = CircuitBreaker("dep", clock=FakeClock())
    with pytest.raises(TypeError):
        breaker.wrap(_logged(ticks))()
    metrics = breaker.metrics()
    assert (metrics.successful_calls, metrics.failed_calls) == (0, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda f: CircuitBreaker("dep", clock=FakeClock()).wrap(f),
        lambda f: RetryPolicy(clock=FakeClock()).wrap(f),
    ],
    ids=["breaker", "retry"],
)
def test_a_decorator_that_consumes_its_generator_is_guarded_normally(
    make: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """A wrapper that returns a list, not the generator, works as any function does."""

    def three() -> Iterator[int]:
        yield from (1, 2, 3)

    assert make(_consumed(three))() == [1, 2, 3]


async def test_async_generator_behind_a_wraps_decorator_is_refused_by_awrap() -> None:
    """awrap of a hidden async generator function refuses it at its first call."""
    for policy in (CircuitBreaker("dep", clock=FakeClock()), RetryPolicy(clock=FakeClock())):
        with pytest.raises(TypeError, match="generator"):
            await policy.awrap(_logged(aticks))()


def test_retry_call_refuses_a_generator_from_a_later_attempt() -> None:
    """The first attempt fails, the second returns a generator: refused, not returned."""
    results: list[object] = [ConnectionError("reset"), ticks()]

    def flaky() -> object:
        outcome = results.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(TypeError, match="generator"):
        RetryPolicy(clock=FakeClock(), jitter=None).call(flaky)


async def test_retry_acall_refuses_a_coroutine_that_resolves_to_a_generator() -> None:
    """Awaiting the call gives a generator: refused, as the breaker's acall does."""

    async def make_ticks() -> Iterator[int]:
        return ticks()

    with pytest.raises(TypeError, match="generator"):
        await RetryPolicy(clock=FakeClock()).acall(make_ticks)
