"""The guarded callables that :meth:`CircuitBreaker.wrap` and :meth:`CircuitBreaker.awrap` return.

``wrap``/``awrap`` pick one driver, once, for the breaker's configuration. Everything a driver
uses is bound to closure locals when it is built, so the per-call path does no global or
attribute look-up beyond the breaker's own state. A gate other than CLOSED (or OPEN within its
timeout) goes to the breaker's general path; the gate is never CLOSED or OPEN while call
listeners are registered, so they see every call. A rejection is built with
``BaseException.__new__`` (no Python ``__init__`` frame; :class:`CircuitOpenError` keeps its
fields in ``args``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from strategylab.errors import CircuitOpenError

from ._breaker_state import _CLOSED, _OPEN, _RECORD

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__: list[str] = []

P = ParamSpec("P")
R = TypeVar("R")


def _sync_fast(breaker: CircuitBreaker, fn: Callable[P, R]) -> Callable[P, R]:
    """Consecutive failures only: the CLOSED success path reads no clock and takes no lock."""
    call = breaker._call  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    closed, open_, record, rejection = _CLOSED, _OPEN, _RECORD, CircuitOpenError
    new = BaseException.__new__
    target: Callable[..., R] = fn  # called as fn(*args) when there are no keyword arguments

    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        # The state is read again off the CLOSED path rather than kept in a local: storing it
        # costs the success path more than the second read costs the others.
        if breaker._gate is not closed:  # noqa: SLF001
            if breaker._gate is open_:  # noqa: SLF001
                wait = breaker._open_until - monotonic()  # noqa: SLF001
                if wait > 0.0:
                    count_rejected()
                    raise new(rejection, name, wait, breaker._last_failure)  # noqa: SLF001
            return call(fn, args, kwargs)
        try:
            # Spreading an empty **kwargs costs more than testing it: skip it when empty.
            result = target(*args, **kwargs) if kwargs else target(*args)
        except BaseException as exc:
            on_error(record, exc, 0.0)
            raise
        next_(successes)
        if breaker._consecutive_failures:  # noqa: SLF001
            breaker._consecutive_failures = 0  # noqa: SLF001
        return result

    return guarded


def _sync_general(breaker: CircuitBreaker, fn: Callable[P, R]) -> Callable[P, R]:
    """A rate window, a slow-call threshold or result predicates: outcomes are recorded under the
    lock anyway, so only the OPEN rejection is short-cut."""
    call = breaker._call  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    open_, rejection, new = _OPEN, CircuitOpenError, BaseException.__new__

    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is open_:  # noqa: SLF001
            wait = breaker._open_until - monotonic()  # noqa: SLF001
            if wait > 0.0:
                count_rejected()
                raise new(rejection, name, wait, breaker._last_failure)  # noqa: SLF001
        return call(fn, args, kwargs)

    return guarded


def _async_fast(
    breaker: CircuitBreaker, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[object, None, R]]:
    """The async twin of :func:`_sync_fast`."""
    acall = breaker._acall  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    closed, open_, record, rejection = _CLOSED, _OPEN, _RECORD, CircuitOpenError
    new = BaseException.__new__
    target: Callable[..., Awaitable[R]] = fn

    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is not closed:  # noqa: SLF001
            if breaker._gate is open_:  # noqa: SLF001
                wait = breaker._open_until - monotonic()  # noqa: SLF001
                if wait > 0.0:
                    count_rejected()
                    raise new(rejection, name, wait, breaker._last_failure)  # noqa: SLF001
            return await acall(fn, args, kwargs)
        try:
            result = await (target(*args, **kwargs) if kwargs else target(*args))
        except BaseException as exc:
            on_error(record, exc, 0.0)
            raise
        next_(successes)
        if breaker._consecutive_failures:  # noqa: SLF001
            breaker._consecutive_failures = 0  # noqa: SLF001
        return result

    return guarded


def _async_general(
    breaker: CircuitBreaker, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[object, None, R]]:
    """The async twin of :func:`_sync_general`."""
    acall = breaker._acall  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    open_, rejection, new = _OPEN, CircuitOpenError, BaseException.__new__

    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._gate is open_:  # noqa: SLF001
            wait = breaker._open_until - monotonic()  # noqa: SLF001
            if wait > 0.0:
                count_rejected()
                raise new(rejection, name, wait, breaker._last_failure)  # noqa: SLF001
        return await acall(fn, args, kwargs)

    return guarded
