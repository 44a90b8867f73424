"""The composition protocol every resilience policy follows.

A policy guards a call. It can wrap a function once (``wrap``/``awrap``) so that the wrapper calls
the function directly on every call, guard one call (``call``/``acall``), or decorate a sync or an
async function (``@policy``). :class:`~strategylab.fault_tolerance.Pipeline` composes policies
through ``wrap``/``awrap`` and ``call``/``acall`` only, so anything with these four methods can be a
layer of a pipeline.

No policy guards a generator: calling a generator function only creates the generator, so the call
"succeeds" before its body has run, and whatever the body raises while it is iterated happens after
the policy has let go (and a retry could not take back the items already yielded).
:func:`refuse_generator` turns that mistake into a :class:`TypeError` at decoration time.
"""

from __future__ import annotations

import inspect
import types
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

__all__ = [
    "GENERATOR_TYPES",
    "DecoratorMixin",
    "Policy",
    "generator_result_error",
    "hides_generator",
    "refuse_coroutine_function",
    "refuse_generator",
]

P = ParamSpec("P")
R = TypeVar("R")

GENERATOR_TYPES: frozenset[type] = frozenset({types.GeneratorType, types.AsyncGeneratorType})
"""The types of generator objects; ``type(result) in GENERATOR_TYPES`` is the cheap test."""

_MAX_WRAPPED = 100
"""How deep :func:`hides_generator` follows ``__wrapped__`` (a cycle must not hang it)."""

_ADVICE = "guard the call that produces each item, or the code that consumes the generator, instead"


def _name_of(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def _generator_kind(fn: object) -> str | None:
    """``"generator function"``, ``"async generator function"`` or ``None``."""
    # inspect unwraps functools.partial and bound methods; an instance is judged by its __call__
    # (a class is not: calling it constructs an instance).
    if isinstance(fn, staticmethod | classmethod):
        fn = fn.__func__
    candidates = [fn]
    if not isinstance(fn, type) and not inspect.isroutine(fn):
        candidates.append(getattr(fn, "__call__", None))  # noqa: B004 - the method, not callable()
    for candidate in candidates:
        if inspect.isasyncgenfunction(candidate):
            return "async generator function"
        if inspect.isgeneratorfunction(candidate):
            return "generator function"
    return None


def refuse_generator(fn: object, policy: str) -> None:
    """Raise :class:`TypeError` if ``fn`` is a generator or async generator function.

    Call it where a policy wraps ``fn`` (decoration time, never per call): calling a generator
    function only creates the generator, so ``policy`` would record a success before the body ran
    and would never see what the body raises while it is iterated; a retry could not take back
    items already yielded either. The message names ``fn`` and says what to guard instead.
    """
    kind = _generator_kind(fn)
    if kind is not None:
        article = "an" if kind.startswith("async") else "a"
        raise TypeError(
            f"{policy} cannot guard {_name_of(fn)}, {article} {kind}: calling it only creates the "
            f"generator, so {policy} would see the call succeed before the body runs and never "
            "see what the body raises while it is iterated (nor can a retry take back items "
            f"already yielded); {_ADVICE}"
        )


def hides_generator(fn: object) -> bool:
    """Whether a decorator's ``__wrapped__`` chain under ``fn`` reaches a generator function.

    Such an ``fn`` (``@functools.wraps`` around a generator function) may return the generator
    or consume it: it cannot be refused when it is wrapped, so the breaker and the retry wrap it
    with a driver that checks each result (:func:`generator_result_error`), a cost that only
    these functions pay.
    """
    seen = 0
    current = getattr(fn, "__wrapped__", None)
    while current is not None and seen < _MAX_WRAPPED:
        if _generator_kind(current) is not None:
            return True
        current = getattr(current, "__wrapped__", None)
        seen += 1
    return False


def refuse_coroutine_function(fn: object, policy: str) -> None:
    """Raise :class:`TypeError` if a sync ``wrap`` is given a coroutine function.

    Calling it only creates the coroutine, so ``policy`` would judge that (a success, at once)
    instead of the awaited work; ``awrap`` or the ``@policy`` decorator is the way to guard it.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{policy} cannot wrap {_name_of(fn)} with wrap(): it is a coroutine function, and "
            "calling it only creates the coroutine; use awrap() or the decorator"
        )


def generator_result_error(fn: object, result: object, policy: str) -> TypeError:
    """The :class:`TypeError` for a guarded call that returned a generator object (``result``).

    For ``call``/``acall``, which check ``type(result) in GENERATOR_TYPES`` instead of inspecting
    ``fn``: the same refusal as :func:`refuse_generator`, raised by the caller.
    """
    kind = type(result).__name__
    article = "an" if kind.startswith("async") else "a"
    return TypeError(
        f"{policy} cannot guard {_name_of(fn)}: it returned {article} {kind} object, "
        f"and what a generator raises while it is iterated happens after {policy} has let go "
        f"(nor can a retry take back items already yielded); {_ADVICE}"
    )


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
    sync function (use ``awrap`` explicitly for it). A generator or async generator function is
    refused with :class:`TypeError` (see :func:`refuse_generator`).
    """

    __slots__ = ()

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        """Decorate ``fn``: ``awrap`` for a coroutine function, ``wrap`` otherwise.

        Raises :class:`TypeError` for a generator or async generator function.
        """
        refuse_generator(fn, type(self).__name__)
        policy = cast("Policy", self)
        if inspect.iscoroutinefunction(fn):
            return policy.awrap(fn)
        return policy.wrap(fn)
