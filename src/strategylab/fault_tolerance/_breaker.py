"""The circuit breaker: fail fast in front of a dependency that is failing.

Semantics follow resilience4j. A CLOSED breaker permits calls and watches their outcomes; it trips
to OPEN on ``failure_threshold`` consecutive failures, or, once its sliding window holds
``minimum_calls`` outcomes, when the failure rate or the slow-call rate reaches its threshold. An
OPEN breaker rejects every call with a fresh :class:`~strategylab.errors.CircuitOpenError` until
``recovery_timeout`` has passed; then it is HALF_OPEN and admits at most ``half_open_max_calls``
concurrent trial calls. A failed trial re-opens it at once; ``half_open_max_calls`` successful
trials close it with a fresh window. FORCED_OPEN, FORCED_CLOSED and DISABLED are operator overrides
that only :meth:`CircuitBreaker.reset` (or another override) leaves.

One state machine (``_acquire`` before a call, ``_on_success``/``_on_error`` after it, all
transitions under one lock) serves every way in: the decorator, :meth:`CircuitBreaker.call`,
:meth:`CircuitBreaker.acall`, :meth:`CircuitBreaker.wrap` and :meth:`CircuitBreaker.awrap`. The
sync and async drivers are a few lines each. ``wrap``/``awrap`` pick, once, a driver specialised for
the configuration: in the default configuration (consecutive failures only) the CLOSED success path
reads no clock and takes no lock.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import itertools
import logging
import math
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, ParamSpec, TypeVar, overload

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import CircuitOpenError, ConfigurationError

__all__ = [
    "BreakerMetrics",
    "BreakerState",
    "CircuitBreaker",
    "SlidingWindowType",
    "open_breaker_names",
]

P = ParamSpec("P")
R = TypeVar("R")

_logger = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls are permitted and their outcomes recorded."""
    OPEN = "open"
    """Calls are rejected until the recovery timeout has passed."""
    HALF_OPEN = "half_open"
    """A limited number of trial calls decide between CLOSED and OPEN."""
    FORCED_OPEN = "forced_open"
    """Every call is rejected until :meth:`CircuitBreaker.reset`."""
    FORCED_CLOSED = "forced_closed"
    """Every call is permitted and recorded, but the breaker never trips."""
    DISABLED = "disabled"
    """Every call is permitted and nothing is recorded."""


class SlidingWindowType(enum.Enum):
    """How the failure-rate window is measured."""

    COUNT_BASED = "count_based"
    """The last ``sliding_window_size`` calls."""
    TIME_BASED = "time_based"
    """The calls of the last ``sliding_window_size`` seconds."""


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_FORCED_OPEN: Final = BreakerState.FORCED_OPEN
_FORCED_CLOSED: Final = BreakerState.FORCED_CLOSED
_DISABLED: Final = BreakerState.DISABLED
_REJECTING: Final = frozenset({_OPEN, _HALF_OPEN, _FORCED_OPEN})

# A permit says how the outcome of a permitted call is recorded. Trial calls in HALF_OPEN get the
# epoch (>= 0) they were admitted in, so a trial that outlives its half-open period is not counted
# against the next one.
_RECORD: Final = -1
_PASS: Final = -2
_SATURATED: Final = -3
_REJECT: Final = -4

_SUCCESS: Final = 0
_FAILURE: Final = 1
_IGNORED: Final = 2

_SLOW_BIT: Final = 2

Listener = Callable[["CircuitBreaker", BreakerState, BreakerState], object]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BreakerMetrics:
    """A snapshot of a breaker's state and counters.

    Rates are percentages, or ``-1.0`` while the window holds fewer than ``minimum_calls`` calls (or
    when no window is configured). The ``window_*`` and ``consecutive_failures`` figures are cleared
    by :meth:`CircuitBreaker.reset`; the call totals count since the breaker was created.
    ``successful_calls + failed_calls + ignored_calls + not_permitted`` is the number of calls made
    outside the DISABLED state.
    """

    state: BreakerState
    failure_rate: float
    slow_call_rate: float
    window_calls: int
    window_failures: int
    window_slow_calls: int
    consecutive_failures: int
    successful_calls: int
    failed_calls: int
    ignored_calls: int
    """Calls that ended in an ``ignore_on`` exception, or in a non-``Exception`` (cancellation)."""
    rejected_calls: int
    """Calls refused because the breaker was OPEN or FORCED_OPEN."""
    not_permitted: int
    """Every call refused with :class:`CircuitOpenError`: ``rejected_calls`` plus the calls refused
    because HALF_OPEN already had ``half_open_max_calls`` trials running."""

    def __post_init__(self) -> None:
        if not isinstance(self.state, BreakerState):
            raise TypeError(f"state={self.state!r}: expected a BreakerState")
        for key in ("failure_rate", "slow_call_rate"):
            rate = getattr(self, key)
            if not (rate == -1.0 or 0.0 <= rate <= 100.0):
                raise ValueError(f"{key}={rate!r}: expected a percentage or -1.0")
        for key in (
            "window_calls",
            "window_failures",
            "window_slow_calls",
            "consecutive_failures",
            "successful_calls",
            "failed_calls",
            "ignored_calls",
            "rejected_calls",
            "not_permitted",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)!r}: a count cannot be negative")
        if self.not_permitted < self.rejected_calls:
            raise ValueError(
                f"not_permitted={self.not_permitted!r}: less than rejected_calls="
                f"{self.rejected_calls!r}"
            )


_COUNTER_SPAN: Final = sys.maxsize
"""Increments an :class:`_AtomicCounter` can take: centuries at a hundred million a second."""


class _AtomicCounter:
    """A counter that threads can bump without a lock.

    An increment takes one item from an :func:`itertools.repeat` of ``None``: ``next(ticks)`` is one
    C call, atomic under the GIL, that (unlike ``next()`` on an :func:`itertools.count`) allocates
    no int. The value is the number of items taken, read atomically from ``__length_hint__``.
    """

    __slots__ = ("increment", "ticks")

    def __init__(self) -> None:
        self.ticks: Final = itertools.repeat(None, _COUNTER_SPAN)
        """Hot paths bind this and call ``next(ticks)``, a little cheaper than :attr:`increment`."""
        self.increment: Final = self.ticks.__next__

    @property
    def value(self) -> int:
        return _COUNTER_SPAN - self.ticks.__length_hint__()


class _CountWindow:
    """The outcomes of the last ``size`` calls in a ring buffer with running totals."""

    __slots__ = ("_buffer", "_calls", "_failures", "_index", "_size", "_slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._buffer = bytearray(size)
        self._index = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def record(self, now: float, code: int) -> None:  # noqa: ARG002 - same signature as _TimeWindow
        index = self._index
        if self._calls == self._size:
            old = self._buffer[index]
            self._failures -= old & _FAILURE
            self._slow -= old >> 1
        else:
            self._calls += 1
        self._buffer[index] = code
        self._failures += code & _FAILURE
        self._slow += code >> 1
        self._index = index + 1 if index + 1 < self._size else 0

    def totals(self, now: float) -> tuple[int, int, int]:  # noqa: ARG002
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._buffer = bytearray(self._size)
        self._index = self._calls = self._failures = self._slow = 0


class _TimeWindow:
    """The outcomes of the last ``size`` seconds, in one bucket per second with running totals."""

    __slots__ = (
        "_b_calls",
        "_b_failures",
        "_b_slow",
        "_calls",
        "_failures",
        "_head",
        "_size",
        "_slow",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        self._b_calls = [0] * size
        self._b_failures = [0] * size
        self._b_slow = [0] * size
        self._calls = self._failures = self._slow = 0
        self._head: int | None = None
        """The newest second the buckets account for."""

    def _advance(self, now: float) -> int:
        second = int(now // 1)
        head = self._head
        if head is None or second - head >= self._size:
            self._reset_buckets()
        elif second > head:
            # Each bucket is cleared at most once per second that passes: amortised O(1).
            size = self._size
            for sec in range(head + 1, second + 1):
                i = sec % size
                self._calls -= self._b_calls[i]
                self._failures -= self._b_failures[i]
                self._slow -= self._b_slow[i]
                self._b_calls[i] = self._b_failures[i] = self._b_slow[i] = 0
        if head is None or second > head:
            self._head = second
            return second
        # A clock read before a concurrent, later record: count it in the newest bucket.
        return head

    def _reset_buckets(self) -> None:
        size = self._size
        self._b_calls = [0] * size
        self._b_failures = [0] * size
        self._b_slow = [0] * size
        self._calls = self._failures = self._slow = 0

    def record(self, now: float, code: int) -> None:
        i = self._advance(now) % self._size
        failed, slow = code & _FAILURE, code >> 1
        self._b_calls[i] += 1
        self._b_failures[i] += failed
        self._b_slow[i] += slow
        self._calls += 1
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._reset_buckets()
        self._head = None


_REGISTRY: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_REGISTRY_LOCK = threading.Lock()


def open_breaker_names() -> tuple[str, ...]:
    """The sorted names of every breaker in this process that is OPEN, HALF_OPEN or FORCED_OPEN."""
    with _REGISTRY_LOCK:
        breakers = list(_REGISTRY)
    return tuple(sorted(b.name for b in breakers if b._state in _REJECTING))  # noqa: SLF001


class CircuitBreaker:
    """A circuit breaker in front of one dependency (resilience4j semantics).

    Use it as a decorator on a sync or async function, through :meth:`call`/:meth:`acall`, or get a
    guarded callable with :meth:`wrap`/:meth:`awrap`. ``record_on`` says which exceptions are
    failures and ``ignore_on`` which count as neither success nor failure (it wins over
    ``record_on``); any other ``Exception`` counts as a success, and a ``BaseException`` that is not
    an ``Exception`` (cancellation, ``KeyboardInterrupt``) is ignored unless ``record_on`` names it.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_consecutive_failures",
        "_epoch",
        "_failed_calls",
        "_failure_rate_threshold",
        "_failure_threshold",
        "_half_open_max_calls",
        "_ignore_on",
        "_ignored_calls",
        "_listeners",
        "_lock",
        "_minimum_calls",
        "_monotonic",
        "_name",
        "_open_until",
        "_record_on",
        "_recovery_timeout",
        "_rejected",
        "_saturated",
        "_sliding_window_size",
        "_sliding_window_type",
        "_slow_call_duration_threshold",
        "_slow_call_rate_threshold",
        "_state",
        "_successes",
        "_timed",
        "_trial_successes",
        "_trials_in_flight",
        "_window",
    )

    def __init__(
        self,
        name: str,
        failure_threshold: int | None = 5,
        recovery_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        *,
        failure_rate_threshold: float | None = None,
        sliding_window_type: SlidingWindowType = SlidingWindowType.COUNT_BASED,
        sliding_window_size: int = 100,
        minimum_calls: int = 10,
        slow_call_duration_threshold: float | None = None,
        slow_call_rate_threshold: float | None = None,
        half_open_max_calls: int = 1,
        record_on: tuple[type[BaseException], ...] = (Exception,),
        ignore_on: tuple[type[BaseException], ...] = (),
        listeners: Iterable[Listener] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "expected a non-empty string")
        if not isinstance(clock, Clock):
            raise TypeError(f"clock={clock!r}: expected a Clock (monotonic, time, sleep, asleep)")
        if not isinstance(sliding_window_type, SlidingWindowType):
            raise TypeError(
                f"sliding_window_type={sliding_window_type!r}: expected a SlidingWindowType"
            )
        self._name = name
        self._failure_threshold = (
            None if failure_threshold is None else _count("failure_threshold", failure_threshold)
        )
        self._recovery_timeout = _seconds("recovery_timeout", recovery_timeout, allow_zero=True)
        self._clock = clock
        self._monotonic = clock.monotonic
        self._failure_rate_threshold = _percent("failure_rate_threshold", failure_rate_threshold)
        self._sliding_window_type = sliding_window_type
        self._sliding_window_size = _count("sliding_window_size", sliding_window_size)
        self._minimum_calls = _count("minimum_calls", minimum_calls)
        self._slow_call_duration_threshold = (
            None
            if slow_call_duration_threshold is None
            else _seconds("slow_call_duration_threshold", slow_call_duration_threshold)
        )
        self._slow_call_rate_threshold = _percent(
            "slow_call_rate_threshold", slow_call_rate_threshold
        )
        if (
            self._slow_call_rate_threshold is not None
            and self._slow_call_duration_threshold is None
        ):
            raise ConfigurationError(
                "slow_call_rate_threshold",
                slow_call_rate_threshold,
                "needs slow_call_duration_threshold to say what a slow call is",
            )
        self._half_open_max_calls = _count("half_open_max_calls", half_open_max_calls)
        self._record_on = _exception_types("record_on", record_on, allow_empty=False)
        self._ignore_on = _exception_types("ignore_on", ignore_on, allow_empty=True)
        listeners = tuple(listeners)
        for listener in listeners:
            if not callable(listener):
                raise TypeError(f"listeners: {listener!r} is not callable")
        self._listeners: tuple[Listener, ...] = listeners

        # A window exists only when something reads it: a rate threshold or slow-call metrics.
        self._window: _CountWindow | _TimeWindow | None = None
        if (
            self._failure_rate_threshold is not None
            or self._slow_call_duration_threshold is not None
        ):
            if sliding_window_type is SlidingWindowType.COUNT_BASED:
                self._window = _CountWindow(self._sliding_window_size)
                # A count window can never hold more calls than its size.
                self._minimum_calls = min(self._minimum_calls, self._sliding_window_size)
            else:
                self._window = _TimeWindow(self._sliding_window_size)
        self._timed = self._slow_call_duration_threshold is not None or isinstance(
            self._window, _TimeWindow
        )

        self._lock = threading.Lock()
        self._state = _CLOSED
        self._open_until = 0.0
        self._epoch = 0
        self._consecutive_failures = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._failed_calls = 0
        self._ignored_calls = 0
        self._successes = _AtomicCounter()
        self._rejected = _AtomicCounter()
        self._saturated = _AtomicCounter()
        with _REGISTRY_LOCK:
            _REGISTRY.add(self)

    # ------------------------------------------------------------------------------ inspection

    @property
    def name(self) -> str:
        """The breaker's name, as carried by its :class:`CircuitOpenError`."""
        return self._name

    @property
    def failure_threshold(self) -> int | None:
        """Consecutive failures that trip the breaker, or None when that rule is off."""
        return self._failure_threshold

    @property
    def recovery_timeout(self) -> float:
        """Seconds an OPEN breaker waits before it admits trial calls."""
        return self._recovery_timeout

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker past its recovery timeout becomes HALF_OPEN."""
        state = self._state
        if state is _OPEN and self._monotonic() >= self._open_until:
            transitions: list[tuple[BreakerState, BreakerState]] = []
            with self._lock:
                if self._state is _OPEN and self._monotonic() >= self._open_until:
                    self._transition(_HALF_OPEN, transitions)
                state = self._state
            self._notify(transitions)
        return state

    def metrics(self) -> BreakerMetrics:
        """A consistent-enough snapshot of the state, the window and the totals."""
        state = self.state
        with self._lock:
            window = self._window
            calls = failures = slow = 0
            if window is not None:
                calls, failures, slow = window.totals(self._monotonic())
            enough = window is not None and calls >= self._minimum_calls
            failure_rate = failures * 100.0 / calls if enough else -1.0
            slow_rate = (
                slow * 100.0 / calls
                if enough and self._slow_call_duration_threshold is not None
                else -1.0
            )
            consecutive = self._consecutive_failures
            failed = self._failed_calls
            ignored = self._ignored_calls
        rejected = self._rejected.value
        return BreakerMetrics(
            state=state,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            window_calls=calls,
            window_failures=failures,
            window_slow_calls=slow,
            consecutive_failures=consecutive,
            successful_calls=self._successes.value,
            failed_calls=failed,
            ignored_calls=ignored,
            rejected_calls=rejected,
            not_permitted=rejected + self._saturated.value,
        )

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self._name!r}, state={self._state.value})"

    # ------------------------------------------------------------------------------ listeners

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(breaker, old_state, new_state)`` after every transition."""
        if not callable(listener):
            raise TypeError(f"listener={listener!r}: not callable")
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was never added."""
        with self._lock:
            listeners = list(self._listeners)
            try:
                listeners.remove(listener)
            except ValueError:
                raise ValueError(f"listener={listener!r}: not a listener of {self!r}") from None
            self._listeners = tuple(listeners)

    def _notify(self, transitions: list[tuple[BreakerState, BreakerState]]) -> None:
        for old, new in transitions:
            for listener in self._listeners:
                try:
                    listener(self, old, new)
                except Exception:
                    # A broken observer must not break the breaker it observes.
                    _logger.exception(
                        "listener %r of circuit breaker %r failed on %s -> %s",
                        listener,
                        self._name,
                        old.value,
                        new.value,
                    )

    # ------------------------------------------------------------------------------ overrides

    def trip(self) -> bool:
        """Open now, as if a threshold had been crossed, with a fresh recovery timeout.

        Operator overrides win: a FORCED_CLOSED or DISABLED breaker stays as it is. Returns True
        when the breaker now rejects calls.
        """
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            state = self._state
            if state is _CLOSED or state is _OPEN or state is _HALF_OPEN:
                self._open(self._monotonic(), transitions)
            opened = self._state is _OPEN or self._state is _FORCED_OPEN
        self._notify(transitions)
        return opened

    def force_open(self) -> None:
        """Reject every call until :meth:`reset`."""
        self._override(_FORCED_OPEN)

    def force_closed(self) -> None:
        """Permit every call and keep recording, but never trip, until :meth:`reset`."""
        self._override(_FORCED_CLOSED)

    def disable(self) -> None:
        """Permit every call and record nothing until :meth:`reset`."""
        self._override(_DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with the window and the consecutive-failure count cleared."""
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._clear_window()
            self._transition(_CLOSED, transitions)
        self._notify(transitions)

    def _override(self, state: BreakerState) -> None:
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._transition(state, transitions)
        self._notify(transitions)

    # ------------------------------------------------------------------------------ state machine
    # Everything below that writes state runs under self._lock, except the lock-free success path
    # in the default configuration, which only clears a nonzero consecutive-failure count.

    def _transition(
        self, new: BreakerState, transitions: list[tuple[BreakerState, BreakerState]]
    ) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._epoch += 1
        self._trials_in_flight = 0
        self._trial_successes = 0
        transitions.append((old, new))

    def _open(self, now: float, transitions: list[tuple[BreakerState, BreakerState]]) -> None:
        self._open_until = now + self._recovery_timeout
        self._transition(_OPEN, transitions)

    def _clear_window(self) -> None:
        self._consecutive_failures = 0
        if self._window is not None:
            self._window.clear()

    def _acquire(self) -> int:
        """Permit a call (returning how to record it) or raise :class:`CircuitOpenError`."""
        state = self._state
        if state is _CLOSED or state is _FORCED_CLOSED:
            return _RECORD
        if state is _DISABLED:
            return _PASS
        if state is _OPEN:
            wait = self._open_until - self._monotonic()
            if wait > 0.0:
                self._rejected.increment()
                raise CircuitOpenError(self._name, wait)
        elif state is _FORCED_OPEN:
            self._rejected.increment()
            raise CircuitOpenError(self._name, math.inf)
        return self._acquire_locked()

    def _acquire_locked(self) -> int:
        transitions: list[tuple[BreakerState, BreakerState]] = []
        wait = 0.0
        with self._lock:
            state = self._state
            if state is _OPEN:
                wait = self._open_until - self._monotonic()
                if wait <= 0.0:
                    self._transition(_HALF_OPEN, transitions)
                    state = _HALF_OPEN
            if state is _HALF_OPEN:
                if self._trials_in_flight + self._trial_successes < self._half_open_max_calls:
                    self._trials_in_flight += 1
                    permit = self._epoch
                else:
                    permit = _SATURATED
            elif state is _CLOSED or state is _FORCED_CLOSED:
                permit = _RECORD
            elif state is _DISABLED:
                permit = _PASS
            else:
                permit = _REJECT
                if state is _FORCED_OPEN:
                    wait = math.inf
        self._notify(transitions)
        if permit == _SATURATED:
            self._saturated.increment()
            raise CircuitOpenError(self._name, 0.0)
        if permit == _REJECT:
            self._rejected.increment()
            raise CircuitOpenError(self._name, wait)
        return permit

    def _on_success(self, permit: int, start: float) -> None:
        if permit == _RECORD and self._window is None:
            self._successes.increment()
            if self._consecutive_failures:
                self._consecutive_failures = 0
            return
        now = self._monotonic() if self._timed else 0.0
        slow = (
            self._slow_call_duration_threshold is not None
            and now - start >= self._slow_call_duration_threshold
        )
        self._record(permit, _SUCCESS, slow=slow, now=now)

    def _on_error(self, permit: int, exc: BaseException, start: float) -> None:
        if isinstance(exc, self._ignore_on):
            outcome = _IGNORED
        elif isinstance(exc, self._record_on):
            outcome = _FAILURE
        elif isinstance(exc, Exception):
            outcome = _SUCCESS
        else:
            outcome = _IGNORED
        now = self._monotonic() if self._timed else 0.0
        slow = (
            self._slow_call_duration_threshold is not None
            and now - start >= self._slow_call_duration_threshold
        )
        self._record(permit, outcome, slow=slow, now=now)

    def _record(self, permit: int, outcome: int, *, slow: bool, now: float) -> None:
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            if outcome == _SUCCESS:
                self._successes.increment()
            elif outcome == _FAILURE:
                self._failed_calls += 1
            else:
                self._ignored_calls += 1
            state = self._state
            if permit == _RECORD:
                if outcome != _IGNORED and (state is _CLOSED or state is _FORCED_CLOSED):
                    self._record_closed(state, outcome, slow=slow, now=now, transitions=transitions)
            elif state is _HALF_OPEN and permit == self._epoch:
                self._trials_in_flight -= 1
                if outcome == _FAILURE or slow:
                    self._open(self._monotonic() if not self._timed else now, transitions)
                elif outcome == _SUCCESS:
                    self._trial_successes += 1
                    if self._trial_successes >= self._half_open_max_calls:
                        self._clear_window()
                        self._transition(_CLOSED, transitions)
        if transitions:
            self._notify(transitions)

    def _record_closed(
        self,
        state: BreakerState,
        outcome: int,
        *,
        slow: bool,
        now: float,
        transitions: list[tuple[BreakerState, BreakerState]],
    ) -> None:
        failed = outcome == _FAILURE
        if failed:
            self._consecutive_failures += 1
        else:
            self._consecutive_failures = 0
        window = self._window
        trip = (
            failed
            and self._failure_threshold is not None
            and self._consecutive_failures >= self._failure_threshold
        )
        if window is not None:
            window.record(now, (_SLOW_BIT if slow else 0) | (_FAILURE if failed else 0))
            calls, failures, slow_calls = window.totals(now)
            if calls >= self._minimum_calls:
                rate = self._failure_rate_threshold
                slow_rate = self._slow_call_rate_threshold
                trip = (
                    trip
                    or (rate is not None and failures * 100.0 >= rate * calls)
                    or (slow_rate is not None and slow_calls * 100.0 >= slow_rate * calls)
                )
        if trip and state is _CLOSED:
            self._open(now if self._timed else self._monotonic(), transitions)

    # ------------------------------------------------------------------------------ drivers

    def _call(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        permit = self._acquire()
        if permit == _PASS:
            return fn(*args, **kwargs)
        start = self._monotonic() if self._timed else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(permit, exc, start)
            raise
        self._on_success(permit, start)
        return result

    async def _acall(
        self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        permit = self._acquire()
        if permit == _PASS:
            return await fn(*args, **kwargs)
        start = self._monotonic() if self._timed else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(permit, exc, start)
            raise
        self._on_success(permit, start)
        return result

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the breaker."""
        return self._call(fn, args, kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        return await self._acall(fn, args, kwargs)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` guarded by this breaker: a wrapper that calls ``fn`` directly."""
        # The driver is chosen once, here, so the per-call path carries no configuration checks.
        driver = _sync_windowed if self._window is not None else _sync_fast
        return functools.wraps(fn)(driver(self, fn))

    def awrap(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[object, None, R]]:
        """``fn`` guarded by this breaker: an async wrapper that awaits ``fn`` directly."""
        driver = _async_windowed if self._window is not None else _async_fast
        return functools.wraps(fn)(driver(self, fn))

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[object, None, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or an async function (``@breaker``)."""
        if inspect.iscoroutinefunction(fn):
            return self.awrap(fn)
        return self.wrap(fn)


# ------------------------------------------------------------------------------------ drivers
# The guarded callables that wrap() and awrap() return. Everything they use is bound to closure
# locals; a state other than CLOSED (or OPEN within its timeout) goes to the general driver.


def _sync_fast(breaker: CircuitBreaker, fn: Callable[P, R]) -> Callable[P, R]:
    """Consecutive failures only: the CLOSED success path reads no clock and takes no lock."""
    call = breaker._call  # noqa: SLF001
    on_error = breaker._on_error  # noqa: SLF001
    successes, next_ = breaker._successes.ticks, next  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    closed, open_, record, rejection = _CLOSED, _OPEN, _RECORD, CircuitOpenError
    target: Callable[..., R] = fn  # called as fn(*args) when there are no keyword arguments

    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        # The state is read again off the CLOSED path rather than kept in a local: storing it
        # costs the success path more than the second read costs the others.
        if breaker._state is not closed:  # noqa: SLF001
            if breaker._state is open_:  # noqa: SLF001
                wait = breaker._open_until - monotonic()  # noqa: SLF001
                if wait > 0.0:
                    count_rejected()
                    raise rejection(name, wait)
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


def _sync_windowed(breaker: CircuitBreaker, fn: Callable[P, R]) -> Callable[P, R]:
    """A rate window or slow-call threshold: outcomes are recorded under the lock anyway."""
    call = breaker._call  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    open_, rejection = _OPEN, CircuitOpenError

    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._state is open_:  # noqa: SLF001
            wait = breaker._open_until - monotonic()  # noqa: SLF001
            if wait > 0.0:
                count_rejected()
                raise rejection(name, wait)
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
    target: Callable[..., Awaitable[R]] = fn

    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._state is not closed:  # noqa: SLF001
            if breaker._state is open_:  # noqa: SLF001
                wait = breaker._open_until - monotonic()  # noqa: SLF001
                if wait > 0.0:
                    count_rejected()
                    raise rejection(name, wait)
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


def _async_windowed(
    breaker: CircuitBreaker, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[object, None, R]]:
    """The async twin of :func:`_sync_windowed`."""
    acall = breaker._acall  # noqa: SLF001
    count_rejected = breaker._rejected.increment  # noqa: SLF001
    monotonic = breaker._monotonic  # noqa: SLF001
    name = breaker.name
    open_, rejection = _OPEN, CircuitOpenError

    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if breaker._state is open_:  # noqa: SLF001
            wait = breaker._open_until - monotonic()  # noqa: SLF001
            if wait > 0.0:
                count_rejected()
                raise rejection(name, wait)
        return await acall(fn, args, kwargs)

    return guarded


# ---------------------------------------------------------------------------------- validation


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key}={value!r}: expected an int")
    if value < 1:
        raise ConfigurationError(key, value, "must be at least 1")
    return value


def _seconds(key: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key}={value!r}: expected a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0.0 or (seconds == 0.0 and not allow_zero):
        reason = "must be finite and not negative" if allow_zero else "must be finite and positive"
        raise ConfigurationError(key, value, reason)
    return seconds


def _percent(key: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key}={value!r}: expected a percentage")
    if not 0.0 < value <= 100.0:
        raise ConfigurationError(key, value, "must be a percentage, 0 < x <= 100")
    return float(value)


def _exception_types(
    key: str, value: object, *, allow_empty: bool
) -> tuple[type[BaseException], ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise TypeError(f"{key}={value!r}: expected a tuple of exception classes")
    if not value and not allow_empty:
        raise ConfigurationError(key, value, "must name at least one exception class")
    return value
