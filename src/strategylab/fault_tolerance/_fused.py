"""A retry around a circuit breaker, fused into one wrapper.

``Pipeline(retry, breaker).wrap(fn)`` would nest two wrappers, ``retry.wrap(breaker.wrap(fn))``: two
frames (two coroutines when async) and two ``*args``/``**kwargs`` hand-overs on every call. When
both layers are in their plain configuration, :func:`fuse_sync`/:func:`fuse_async` build one
wrapper instead that behaves exactly like the nested pair:

- CLOSED breaker: the wrapper calls ``fn`` itself and records the outcome in the breaker the way the
  breaker's own fast driver does (a success is one lock-free counter bump; any exception goes
  through the breaker's ``_on_error``). A failure the retry's ``retry_on`` accepts is then handed to
  the retry's own slow path with the *guarded* callable (``breaker.wrap(fn)``, built once), so every
  later attempt goes through the breaker as in the nested pair.
- Any other state, or call listeners registered on the breaker: the call goes to the nested pair
  itself, built once at wrap time. The wrapper tests the breaker's ``_gate``, which equals its state
  only while it has no call listener, so listeners cost the fused path nothing until one is added.
- A generator function is refused with ``TypeError`` when the pair is built, by ``breaker.wrap``;
  a function whose ``__wrapped__`` chain hides one is not fused, so that the nested pair checks
  each of its results.

Only exact :class:`RetryPolicy` and :class:`CircuitBreaker` instances are fused (a subclass may
override ``wrap``), and only a retry without ``deadline`` or ``retry_on_result`` (its plain wrapper
shape) around a breaker without a rate window, slow-call threshold or result predicate (its fast
driver).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._breaker import _CLOSED, _RECORD, CircuitBreaker
from ._retry import RetryPolicy
from ._typing import hides_generator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["fuse_async", "fuse_sync"]

P = ParamSpec("P")
R = TypeVar("R")


def _eligible(outer: object, inner: object) -> bool:
    """Whether ``outer(inner(fn))`` is a plain retry around a fast-driver breaker."""
    return (
        type(outer) is RetryPolicy
        and type(inner) is CircuitBreaker
        and outer.deadline is None
        and outer.retry_on_result is None
        and inner._fast  # noqa: SLF001
    )


def fuse_sync(outer: object, inner: object, fn: Callable[P, R]) -> Callable[P, R] | None:
    """``outer.wrap(inner.wrap(fn))`` as one wrapper, or None when the pair cannot be fused."""
    if not _eligible(outer, inner) or hides_generator(fn):
        return None
    assert isinstance(outer, RetryPolicy)  # noqa: S101 - checked by _eligible, for mypy
    assert isinstance(inner, CircuitBreaker)  # noqa: S101
    breaker = inner
    guarded = breaker.wrap(fn)
    nested = outer.wrap(guarded)
    catch, check, retry = outer._catch, outer._check, outer._retry  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    closed, record = _CLOSED, _RECORD
    target: Callable[..., R] = fn  # called as fn(*args) when there are no keyword arguments

    def fused(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is not closed:  # noqa: SLF001
            return nested(*args, **kwargs)
        try:
            # Spreading an empty **kwargs costs more than testing it: skip it when empty.
            result = target(*args, **kwargs) if kwargs else target(*args)
        except BaseException as exc:
            # The breaker's fast driver records the outcome, then the retry wrapper judges it.
            on_error(record, exc, 0.0)
            if not isinstance(exc, catch) or (check is not None and not check(exc)):
                raise
            failure = exc
        else:
            next_(successes)
            if breaker._consecutive_failures:  # noqa: SLF001
                breaker._consecutive_failures = 0  # noqa: SLF001
            return result
        # Retried outside the ``except`` block, as the retry wrapper does, so that later
        # exceptions are not chained to this one.
        return retry(guarded, args, kwargs, None, failure)

    return functools.wraps(guarded)(fused)


def fuse_async(
    outer: object, inner: object, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Awaitable[R]] | None:
    """``outer.awrap(inner.awrap(fn))`` as one coroutine function, or None when not fusable."""
    if not _eligible(outer, inner) or hides_generator(fn):
        return None
    assert isinstance(outer, RetryPolicy)  # noqa: S101 - checked by _eligible, for mypy
    assert isinstance(inner, CircuitBreaker)  # noqa: S101
    breaker = inner
    guarded = breaker.awrap(fn)
    nested = outer.awrap(guarded)
    catch, check, retry = outer._catch, outer._check, outer._aretry  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    closed, record = _CLOSED, _RECORD
    target: Callable[..., Awaitable[R]] = fn

    async def fused(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is not closed:  # noqa: SLF001
            return await nested(*args, **kwargs)
        try:
            result = await (target(*args, **kwargs) if kwargs else target(*args))
        except BaseException as exc:
            on_error(record, exc, 0.0)
            if not isinstance(exc, catch) or (check is not None and not check(exc)):
                raise
            failure = exc
        else:
            next_(successes)
            if breaker._consecutive_failures:  # noqa: SLF001
                breaker._consecutive_failures = 0  # noqa: SLF001
            return result
        return await retry(guarded, args, kwargs, None, failure)

    return functools.wraps(guarded)(fused)


def is_fused(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is a wrapper built by :func:`fuse_sync` or :func:`fuse_async`."""
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_qualname in _FUSED_NAMES


_FUSED_NAMES = frozenset({"fuse_sync.<locals>.fused", "fuse_async.<locals>.fused"})
