"""The timeout: a deadline on one guarded call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import math
import os
import threading
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import CallTimeoutError, ConfigurationError

from ._typing import DecoratorMixin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Timeout"]

P = ParamSpec("P")
R = TypeVar("R")

_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The one worker pool for sync timeouts, made on first use."""
    global _executor  # noqa: PLW0603 - one lazily created pool per process is the point
    executor = _executor
    if executor is None:
        with _executor_lock:
            executor = _executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_MAX_WORKERS, thread_name_prefix="strategylab-timeout"
                )
                _executor = executor
    return executor


class Timeout(DecoratorMixin):
    """Give up on a call after ``seconds``, raising :class:`~strategylab.errors.CallTimeoutError`.

    **Async** calls run in an :func:`asyncio.timeout` scope: on expiry the call is cancelled and
    ``CallTimeoutError(name, seconds)`` is raised, chained from asyncio's ``TimeoutError``. A
    cancellation from outside (the task itself being cancelled) is never turned into a timeout: it
    propagates as :class:`asyncio.CancelledError`. A ``TimeoutError`` raised by the call itself,
    before the deadline, propagates unchanged.

    **Sync** calls cannot be interrupted: Python has no way to stop a running function in another
    thread. So a sync call runs in a worker thread of one shared, bounded
    :class:`~concurrent.futures.ThreadPoolExecutor` (made on first use, with the caller's
    :mod:`contextvars` context), and the caller waits at most ``seconds``. When the deadline passes,
    the caller gets ``CallTimeoutError`` *while the call carries on in its thread* until it returns
    by itself; its result or exception is then discarded. A call that never returns keeps its worker
    busy for good (and, as with any non-daemon worker, holds up interpreter exit), so the guarded
    function must still bound its own blocking I/O (socket timeouts, statement timeouts). When every
    worker is busy, calls queue, and the deadline includes the time spent queued; a call given up on
    before it started is never started.

    ``clock`` only measures how long a timed-out call was waited for, which is added to the error as
    a note: the deadline itself follows the event loop's timer (async) or real time (a thread wait),
    neither of which an injected clock can drive.
    """

    __slots__ = ("_clock", "_name", "_seconds")

    def __init__(
        self, seconds: float, *, name: str = "timeout", clock: Clock | None = None
    ) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"seconds={seconds!r}: must be a number")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigurationError("seconds", seconds, "must be a positive finite number")
        if not isinstance(name, str):
            raise TypeError(f"name={name!r}: must be a str")
        if not name:
            raise ConfigurationError("name", name, "must not be empty")
        self._seconds = float(seconds)
        self._name = name
        self._clock = SYSTEM_CLOCK if clock is None else clock

    @property
    def seconds(self) -> float:
        """The deadline, in seconds from the start of the call."""
        return self._seconds

    @property
    def name(self) -> str:
        """The operation name reported in :class:`~strategylab.errors.CallTimeoutError`."""
        return self._name

    def __repr__(self) -> str:
        return f"Timeout({self._seconds!r}, name={self._name!r})"

    def _expired(self, started: float) -> CallTimeoutError:
        error = CallTimeoutError(self._name, self._seconds)
        error.add_note(f"gave up after {self._clock.monotonic() - started:.3f}s")
        return error

    # -- sync driver ----------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` in a worker thread and wait for it at most ``seconds``."""
        started = self._clock.monotonic()
        context = contextvars.copy_context()
        # mypy cannot bind Context.run's ParamSpec through submit's.
        future: concurrent.futures.Future[R] = _shared_executor().submit(
            context.run,  # type: ignore[arg-type]
            fn,
            *args,
            **kwargs,
        )
        try:
            return future.result(timeout=self._seconds)
        except TimeoutError as exc:
            # concurrent.futures.TimeoutError is the builtin TimeoutError: tell the wait's from the
            # call's own by whether the call has finished.
            if future.done():
                return future.result()
            future.cancel()
            raise self._expired(started) from exc

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Return a wrapper that runs every call of ``fn`` in a worker thread under this timeout."""
        call = self.call

        @functools.wraps(fn)
        def timeout_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return call(fn, *args, **kwargs)

        return timeout_wrapper

    # -- async driver ---------------------------------------------------------------------------

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` in an :func:`asyncio.timeout` scope of ``seconds``."""
        started = self._clock.monotonic()
        scope = asyncio.timeout(self._seconds)
        try:
            async with scope:
                return await fn(*args, **kwargs)
        except TimeoutError as exc:
            # Only our own scope's expiry is a timeout of this call; a TimeoutError the call raised
            # itself (an inner deadline, a socket timeout) propagates as it is.
            if scope.expired():
                raise self._expired(started) from exc
            raise

    def awrap(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[object, None, R]]:
        """Return a wrapper that awaits every call of ``fn`` under this timeout."""
        seconds = self._seconds
        monotonic = self._clock.monotonic
        expired = self._expired

        @functools.wraps(fn)
        async def timeout_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = monotonic()
            scope = asyncio.timeout(seconds)
            try:
                async with scope:
                    return await fn(*args, **kwargs)
            except TimeoutError as exc:
                if scope.expired():
                    raise expired(started) from exc
                raise

        return timeout_wrapper
