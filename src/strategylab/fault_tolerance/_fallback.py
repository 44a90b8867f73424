"""The fallback: an answer to give when a guarded call fails in an expected way."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

from strategylab.errors import ConfigurationError

from ._typing import DecoratorMixin, refuse_coroutine_function, refuse_generator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Fallback"]

P = ParamSpec("P")
R = TypeVar("R")

ExceptionTypes = type[Exception] | tuple[type[Exception], ...]


def _exception_types(on: object) -> tuple[type[Exception], ...]:
    types = on if isinstance(on, tuple) else (on,)
    if not types:
        raise ConfigurationError("on", on, "must name at least one exception type")
    for kind in types:
        # BaseException subclasses (CancelledError, KeyboardInterrupt) must never be answered.
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"on={on!r}: {kind!r} is not a subclass of Exception")
    return cast("tuple[type[Exception], ...]", types)


class Fallback(DecoratorMixin):
    """When the call raises one of ``on``, return ``handler(exc)`` instead.

    Exceptions outside ``on`` propagate unchanged; ``on`` may only name subclasses of
    :class:`Exception`, so cancellation and ``KeyboardInterrupt`` always get through. In
    ``awrap`` and ``acall`` an async ``handler`` is awaited; in ``wrap`` and ``call`` it must be
    sync. Whatever the handler returns stands in for the call's result, so it should have the
    call's type; typing cannot check that across a pipeline. For a constant answer use
    :meth:`Fallback.value`.
    """

    __slots__ = ("_handler", "_handler_is_async", "_on")

    def __init__(
        self,
        handler: Callable[[Exception], object],
        *,
        on: ExceptionTypes = (Exception,),
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler={handler!r}: must be callable")
        self._handler = handler
        self._handler_is_async = inspect.iscoroutinefunction(handler)
        self._on = _exception_types(on)

    @classmethod
    def value(cls, value: object, *, on: ExceptionTypes = (Exception,)) -> Fallback:
        """A fallback that answers every matching failure with the same ``value``."""

        def constant(_exc: Exception) -> object:
            return value

        return cls(constant, on=on)

    @property
    def on(self) -> tuple[type[Exception], ...]:
        """The exception types this fallback answers."""
        return self._on

    def __repr__(self) -> str:
        return f"Fallback({self._handler!r}, on={self._on!r})"

    def _sync_handler(self) -> Callable[[Exception], object]:
        if self._handler_is_async:
            raise TypeError(
                f"handler={self._handler!r}: an async handler can only guard async calls "
                "(use awrap or acall)"
            )
        return self._handler

    # -- sync driver ----------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)``; on a matching exception return the handler's answer."""
        handler = self._sync_handler()
        try:
            return fn(*args, **kwargs)
        except self._on as exc:
            return cast("R", handler(exc))

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Return a wrapper that answers matching failures of ``fn`` with the handler.

        Raises :class:`TypeError` for a generator function, whose failures it could not see.
        """
        refuse_generator(fn, "Fallback")
        refuse_coroutine_function(fn, "Fallback")
        handler = self._sync_handler()
        on = self._on

        @functools.wraps(fn)
        def fallback_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except on as exc:
                return cast("R", handler(exc))

        return fallback_wrapper

    # -- async driver ---------------------------------------------------------------------------

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)``; on a matching exception return the handler's answer."""
        try:
            return await fn(*args, **kwargs)
        except self._on as exc:
            answer = self._handler(exc)
            if self._handler_is_async:
                answer = await cast("Awaitable[object]", answer)
            return cast("R", answer)

    def awrap(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[object, None, R]]:
        """Return a wrapper that answers matching failures of the async ``fn`` with the handler.

        Raises :class:`TypeError` for a generator or async generator function, whose failures it
        could not see.
        """
        refuse_generator(fn, "Fallback")
        handler = self._handler
        on = self._on

        if self._handler_is_async:
            ahandler = cast("Callable[[Exception], Awaitable[object]]", handler)

            @functools.wraps(fn)
            async def async_fallback_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                try:
                    return await fn(*args, **kwargs)
                except on as exc:
                    return cast("R", await ahandler(exc))

            return async_fallback_wrapper

        @functools.wraps(fn)
        async def fallback_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except on as exc:
                return cast("R", handler(exc))

        return fallback_wrapper
