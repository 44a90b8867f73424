"""Retry with capped exponential backoff and full jitter: :class:`RetryPolicy`.

One pure decision (:meth:`RetryPolicy.decide`: after attempt *n* failed at *elapsed* seconds, sleep
this long or give up) and two thin drivers around it, one that sleeps with ``clock.sleep`` and one
that awaits ``clock.asleep``. The success path of a wrapped call is a bare ``try``/``return``: no
clock read (unless a deadline is set), no allocation, no test-mode check. Everything a retry needs
(attempt counter, start time, hook records) is created only after the first failure.

When attempts run out on an exception, the caller's own last exception is re-raised, with its
original traceback; when they run out on a rejected result, :class:`RetryExhaustedError` is raised.
``asyncio.CancelledError``, ``KeyboardInterrupt`` and the like are never retried: ``retry_on`` only
accepts subclasses of :class:`Exception`.

A server's ``Retry-After`` or an open breaker's ``retry_after`` replaces the backoff for the next
sleep (see :func:`~strategylab.fault_tolerance.retry_after_hint`). Generators are refused: a retry
cannot re-run items already yielded. Users' test suites switch every wait off with
:func:`set_testing`, for the whole process or for a ``with`` block.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import inspect
import math
import operator
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, overload

from strategylab import _validate
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, RetryExhaustedError

from ._retry_after import retry_after_hint
from ._typing import (
    GENERATOR_TYPES,
    generator_result_error,
    hides_generator,
    refuse_coroutine_function,
    refuse_generator,
)

__all__ = ["RetryDetails", "RetryHook", "RetryPolicy", "is_testing", "set_testing"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryDetails:
    """What a retry hook is told about the attempt that just failed."""

    name: str
    """The policy's ``name``, or else the qualified name of the guarded callable."""
    attempt: int
    """1-based number of the attempt that just failed."""
    delay: float
    """Seconds about to be slept before the next attempt: the backoff, or the wait the failure
    asked for (``Retry-After``); 0 when giving up or in test mode."""
    elapsed: float
    """Seconds since the first attempt started (since it failed, when no deadline is set)."""
    exception: Exception | None
    """The exception the attempt raised, or ``None`` if its result was rejected."""
    result: object = None
    """The rejected result, or ``None`` if the attempt raised."""

    def __post_init__(self) -> None:
        if self.attempt < 1:
            raise ValueError(f"attempt={self.attempt!r}: attempts are numbered from 1")
        if not self.delay >= 0:
            raise ValueError(f"delay={self.delay!r}: must be >= 0")


RetryHook = Callable[[RetryDetails], object]
"""A ``before_sleep`` or ``on_give_up`` hook; its return value is ignored."""


class _Rejected:
    """A result that ``retry_on_result`` rejected; made only on the failure path."""

    __slots__ = ("result",)

    def __init__(self, result: object) -> None:
        self.result = result


_Failure = Exception | _Rejected


class _RefusedGeneratorError(TypeError):
    """``acall`` refusing a generator; raised inside its ``try`` and never retried."""


async def _awaited(
    fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> R:
    """``await fn(*args, **kwargs)`` for ``acall`` and later attempts, refusing generators.

    Both what ``fn`` returns (an async generator cannot be awaited) and what awaiting it gives
    are checked; the refusal is a :class:`_RefusedGeneratorError`, which is never retried.
    """
    pending = fn(*args, **kwargs)
    if type(pending) in GENERATOR_TYPES:
        error = generator_result_error(fn, pending, "RetryPolicy")
        raise _RefusedGeneratorError(*error.args)
    result = await pending
    if type(result) in GENERATOR_TYPES:
        error = generator_result_error(fn, result, "RetryPolicy")
        raise _RefusedGeneratorError(*error.args)
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class _TestMode:
    attempts: int | None


class _Switch:
    """Holds the process-wide test mode; rebinding one attribute is atomic across threads."""

    __slots__ = ("mode",)

    def __init__(self) -> None:
        self.mode: _TestMode | None = None


_SWITCH = _Switch()


class _RestoreTesting(AbstractContextManager[None]):
    """Returned by :func:`set_testing`: leaving the ``with`` block restores the earlier mode."""

    __slots__ = ("_previous",)

    def __init__(self, previous: _TestMode | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _SWITCH.mode = self._previous


def set_testing(enabled: bool, *, attempts: int | None = None) -> AbstractContextManager[None]:
    """Switch test mode on or off for the whole process, at once.

    While it is on, no retry sleeps at all (hooks still see ``delay=0``) and, if ``attempts`` is
    given, every policy makes at most that many attempts. Only the failure path consults it.

    The switch happens when this is called; the returned context manager restores the mode that
    was in force before the call when its ``with`` block ends, so uses nest (as stamina's
    ``set_testing`` does since 24.3)::

        with set_testing(True, attempts=1):
            ...  # no retry sleeps here
        # the previous mode is back

    Raises :class:`~strategylab.errors.ConfigurationError` if ``attempts`` is not an int >= 1.
    """
    if attempts is not None and (type(attempts) is not int or attempts < 1):
        raise ConfigurationError("attempts", attempts, "must be an int >= 1 or None")
    previous = _SWITCH.mode
    _SWITCH.mode = _TestMode(attempts) if enabled else None
    return _RestoreTesting(previous)


def is_testing() -> bool:
    """Whether :func:`set_testing` has switched test mode on."""
    return _SWITCH.mode is not None


def _callable_name(fn: Callable[..., object]) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def _is_exception_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, Exception)


# The backoff is computed in decimal, with ample precision and exponent range, then rounded once
# to a float: base * multiplier**n neither overflows (a subnormal base times 2**1100 is a modest
# number) nor drifts from the formula. Traps are off: nothing here can overflow or divide by zero
# (the caller caps the exponent), and flags are never read.
_BACKOFF_CONTEXT = decimal.Context(
    prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[], flags=[]
)
_CAP_MARGIN = 1e-6
"""Relative slack on the log-domain test that a retry is surely past the cap."""
_MAX_SHIFT = 2200
"""A binary shift that takes even the smallest subnormal past the largest float."""


def _capped_power(base: float, multiplier: float, cap: float, retry: int) -> float:
    """``min(base * multiplier**retry, cap)`` for every valid input, without overflow."""
    if base == 0 or cap == 0:
        return 0.0
    if retry == 0 or multiplier == 1 or base >= cap:
        return float(min(base, cap))
    try:
        # The formula as written, whenever the power is a finite float: the same value, to the
        # last bit, as the expression a user would check it against.
        naive = base * multiplier**retry
    except OverflowError:
        pass  # the power alone overflows (the product may not): computed exactly below
    else:
        return float(min(naive, cap))
    mantissa, exponent = math.frexp(multiplier)
    if mantissa == 0.5:
        return _capped_shift(base, (exponent - 1) * retry, cap)
    # Retries needed to reach the cap, from logs: past it (with a margin that covers the logs'
    # rounding) the answer is the cap, and this also keeps the exact computation finite.
    reach = (math.log(cap) - math.log(base)) / math.log(multiplier)
    if retry > reach + reach * _CAP_MARGIN + 1:
        return float(cap)
    ctx = _BACKOFF_CONTEXT
    exact = ctx.multiply(decimal.Decimal(base), ctx.power(decimal.Decimal(multiplier), retry))
    return float(min(float(exact), cap))


def _capped_shift(base: float, shift: int, cap: float) -> float:
    """``min(base * 2**shift, cap)``, exact: the path for a power-of-two multiplier (2.0)."""
    if shift > _MAX_SHIFT:
        return float(cap)
    try:
        return float(min(math.ldexp(base, shift), cap))
    except OverflowError:
        return float(cap)


def _retry_index(retry: object) -> int:
    if isinstance(retry, bool):
        raise TypeError(f"retry={retry!r}: must be an int >= 0, not a bool")
    try:
        index = operator.index(retry)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"retry={retry!r}: must be an int >= 0") from None
    if index < 0:
        raise ValueError(f"retry={retry!r}: retries are numbered from 0")
    return index


def _wait_hint(value: object, source: object) -> float | None:
    """Validate what a ``retry_after`` extractor returned: None, or seconds >= 0 (inf allowed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"retry_after={source!r} returned {value!r}: must be None or a number of seconds >= 0"
        )
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: as good as forever
        return math.inf


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry a callable with capped exponential backoff, full jitter and an optional deadline.

    Use it as a decorator on sync and async functions, through :meth:`call` / :meth:`acall`, or
    build a wrapper once with :meth:`wrap` / :meth:`awrap`::

        policy = RetryPolicy(max_attempts=5, retry_on=ConnectionError)

        @policy
        async def fetch() -> bytes: ...

    The delay before retry *n* (``n = 0`` for the first retry) is
    ``min(base_delay * multiplier**n, max_delay)`` seconds (:meth:`backoff`), exactly, for every
    *n*; with the default jitter it is drawn uniformly from ``[0, that]`` ("full jitter"), with
    ``jitter=None`` it is exact. Pass ``jitter=random.Random(seed)`` for reproducible delays.

    ``retry_after`` reads, from a retryable exception, a wait the server or a breaker asked for
    (a ``Retry-After`` header of an HTTP 429 or 503, RFC 9110 §10.2.3; a
    :class:`~strategylab.errors.CircuitOpenError`'s ``retry_after``): by default
    :func:`retry_after_hint`, bound to ``clock``; ``None`` switches it off. A hint replaces the
    backoff for the next sleep, exactly (no jitter, not capped by ``max_delay``), as Polly v8's
    ``DelayGenerator`` does; ``max_attempts``, ``deadline`` and test mode still apply, an
    infinite hint gives up at once, and a hint of 0 (a date already past, a HALF_OPEN breaker
    that is only busy with its trials) leaves the wait to the backoff.

    ``retry_on`` is an exception type, a tuple of types, or a predicate on the exception; anything
    else propagates at once, with no sleep and no hook call. ``retry_on_result`` rejects return
    values, which are then retried like failures. ``deadline`` bounds the total time from the
    start of the first attempt: a sleep that would end past it is not started.

    ``before_sleep`` and ``on_give_up`` receive a :class:`RetryDetails`. They are the caller's
    code: an exception raised by a hook (or by ``retry_after``) propagates and ends the retry.

    Generator and async generator functions are refused with :class:`TypeError` when wrapped, and
    a generator returned to :meth:`call` / :meth:`acall` is too: the call that creates a generator
    succeeds before its body runs, and a retry cannot take back items already yielded.
    """

    max_attempts: int = 3
    base_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: random.Random | None = dataclasses.field(default_factory=random.Random)
    retry_on: type[Exception] | tuple[type[Exception], ...] | Callable[[BaseException], bool] = (
        Exception,
    )
    deadline: float | None = None
    clock: Clock = SYSTEM_CLOCK
    _: dataclasses.KW_ONLY
    retry_on_result: Callable[[Any], bool] | None = None
    before_sleep: RetryHook | None = None
    on_give_up: RetryHook | None = None
    name: str | None = None
    retry_after: Callable[[BaseException], float | None] | None = retry_after_hint
    """Seconds a failure asks to wait (``None``: no hint), or ``None`` to ignore such hints."""

    # Derived in __post_init__ so that neither the wrappers nor the slow path re-derive them.
    _catch: tuple[type[Exception], ...] = dataclasses.field(init=False, repr=False, compare=False)
    _check: Callable[[BaseException], bool] | None = dataclasses.field(
        init=False, repr=False, compare=False
    )
    _hint: Callable[[BaseException], float | None] | None = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _validate.integer("max_attempts", self.max_attempts, minimum=1)
        _validate.seconds("base_delay", self.base_delay, allow_zero=True)
        _validate.seconds("max_delay", self.max_delay, allow_zero=True)
        _validate.number("multiplier", self.multiplier, minimum=1)
        if self.deadline is not None:
            _validate.seconds("deadline", self.deadline)
        if self.jitter is not None and not isinstance(self.jitter, random.Random):
            raise ConfigurationError("jitter", self.jitter, "must be a random.Random or None")
        if not isinstance(self.clock, Clock):
            raise ConfigurationError("clock", self.clock, "must implement strategylab.clock.Clock")
        for key in ("retry_on_result", "before_sleep", "on_give_up", "retry_after"):
            value = getattr(self, key)
            if value is not None and not callable(value):
                raise ConfigurationError(key, value, "must be callable or None")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigurationError("name", self.name, "must be a non-empty str or None")
        catch, check = self._classify_retry_on(self.retry_on)
        object.__setattr__(self, "_catch", catch)
        object.__setattr__(self, "_check", check)
        hint = self.retry_after
        if hint is retry_after_hint:
            # HTTP-dates are measured against this policy's clock, so a FakeClock governs them.
            hint = functools.partial(retry_after_hint, clock=self.clock)
        object.__setattr__(self, "_hint", hint)

    @staticmethod
    def _classify_retry_on(
        retry_on: object,
    ) -> tuple[tuple[type[Exception], ...], Callable[[BaseException], bool] | None]:
        # BaseException-only types (CancelledError, KeyboardInterrupt, SystemExit) are refused:
        # retrying them would swallow cancellation and interrupts.
        if isinstance(retry_on, type):
            if not _is_exception_type(retry_on):
                raise ConfigurationError(
                    "retry_on", retry_on, "must be a subclass of Exception (not BaseException)"
                )
            return (retry_on,), None
        if isinstance(retry_on, tuple):
            if not retry_on or not all(_is_exception_type(t) for t in retry_on):
                raise ConfigurationError(
                    "retry_on", retry_on, "must be a non-empty tuple of Exception subclasses"
                )
            return retry_on, None
        if callable(retry_on):
            return (Exception,), retry_on
        raise ConfigurationError(
            "retry_on", retry_on, "must be an exception type, a tuple of them, or a predicate"
        )

    # ------------------------------------------------------------------------------- the core

    def backoff(self, retry: int) -> float:
        """Seconds before retry ``retry`` (0 for the first retry), before jitter.

        ``min(base_delay * multiplier**retry, max_delay)`` for every ``retry >= 0``: the float
        expression itself while ``multiplier**retry`` is a finite float, and past that the exact
        value rounded once (so a subnormal base is not capped early); 0 when ``base_delay`` or
        ``max_delay`` is 0, never above ``max_delay``, never an overflow, non-decreasing in
        ``retry``. Raises :class:`TypeError`
        for a non-integer ``retry`` and :class:`ValueError` for a negative one.
        """
        return _capped_power(self.base_delay, self.multiplier, self.max_delay, _retry_index(retry))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry``: :meth:`backoff` with the jitter drawn.

        The bare formula: unlike :meth:`decide` it ignores test mode, attempts and the deadline,
        for callers that retry on their own terms (a feed reconnecting forever). Raises as
        :meth:`backoff` does.
        """
        delay = self.backoff(retry)
        if self.jitter is not None:
            delay = self.jitter.uniform(0.0, delay)
        return delay

    def decide(
        self, attempt: int, elapsed: float, retry_after: float | None = None
    ) -> float | None:
        """Seconds to sleep after attempt ``attempt`` (1-based) failed at ``elapsed``, or ``None``.

        ``None`` means give up: attempts are used up, or the sleep would end past the deadline.
        The caller has already judged the outcome retryable. ``retry_after`` is a wait the failure
        asked for (seconds, from the ``retry_after`` extractor): a positive one replaces
        :meth:`delay`, ``0`` ("any time now", e.g. a HALF_OPEN breaker busy with its trials) leaves
        the wait to :meth:`delay` so that the attempts are not spent at once, and ``math.inf``
        gives up. In test mode the delay is 0 and the attempts may be capped (see
        :func:`set_testing`). Raises :class:`ValueError` if ``attempt`` is below 1 or
        ``retry_after`` is negative or NaN.
        """
        if attempt < 1:
            raise ValueError(f"attempt={attempt!r}: attempts are numbered from 1")
        mode = _SWITCH.mode
        limit = self.max_attempts
        if mode is not None and mode.attempts is not None:
            limit = min(limit, mode.attempts)
        if attempt >= limit:
            return None
        if retry_after is not None:
            if not retry_after >= 0:
                raise ValueError(f"retry_after={retry_after!r}: must be seconds >= 0")
            if retry_after == math.inf:
                return None
        if retry_after:
            delay = 0.0 if mode is not None else float(retry_after)
        elif mode is not None:
            delay = 0.0
        else:
            delay = self.delay(attempt - 1)
        if self.deadline is not None and elapsed + delay > self.deadline:
            return None
        return delay

    def _wait_for(self, failure: _Failure) -> float | None:
        """The wait ``failure`` asks for, through the ``retry_after`` extractor (failure path)."""
        hint = self._hint
        if hint is None or isinstance(failure, _Rejected):
            return None
        return _wait_hint(hint(failure), self.retry_after)

    def _details(
        self,
        fn: Callable[..., object],
        attempt: int,
        delay: float,
        elapsed: float,
        failure: _Failure,
    ) -> RetryDetails:
        if isinstance(failure, _Rejected):
            error, result = None, failure.result
        else:
            error, result = failure, None
        return RetryDetails(
            name=self.name if self.name is not None else _callable_name(fn),
            attempt=attempt,
            delay=delay,
            elapsed=elapsed,
            exception=error,
            result=result,
        )

    def _give_up(
        self, fn: Callable[..., object], attempt: int, elapsed: float, failure: _Failure
    ) -> Exception:
        """Call ``on_give_up`` and return what to raise: the caller's own exception, or a new
        :class:`RetryExhaustedError` for a rejected result."""
        if self.on_give_up is not None:
            self.on_give_up(self._details(fn, attempt, 0.0, elapsed, failure))
        if isinstance(failure, _Rejected):
            return RetryExhaustedError(attempt, failure.result)
        return failure

    def _retryable(self, exc: Exception) -> bool:
        return type(exc) is not _RefusedGeneratorError and (self._check is None or self._check(exc))

    # ---------------------------------------------------------------------------- the drivers

    def _retry(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float | None,
        failure: _Failure,
    ) -> R:
        """The sync driver, entered after the first attempt failed."""
        clock, reject = self.clock, self.retry_on_result
        now = clock.monotonic()
        start = now if start is None else start
        attempt = 1
        while True:
            delay = self.decide(attempt, now - start, self._wait_for(failure))
            if delay is None:
                raise self._give_up(fn, attempt, now - start, failure)
            if self.before_sleep is not None:
                self.before_sleep(self._details(fn, attempt, delay, now - start, failure))
            if _SWITCH.mode is None:
                clock.sleep(delay)
            attempt += 1
            # The next attempt runs outside any ``except`` block so that its exception is not
            # chained to the previous one.
            try:
                result = fn(*args, **kwargs)
            except self._catch as exc:
                if not self._retryable(exc):
                    raise
                failure = exc
            else:
                if type(result) in GENERATOR_TYPES:
                    raise generator_result_error(fn, result, "RetryPolicy")
                if reject is None or not reject(result):
                    return result
                failure = _Rejected(result)
            now = clock.monotonic()

    async def _aretry(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float | None,
        failure: _Failure,
    ) -> R:
        """The async driver: :meth:`_retry` with ``await``."""
        clock, reject = self.clock, self.retry_on_result
        now = clock.monotonic()
        start = now if start is None else start
        attempt = 1
        while True:
            delay = self.decide(attempt, now - start, self._wait_for(failure))
            if delay is None:
                raise self._give_up(fn, attempt, now - start, failure)
            if self.before_sleep is not None:
                self.before_sleep(self._details(fn, attempt, delay, now - start, failure))
            if _SWITCH.mode is None:
                await clock.asleep(delay)
            attempt += 1
            try:
                result = await _awaited(fn, args, kwargs)
            except self._catch as exc:
                if not self._retryable(exc):
                    raise
                failure = exc
            else:
                if reject is None or not reject(result):
                    return result
                failure = _Rejected(result)
            now = clock.monotonic()

    # ------------------------------------------------------------------------------ the API

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` under this policy.

        Raises :class:`TypeError` if the call returns a generator (see the class docstring).
        """
        start = None if self.deadline is None else self.clock.monotonic()
        try:
            result = fn(*args, **kwargs)
        except self._catch as exc:
            if not self._retryable(exc):
                raise
            failure: _Failure = exc
        else:
            if type(result) in GENERATOR_TYPES:
                raise generator_result_error(fn, result, "RetryPolicy")
            reject = self.retry_on_result
            if reject is None or not reject(result):
                return result
            failure = _Rejected(result)
        return self._retry(fn, args, kwargs, start, failure)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` under this policy.

        Raises :class:`TypeError` if the call returns a generator or an async generator instead
        of an awaitable (see the class docstring).
        """
        start = None if self.deadline is None else self.clock.monotonic()
        try:
            result = await _awaited(fn, args, kwargs)
        except self._catch as exc:
            if not self._retryable(exc):
                raise
            failure: _Failure = exc
        else:
            reject = self.retry_on_result
            if reject is None or not reject(result):
                return result
            failure = _Rejected(result)
        return await self._aretry(fn, args, kwargs, start, failure)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """A wrapper that calls ``fn`` under this policy; its success path is a bare call.

        The wrapper's shape is chosen here, once: the clock is read per call only when a
        deadline is set, and the result is inspected only when ``retry_on_result`` is set.
        Raises :class:`TypeError` for a coroutine function (use :meth:`awrap`) and for a
        generator or async generator function.
        """
        refuse_generator(fn, "RetryPolicy")
        refuse_coroutine_function(fn, "RetryPolicy")
        if hides_generator(fn):
            call = self.call

            def checked(*args: P.args, **kwargs: P.kwargs) -> R:
                return call(fn, *args, **kwargs)

            return functools.wraps(fn)(checked)
        if self.deadline is not None:
            wrapper = _sync_deadline_wrapper(self, fn)
        elif self.retry_on_result is not None:
            wrapper = _sync_result_wrapper(self, fn)
        else:
            wrapper = _sync_plain_wrapper(self, fn)
        return functools.wraps(fn)(wrapper)

    def awrap(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """The async twin of :meth:`wrap`: the wrapper awaits ``fn`` under this policy.

        Raises :class:`TypeError` for a generator or async generator function.
        """
        refuse_generator(fn, "RetryPolicy")
        if hides_generator(fn):
            acall = self.acall

            async def achecked(*args: P.args, **kwargs: P.kwargs) -> R:
                return await acall(fn, *args, **kwargs)

            return functools.wraps(fn)(achecked)
        if self.deadline is not None:
            wrapper = _async_deadline_wrapper(self, fn)
        elif self.retry_on_result is not None:
            wrapper = _async_result_wrapper(self, fn)
        else:
            wrapper = _async_plain_wrapper(self, fn)
        return functools.wraps(fn)(wrapper)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or async function (chosen by :func:`inspect.iscoroutinefunction`).

        Raises :class:`TypeError` for a generator or async generator function.
        """
        if inspect.iscoroutinefunction(fn):
            return self.awrap(fn)
        return self.wrap(fn)

    def with_(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated.

        The copy shares this policy's jitter generator unless ``jitter`` is among the changes.
        """
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------- wrappers
# One factory per wrapper shape, so that each success path carries only the work its policy
# needs. Everything the wrapper touches is bound to a closure cell here, not looked up per call.
# The retry starts outside the ``except`` block so that later exceptions are not chained to the
# first one.


def _sync_plain_wrapper(policy: RetryPolicy, fn: Callable[P, R]) -> Callable[P, R]:
    catch, check, retry = policy._catch, policy._check, policy._retry  # noqa: SLF001
    target: Callable[..., R] = fn  # called as fn(*args) when there are no keyword arguments

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            # Spreading an empty **kwargs costs more than testing it: skip it when empty.
            return target(*args, **kwargs) if kwargs else target(*args)
        except catch as exc:
            if check is not None and not check(exc):
                raise
            failure = exc
        return retry(fn, args, kwargs, None, failure)

    return wrapper


def _sync_result_wrapper(policy: RetryPolicy, fn: Callable[P, R]) -> Callable[P, R]:
    catch, check, retry = policy._catch, policy._check, policy._retry  # noqa: SLF001
    reject = policy.retry_on_result
    assert reject is not None  # noqa: S101 - chosen by wrap()

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = fn(*args, **kwargs)
        except catch as exc:
            if check is not None and not check(exc):
                raise
            failure: _Failure = exc
        else:
            if not reject(result):
                return result
            failure = _Rejected(result)
        return retry(fn, args, kwargs, None, failure)

    return wrapper


def _sync_deadline_wrapper(policy: RetryPolicy, fn: Callable[P, R]) -> Callable[P, R]:
    catch, check, retry = policy._catch, policy._check, policy._retry  # noqa: SLF001
    reject, monotonic = policy.retry_on_result, policy.clock.monotonic

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = monotonic()
        try:
            result = fn(*args, **kwargs)
        except catch as exc:
            if check is not None and not check(exc):
                raise
            failure: _Failure = exc
        else:
            if reject is None or not reject(result):
                return result
            failure = _Rejected(result)
        return retry(fn, args, kwargs, start, failure)

    return wrapper


def _async_plain_wrapper(
    policy: RetryPolicy, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Awaitable[R]]:
    catch, check, retry = policy._catch, policy._check, policy._aretry  # noqa: SLF001
    target: Callable[..., Awaitable[R]] = fn

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await (target(*args, **kwargs) if kwargs else target(*args))
        except catch as exc:
            if check is not None and not check(exc):
                raise
            failure = exc
        return await retry(fn, args, kwargs, None, failure)

    return wrapper


def _async_result_wrapper(
    policy: RetryPolicy, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Awaitable[R]]:
    catch, check, retry = policy._catch, policy._check, policy._aretry  # noqa: SLF001
    reject = policy.retry_on_result
    assert reject is not None  # noqa: S101 - chosen by awrap()

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = await fn(*args, **kwargs)
        except catch as exc:
            if check is not None and not check(exc):
                raise
            failure: _Failure = exc
        else:
            if not reject(result):
                return result
            failure = _Rejected(result)
        return await retry(fn, args, kwargs, None, failure)

    return wrapper


def _async_deadline_wrapper(
    policy: RetryPolicy, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Awaitable[R]]:
    catch, check, retry = policy._catch, policy._check, policy._aretry  # noqa: SLF001
    reject, monotonic = policy.retry_on_result, policy.clock.monotonic

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = monotonic()
        try:
            result = await fn(*args, **kwargs)
        except catch as exc:
            if check is not None and not check(exc):
                raise
            failure: _Failure = exc
        else:
            if reject is None or not reject(result):
                return result
            failure = _Rejected(result)
        return await retry(fn, args, kwargs, start, failure)

    return wrapper
