"""The composition protocol every resilience policy follows.

A policy guards a call. It can wrap a function once (``wrap``/``awrap``) so that the wrapper calls
the function directly on every call, guard one call (``call``/``acall``), or decorate a sync or an
async function (``@policy``). :class:`~strategylab.fault_tolerance.Pipeline` composes policies
through ``wrap``/``awrap`` and ``call``/``acall`` only, so anything with these four methods can be a
layer of a pipeline.
"""

from __future__ import annotations

import inspect
from typing import (
    TYPE_CHECKING,
    Any,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["DecoratorMixin", "Policy"]

P = ParamSpec("P")
R = TypeVar("R")


@runtime_checkable
class Policy(Protocol):
    """Something that guards a call: retry, breaker, bulkhead, timeout, fallback, a pipeline."""

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Return a wrapper that guards every call of the sync function ``fn``."""
        ...

    def awrap(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]:
        """Return a wrapper that guards every call of the async function ``fn``."""
        ...

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` once under this policy."""
        ...

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` once under this policy."""
        ...


class DecoratorMixin:
    """Lets a policy decorate sync and async functions alike: ``@policy``.

    The choice between ``wrap`` and ``awrap`` is made once, at decoration time, with
    :func:`inspect.iscoroutinefunction`; a sync function that returns an awaitable is wrapped as a
    sync function (use ``awrap`` explicitly for it).
    """

    __slots__ = ()

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        """Decorate ``fn``: ``awrap`` for a coroutine function, ``wrap`` otherwise."""
        policy = cast("Policy", self)
        if inspect.iscoroutinefunction(fn):
            return policy.awrap(fn)
        return policy.wrap(fn)
