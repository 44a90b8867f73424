"""The timeout: a deadline on one guarded call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import math
import os
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import CallTimeoutError, ConfigurationError

from ._typing import DecoratorMixin, refuse_coroutine_function, refuse_generator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Timeout", "abandon_aware"]

P = ParamSpec("P")
R = TypeVar("R")

_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


class _Abandonment:
    """Whether the sync call running in a worker, or any timeout around it, has been given up on."""

    __slots__ = ("abandoned", "parent")

    def __init__(self, parent: _Abandonment | None) -> None:
        self.abandoned = False
        self.parent = parent

    def is_set(self) -> bool:
        token: _Abandonment | None = self
        while token is not None:
            if token.abandoned:
                return True
            token = token.parent
        return False


_CURRENT: contextvars.ContextVar[_Abandonment | None] = contextvars.ContextVar(
    "strategylab_timeout_abandonment", default=None
)
"""Set in a sync timeout's worker context: the token its expiry sets."""


class _CallAbandonedError(BaseException):
    """The sync call's timeout expired: unwind the work still running in the worker thread.

    A :class:`BaseException`, like cancellation, so that no layer inside the timeout counts it: a
    breaker ignores it (neither success nor failure), a retry does not retry it, a fallback does
    not answer it, a bulkhead gives its slot back. Nobody waits for it: the caller already has its
    :class:`~strategylab.errors.CallTimeoutError`.
    """


def _run_in_worker(
    token: _Abandonment, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> R:
    _CURRENT.set(token)
    return fn(*args, **kwargs)


def abandon_aware(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, unless a sync :class:`Timeout` around this call has expired.

    Used by :class:`~strategylab.fault_tolerance.Pipeline` as the innermost layer whenever a sync
    timeout has layers inside it. Python cannot stop the worker thread of a timed-out sync call, so
    the layers inside the timeout (a retry, a breaker, a bulkhead) go on running there; this makes
    sure that none of them records what happens after the caller was given its
    :class:`~strategylab.errors.CallTimeoutError`: a retry's next attempt is not started, and an
    outcome that arrives late (a success above all) unwinds as :class:`_CallAbandonedError`, which
    a breaker ignores, instead of being recorded.
    """
    current = _CURRENT.get

    @functools.wraps(fn)
    def abandon_aware_call(*args: P.args, **kwargs: P.kwargs) -> R:
        token = current()
        if token is None:
            return fn(*args, **kwargs)
        if token.is_set():
            raise _CallAbandonedError
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if token.is_set():
                raise _CallAbandonedError from exc
            raise
        if token.is_set():
            raise _CallAbandonedError
        return result

    return abandon_aware_call


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
    before it started is never started. Inside a :class:`~strategylab.fault_tolerance.Pipeline`,
    the layers inside a sync timeout never record the abandoned call's late outcome: a breaker
    there does not count a late success, and a retry there starts no further attempt (see
    :func:`abandon_aware`). Composed by hand (``timeout.wrap(breaker.wrap(fn))``) they would.

    **Per attempt or in total.** Where a timeout sits decides what it bounds (Polly v8 and
    resilience4j's TimeLimiter): inside a breaker and a retry (``Pipeline.of(timeout=...)``) it
    bounds one attempt, and its :class:`~strategylab.errors.CallTimeoutError` is a failure that the
    breaker counts and the retry may retry; outside them (``Pipeline.of(total_timeout=...)``) it
    bounds the whole retried call, backoff sleeps included.

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
        parent = _CURRENT.get()
        if parent is not None and parent.is_set():
            raise _CallAbandonedError  # an outer sync timeout gave up on this call: start nothing
        context = contextvars.copy_context()
        token = _Abandonment(parent)
        future: concurrent.futures.Future[R] = _shared_executor().submit(
            context.run,
            _run_in_worker,
            token,
            fn,
            args,
            kwargs,
        )
        try:
            return future.result(timeout=self._seconds)
        except TimeoutError as exc:
            # concurrent.futures.TimeoutError is the builtin TimeoutError: tell the wait's from the
            # call's own by whether the call has finished.
            if future.done():
                return future.result()
            token.abandoned = True
            future.cancel()
            if parent is not None and parent.is_set():
                # Nobody waits for this expiry any more: an outer timeout expired first, so no
                # layer between the two may count it as a failure.
                raise _CallAbandonedError from exc
            raise self._expired(started) from exc

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Return a wrapper that runs every call of ``fn`` in a worker thread under this timeout.

        Raises :class:`TypeError` for a generator function (see
        :class:`~strategylab.fault_tolerance.Pipeline`).
        """
        refuse_generator(fn, "Timeout")
        refuse_coroutine_function(fn, "Timeout")
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
        """Return a wrapper that awaits every call of ``fn`` under this timeout.

        Raises :class:`TypeError` for an async generator function.
        """
        refuse_generator(fn, "Timeout")
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
