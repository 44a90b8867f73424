"""The circuit breaker: fail fast in front of a dependency that is failing.

Semantics follow resilience4j. A CLOSED breaker permits calls and watches their outcomes; it trips
to OPEN on ``failure_threshold`` consecutive failures, or, once its sliding window holds
``minimum_calls`` outcomes, when the failure rate or the slow-call rate reaches its threshold. An
OPEN breaker rejects every call with a fresh :class:`~strategylab.errors.CircuitOpenError` until
``recovery_timeout`` has passed; then it is HALF_OPEN and admits at most ``half_open_max_calls``
concurrent trial calls. A failed trial re-opens it at once; ``half_open_max_calls`` successful
trials close it with a fresh window; a trial that is ignored (an ``ignore_on`` exception, a
cancellation, an ``ignore_result`` value) only frees its place. A breaker left HALF_OPEN for
``max_wait_in_half_open`` seconds without a decision (a trial that never returns) re-opens.
FORCED_OPEN, FORCED_CLOSED and DISABLED are operator overrides that only
:meth:`CircuitBreaker.reset` (or another override) leaves. Every timer is evaluated lazily, against
the injected clock, when the breaker is next used or inspected: no thread or task runs in the
background.

One state machine (``_acquire`` before a call, ``_on_success``/``_on_error`` after it, all
transitions under one lock) serves every way in: the decorator, :meth:`CircuitBreaker.call`,
:meth:`CircuitBreaker.acall`, :meth:`CircuitBreaker.wrap` and :meth:`CircuitBreaker.awrap`. The
sync and async drivers are a few lines each. ``wrap``/``awrap`` pick, once, a driver specialised for
the configuration: in the default configuration (consecutive failures only) the CLOSED success path
reads no clock and takes no lock.

The drivers test one attribute, ``_gate``, rather than ``_state``: it *is* the state while no call
listener is registered, and a sentinel that no state equals while one is, so that every call then
takes the general path, which publishes the events. Listeners therefore cost the hot path nothing
until one is added, and a listener added after ``wrap`` is still honoured.

This module holds the state machine (:class:`CircuitBreaker`); its vocabulary (states, outcome
codes, :class:`BreakerMetrics`, :class:`BreakerCallListener`) is in :mod:`._breaker_state`, the
sliding windows and lock-free counters in :mod:`._breaker_window`, and the guarded callables that
``wrap``/``awrap`` return in :mod:`._breaker_drivers`. The public names are re-exported here.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, NoReturn, ParamSpec, TypeVar, overload

from strategylab import _validate
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import CircuitOpenError, ConfigurationError

from ._breaker_drivers import _async_fast, _async_general, _sync_fast, _sync_general
from ._breaker_state import (
    _CLOSED,
    _DISABLED,
    _EVENTS,
    _FAILURE,
    _FORCED_CLOSED,
    _FORCED_OPEN,
    _HALF_OPEN,
    _IGNORED,
    _LISTENED,
    _OPEN,
    _PASS,
    _RECORD,
    _REJECT,
    _REJECTING,
    _SATURATED,
    _SLOW_BIT,
    _SUCCESS,
    DEFAULT_MAX_WAIT_IN_HALF_OPEN,
    BreakerCallListener,
    BreakerMetrics,
    BreakerState,
    ExceptionMatcher,
    Listener,
    ResultPredicate,
    SharedBreakerState,
    SlidingWindowType,
    _CallEvents,
)
from ._breaker_window import _AtomicCounter, _CountWindow, _TimeWindow
from ._typing import (
    GENERATOR_TYPES,
    generator_result_error,
    hides_generator,
    refuse_coroutine_function,
    refuse_generator,
)

__all__ = [
    "BreakerCallListener",
    "BreakerMetrics",
    "BreakerState",
    "CircuitBreaker",
    "SlidingWindowType",
    "open_breaker_names",
]

P = ParamSpec("P")
R = TypeVar("R")

_logger = logging.getLogger(__name__)


_REGISTRY: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_REGISTRY_LOCK = threading.Lock()


def open_breaker_names() -> tuple[str, ...]:
    """The sorted names of every breaker in this process that is OPEN, HALF_OPEN or FORCED_OPEN."""
    with _REGISTRY_LOCK:
        breakers = list(_REGISTRY)
    # ``_state``, not ``_gate``: the gate is a sentinel while call listeners are registered.
    return tuple(sorted(b.name for b in breakers if b._state in _REJECTING))  # noqa: SLF001


class CircuitBreaker:
    """A circuit breaker in front of one dependency (resilience4j semantics).

    Use it as a decorator on a sync or async function, through :meth:`call`/:meth:`acall`, or get a
    guarded callable with :meth:`wrap`/:meth:`awrap`. Generator functions (sync or async) are
    refused with ``TypeError``: their outcome happens while they are iterated, not when the
    generator is created.

    Classifying outcomes (resilience4j ``recordExceptions``/``ignoreExceptions``/``recordResult``):

    - ``record_on`` says which exceptions are failures and ``ignore_on`` which count as neither
      success nor failure (it wins over ``record_on``). Each is an exception class, a tuple of them,
      or a predicate on the exception; a predicate is asked only about ``Exception`` instances. Any
      other ``Exception`` counts as a success, and a ``BaseException`` that is not an ``Exception``
      (cancellation, ``KeyboardInterrupt``) is ignored unless a ``record_on`` class names it.
    - ``record_result(value)`` True makes a returned value a failure; ``ignore_result(value)``
      True makes it neither (it wins over ``record_result``). Results are inspected only when one
      of them is set. A predicate that raises propagates its error; the call then counts as
      ignored.

    Time settings are seconds on ``clock``. ``max_wait_in_half_open`` (resilience4j
    ``maxWaitDurationInHalfOpenState``, default 60 s) bounds how long the breaker stays HALF_OPEN
    without a decision: then it re-opens for a fresh ``recovery_timeout`` and a trial that returns
    later is not counted. It must exceed the slowest trial you expect to succeed. ``None`` or ``0``
    waits for ever, like resilience4j's ``0``, at the risk of a trial that never returns keeping the
    breaker HALF_OPEN for good. A slow trial (``slow_call_duration_threshold``) re-opens the breaker
    only when ``slow_call_rate_threshold`` is set; otherwise slowness is only measured.

    Every :class:`~strategylab.errors.CircuitOpenError` the breaker raises is a new instance that
    carries the last exception the breaker recorded as a failure as ``last_failure`` (not chained:
    the rejection's traceback stays short). ``last_failure`` is None after a failure by result,
    and is cleared when the breaker closes after its trials or is reset.

    ``shared`` (a :class:`SharedBreakerState`, e.g. a
    :class:`strategylab.distributed.RedisBreakerBackend`) shares the state with every process's
    breaker of the same name: local transitions are published to it, the state it publishes is
    :meth:`adopt`-ed, and a HALF_OPEN trial must be claimed from it. The CLOSED path and the OPEN
    rejection never consult it.

    Raises :class:`~strategylab.errors.ConfigurationError` (naming the key) for an out-of-range
    setting and ``TypeError`` for a setting of the wrong type.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_consecutive_failures",
        "_epoch",
        "_events",
        "_failed_calls",
        "_failure_rate_threshold",
        "_failure_threshold",
        "_fast",
        "_gate",
        "_half_open_max_calls",
        "_half_open_until",
        "_ignore_check",
        "_ignore_result",
        "_ignore_types",
        "_ignored_calls",
        "_judges_results",
        "_last_failure",
        "_listeners",
        "_lock",
        "_max_wait",
        "_minimum_calls",
        "_monotonic",
        "_name",
        "_open_until",
        "_record_check",
        "_record_result",
        "_record_types",
        "_recovery_timeout",
        "_rejected",
        "_saturated",
        "_shared",
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
        max_wait_in_half_open: float | None = DEFAULT_MAX_WAIT_IN_HALF_OPEN,
        record_on: ExceptionMatcher = (Exception,),
        ignore_on: ExceptionMatcher = (),
        record_result: ResultPredicate | None = None,
        ignore_result: ResultPredicate | None = None,
        listeners: Iterable[Listener] = (),
        shared: SharedBreakerState | None = None,
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
        self._max_wait = _max_wait(max_wait_in_half_open)
        self._record_types, self._record_check = _matcher("record_on", record_on, allow_empty=False)
        self._ignore_types, self._ignore_check = _matcher("ignore_on", ignore_on, allow_empty=True)
        self._record_result = _result_predicate("record_result", record_result)
        self._ignore_result = _result_predicate("ignore_result", ignore_result)
        self._judges_results = record_result is not None or ignore_result is not None
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
        # The drivers that read no clock and take no lock on success need nothing to record but
        # the consecutive count, and no result to look at.
        self._fast = self._window is None and not self._judges_results

        self._init_runtime()
        with _REGISTRY_LOCK:
            _REGISTRY.add(self)
        self._shared = shared
        if shared is not None:
            shared.register(self)

    def _init_runtime(self) -> None:
        """The state and counters a new breaker starts with."""
        self._lock = threading.Lock()
        self._state = _CLOSED
        self._events: _CallEvents | None = None
        self._gate: object = _CLOSED
        self._last_failure: BaseException | None = None
        self._open_until = 0.0
        self._half_open_until = math.inf
        self._epoch = 0
        self._consecutive_failures = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._failed_calls = 0
        self._ignored_calls = 0
        self._successes = _AtomicCounter()
        self._rejected = _AtomicCounter()
        self._saturated = _AtomicCounter()

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
    def max_wait_in_half_open(self) -> float | None:
        """Seconds HALF_OPEN may last without a decision before re-opening; None: for ever."""
        return None if self._max_wait == math.inf else self._max_wait

    @property
    def half_open_max_calls(self) -> int:
        """Trial calls admitted in HALF_OPEN (with a shared backend: cluster-wide)."""
        return self._half_open_max_calls

    @property
    def last_failure(self) -> BaseException | None:
        """The last exception recorded as a failure, as carried by :class:`CircuitOpenError`."""
        return self._last_failure

    @property
    def state(self) -> BreakerState:
        """The current state, with the timers applied.

        An OPEN breaker past its recovery timeout becomes HALF_OPEN; a HALF_OPEN breaker past
        ``max_wait_in_half_open`` becomes OPEN.
        """
        state = self._state
        if state is _OPEN or state is _HALF_OPEN:
            due = self._open_until if state is _OPEN else self._half_open_until
            if self._monotonic() >= due:
                transitions: list[tuple[BreakerState, BreakerState]] = []
                with self._lock:
                    state = self._advance(self._monotonic(), transitions)
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

    def add_call_listener(self, listener: object) -> None:
        """Publish every call's events to ``listener`` (see :class:`BreakerCallListener`).

        ``listener`` needs at least one of ``before_call``, ``on_success``, ``on_failure``,
        ``on_ignored`` and ``on_rejected`` (``TypeError`` otherwise). Listeners apply to every way
        in, including wrappers built before they were added. While none is registered the calls
        pay nothing for the feature.
        """
        methods = [getattr(listener, event, None) for event in _EVENTS]
        if not any(callable(m) for m in methods):
            raise TypeError(
                f"listener={listener!r}: has none of the call-listener methods {', '.join(_EVENTS)}"
            )
        for event, method in zip(_EVENTS, methods, strict=True):
            if method is not None and not callable(method):
                raise TypeError(f"listener={listener!r}: its {event} is not callable")
        with self._lock:
            current = () if self._events is None else self._events.listeners
            self._events = _CallEvents.of((*current, listener))
            self._gate = _LISTENED

    def remove_call_listener(self, listener: object) -> None:
        """Stop publishing call events to ``listener``; ``ValueError`` if it was never added."""
        with self._lock:
            listeners = [] if self._events is None else list(self._events.listeners)
            try:
                listeners.remove(listener)
            except ValueError:
                raise ValueError(
                    f"listener={listener!r}: not a call listener of {self!r}"
                ) from None
            self._events = _CallEvents.of(tuple(listeners)) if listeners else None
            self._gate = self._state if self._events is None else _LISTENED

    def _emit(self, callbacks: tuple[Callable[..., object], ...], *args: object) -> None:
        for callback in callbacks:
            try:
                callback(self, *args)
            except Exception:
                # A broken observer must not break the call it observes.
                _logger.exception(
                    "call listener %r of circuit breaker %r failed", callback, self._name
                )

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
            self._last_failure = None
            self._transition(_CLOSED, transitions)
        self._notify(transitions)

    def _override(self, state: BreakerState) -> None:
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            self._transition(state, transitions)
        self._notify(transitions)

    def adopt(self, state: BreakerState, remaining: float) -> bool:
        """Take a state decided elsewhere (by a shared backend), without publishing it back.

        ``state`` is CLOSED, OPEN or HALF_OPEN; ``remaining`` is the seconds on this breaker's
        clock until its timer falls due (OPEN: the end of the recovery timeout; HALF_OPEN: the end
        of ``max_wait_in_half_open``, ``math.inf`` for never; ignored for CLOSED). Adopting the
        current state only moves its timer. Listeners see a transition. An operator override
        (FORCED_OPEN, FORCED_CLOSED, DISABLED) wins: the breaker is left as it is and False is
        returned; otherwise True. ``ValueError`` for another ``state``.
        """
        if state is not _CLOSED and state is not _OPEN and state is not _HALF_OPEN:
            raise ValueError(f"state={state!r}: only CLOSED, OPEN or HALF_OPEN can be adopted")
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            current = self._state
            if current is not _CLOSED and current is not _OPEN and current is not _HALF_OPEN:
                return False
            now = self._monotonic()
            if state is _OPEN:
                self._open_until = now + remaining
            elif state is _HALF_OPEN:
                self._half_open_until = now + remaining
            elif current is not _CLOSED:
                self._clear_window()
                self._last_failure = None
            self._transition(state, transitions, publish=False)
        self._notify(transitions)
        return True

    # ------------------------------------------------------------------------------ state machine
    # Everything below that writes state runs under self._lock, except the lock-free success path
    # in the default configuration, which only clears a nonzero consecutive-failure count.

    def _transition(
        self,
        new: BreakerState,
        transitions: list[tuple[BreakerState, BreakerState]],
        *,
        publish: bool = True,
    ) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._gate = new if self._events is None else _LISTENED
        self._epoch += 1
        self._trials_in_flight = 0
        self._trial_successes = 0
        transitions.append((old, new))
        if publish and self._shared is not None:
            self._shared.transitioned(self, old, new)

    def _open(self, now: float, transitions: list[tuple[BreakerState, BreakerState]]) -> None:
        self._open_until = now + self._recovery_timeout
        self._transition(_OPEN, transitions)

    def _advance(
        self, now: float, transitions: list[tuple[BreakerState, BreakerState]]
    ) -> BreakerState:
        """Apply the timers that are due at ``now`` and return the state (under the lock).

        Each timer takes effect at the moment it fell due, as a background timer would have made
        it: a HALF_OPEN period that expired at ``t`` re-opens the breaker until
        ``t + recovery_timeout``, which may itself be past already.
        """
        state = self._state
        if state is _HALF_OPEN and now >= self._half_open_until:
            self._open(self._half_open_until, transitions)
            state = _OPEN
        if state is _OPEN and now >= self._open_until:
            self._transition(_HALF_OPEN, transitions)
            self._half_open_until = now + self._max_wait
            state = _HALF_OPEN
        return state

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
                raise CircuitOpenError(self._name, wait, self._last_failure)
        elif state is _FORCED_OPEN:
            self._rejected.increment()
            raise CircuitOpenError(self._name, math.inf, self._last_failure)
        return self._acquire_locked()

    def _acquire_locked(self) -> int:
        transitions: list[tuple[BreakerState, BreakerState]] = []
        wait = 0.0
        with self._lock:
            now = self._monotonic()
            state = self._advance(now, transitions)
            if state is _OPEN:
                wait = self._open_until - now
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
            failure = self._last_failure
        self._notify(transitions)
        if permit >= 0 and self._shared is not None:
            permit = self._claim(permit)
        if permit == _SATURATED:
            self._saturated.increment()
            raise CircuitOpenError(self._name, 0.0, failure)
        if permit == _REJECT:
            self._rejected.increment()
            raise CircuitOpenError(self._name, wait, failure)
        return permit

    def _claim(self, permit: int) -> int:
        """A local trial permit, claimed from the shared state too: the permit, or SATURATED."""
        shared = self._shared
        if shared is None or shared.claim_trial(self):
            return permit
        # The cluster's trials are taken, or the shared state moved on (adopted by now).
        self._release(permit)
        if self._state is not _HALF_OPEN:
            return self._acquire()
        return _SATURATED

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

    def _classify(self, exc: BaseException) -> int:
        """The outcome an exception stands for; a raising predicate propagates."""
        check = self._ignore_check
        if isinstance(exc, self._ignore_types) and (check is None or check(exc)):
            return _IGNORED
        check = self._record_check
        if isinstance(exc, self._record_types) and (check is None or check(exc)):
            return _FAILURE
        return _SUCCESS if isinstance(exc, Exception) else _IGNORED

    def _judge(self, result: object) -> int:
        """The outcome a returned value stands for; a raising predicate propagates."""
        ignore = self._ignore_result
        if ignore is not None and ignore(result):
            return _IGNORED
        record = self._record_result
        if record is not None and record(result):
            return _FAILURE
        return _SUCCESS

    def _on_error(self, permit: int, exc: BaseException, start: float) -> None:
        try:
            outcome = self._classify(exc)
        except BaseException:
            self._record(permit, _IGNORED, slow=False, now=0.0)
            raise
        now = self._monotonic() if self._timed else 0.0
        self._settle(permit, outcome, start, now, exc)

    def _on_result(self, permit: int, result: object, start: float) -> None:
        try:
            outcome = self._judge(result)
        except BaseException:
            self._record(permit, _IGNORED, slow=False, now=0.0)
            raise
        if outcome == _SUCCESS:
            self._on_success(permit, start)
        else:
            self._settle(permit, outcome, start, self._monotonic() if self._timed else 0.0, None)

    def _settle(
        self, permit: int, outcome: int, start: float, now: float, failure: BaseException | None
    ) -> None:
        slow = (
            self._slow_call_duration_threshold is not None
            and now - start >= self._slow_call_duration_threshold
        )
        self._record(permit, outcome, slow=slow, now=now, failure=failure)

    def _record(
        self,
        permit: int,
        outcome: int,
        *,
        slow: bool,
        now: float,
        failure: BaseException | None = None,
    ) -> None:
        transitions: list[tuple[BreakerState, BreakerState]] = []
        with self._lock:
            if outcome == _SUCCESS:
                self._successes.increment()
            elif outcome == _FAILURE:
                self._failed_calls += 1
                self._last_failure = failure
            else:
                self._ignored_calls += 1
            state = self._state
            if permit == _RECORD:
                if outcome != _IGNORED and (state is _CLOSED or state is _FORCED_CLOSED):
                    self._record_closed(state, outcome, slow=slow, now=now, transitions=transitions)
            elif state is _HALF_OPEN and permit == self._epoch:
                self._record_trial(outcome, slow=slow, now=now, transitions=transitions)
        if transitions:
            self._notify(transitions)

    def _record_trial(
        self,
        outcome: int,
        *,
        slow: bool,
        now: float,
        transitions: list[tuple[BreakerState, BreakerState]],
    ) -> None:
        now = now if self._timed else self._monotonic()
        if now >= self._half_open_until:
            # Undecided for max_wait_in_half_open: the breaker re-opened then, without this trial.
            self._advance(now, transitions)
            return
        self._trials_in_flight -= 1
        if outcome == _IGNORED:
            # Neither success nor failure, however long it took: only the place is freed.
            if self._shared is not None:
                self._shared.trial_settled(self, success=False)
            return
        if outcome == _FAILURE or (slow and self._slow_call_rate_threshold is not None):
            self._open(now, transitions)
            return
        self._trial_successes += 1
        if self._trial_successes >= self._half_open_max_calls:
            self._clear_window()
            self._last_failure = None
            self._transition(_CLOSED, transitions)
        elif self._shared is not None:
            self._shared.trial_settled(self, success=True)

    def _release(self, permit: int) -> None:
        """Give back a trial's place without recording an outcome."""
        if permit >= 0:
            with self._lock:
                if self._state is _HALF_OPEN and permit == self._epoch:
                    self._trials_in_flight -= 1

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

    def _call(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refuse_generators: bool = False,
    ) -> R:
        events = self._events
        if events is not None:
            return self._call_observed(events, fn, args, kwargs, refuse_generators)
        permit = self._acquire()
        if permit == _PASS:
            result = fn(*args, **kwargs)
            if refuse_generators and type(result) in GENERATOR_TYPES:
                self._refuse(permit, fn, result)
            return result
        start = self._monotonic() if self._timed else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(permit, exc, start)
            raise
        if refuse_generators and type(result) in GENERATOR_TYPES:
            self._refuse(permit, fn, result)
        if self._judges_results:
            self._on_result(permit, result, start)
        else:
            self._on_success(permit, start)
        return result

    async def _acall(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refuse_generators: bool = False,
    ) -> R:
        events = self._events
        if events is not None:
            return await self._acall_observed(events, fn, args, kwargs, refuse_generators)
        permit = self._acquire()
        if permit == _PASS:
            awaitable = fn(*args, **kwargs)
            if refuse_generators and type(awaitable) in GENERATOR_TYPES:
                self._refuse(permit, fn, awaitable)
            result = await awaitable
            if refuse_generators and type(result) in GENERATOR_TYPES:
                self._refuse(permit, fn, result)
            return result
        start = self._monotonic() if self._timed else 0.0
        try:
            awaitable = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(permit, exc, start)
            raise
        if refuse_generators and type(awaitable) in GENERATOR_TYPES:
            self._refuse(permit, fn, awaitable)  # an async generator cannot even be awaited
        try:
            result = await awaitable
        except BaseException as exc:
            self._on_error(permit, exc, start)
            raise
        if refuse_generators and type(result) in GENERATOR_TYPES:
            self._refuse(permit, fn, result)
        if self._judges_results:
            self._on_result(permit, result, start)
        else:
            self._on_success(permit, start)
        return result

    # With call listeners: the same steps, each one published. Every clock read here is needed
    # for the durations the listeners are given.

    def _call_observed(
        self,
        events: _CallEvents,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refuse_generators: bool,
    ) -> R:
        permit = self._acquire_observed(events)
        start = self._monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if permit != _PASS:
                self._observe_error(events, permit, exc, start)
            raise
        if refuse_generators and type(result) in GENERATOR_TYPES:
            self._refuse(permit, fn, result)
        if permit != _PASS:
            self._observe_result(events, permit, result, start)
        return result

    async def _acall_observed(
        self,
        events: _CallEvents,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refuse_generators: bool,
    ) -> R:
        permit = self._acquire_observed(events)
        start = self._monotonic()
        try:
            awaitable = fn(*args, **kwargs)
        except BaseException as exc:
            if permit != _PASS:
                self._observe_error(events, permit, exc, start)
            raise
        if refuse_generators and type(awaitable) in GENERATOR_TYPES:
            self._refuse(permit, fn, awaitable)
        try:
            result = await awaitable
        except BaseException as exc:
            if permit != _PASS:
                self._observe_error(events, permit, exc, start)
            raise
        if refuse_generators and type(result) in GENERATOR_TYPES:
            self._refuse(permit, fn, result)
        if permit != _PASS:
            self._observe_result(events, permit, result, start)
        return result

    def _acquire_observed(self, events: _CallEvents) -> int:
        try:
            permit = self._acquire()
        except CircuitOpenError as error:
            self._emit(events.on_rejected, error)
            raise
        if permit != _PASS:
            self._emit(events.before_call)
        return permit

    def _observe_error(
        self, events: _CallEvents, permit: int, exc: BaseException, start: float
    ) -> None:
        try:
            outcome = self._classify(exc)
        except BaseException:
            self._record(permit, _IGNORED, slow=False, now=0.0)
            raise
        now = self._monotonic()
        self._settle(permit, outcome, start, now, exc)
        if outcome == _FAILURE:
            self._emit(events.on_failure, exc, now - start, None)
        elif outcome == _SUCCESS:
            self._emit(events.on_success, now - start)
        else:
            self._emit(events.on_ignored, exc, now - start)

    def _observe_result(
        self, events: _CallEvents, permit: int, result: object, start: float
    ) -> None:
        outcome = _SUCCESS
        if self._judges_results:
            try:
                outcome = self._judge(result)
            except BaseException:
                self._record(permit, _IGNORED, slow=False, now=0.0)
                raise
        now = self._monotonic()
        self._settle(permit, outcome, start, now, None)
        if outcome == _SUCCESS:
            self._emit(events.on_success, now - start)
        elif outcome == _FAILURE:
            self._emit(events.on_failure, None, now - start, result)
        else:
            self._emit(events.on_ignored, None, now - start)

    def _refuse(self, permit: int, fn: Callable[..., object], result: object) -> NoReturn:
        """A generator came back from ``call``/``acall``: record nothing and say why."""
        self._release(permit)
        if isinstance(result, types.GeneratorType):
            result.close()  # never started: closing it runs no code of the caller's
        raise generator_result_error(fn, result, f"circuit breaker {self._name!r}")

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the breaker.

        Raises :class:`CircuitOpenError` when the breaker refuses the call, and ``TypeError``
        (recording nothing) when ``fn`` returns a generator: its outcome would happen while it is
        iterated, after the breaker has let go.
        """
        return self._call(fn, args, kwargs, True)  # noqa: FBT003

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker.

        Raises :class:`CircuitOpenError` when the breaker refuses the call, and ``TypeError``
        (recording nothing) when ``fn`` returns an async generator, or resolves to a generator.
        """
        return await self._acall(fn, args, kwargs, True)  # noqa: FBT003

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` guarded by this breaker: a wrapper that calls ``fn`` directly.

        Raises ``TypeError`` at once when ``fn`` is a generator function, sync or async.
        """
        refuse_generator(fn, f"circuit breaker {self._name!r}")
        refuse_coroutine_function(fn, f"circuit breaker {self._name!r}")
        if hides_generator(fn):
            call = self.call

            def checked(*args: P.args, **kwargs: P.kwargs) -> R:
                return call(fn, *args, **kwargs)

            return functools.wraps(fn)(checked)
        # The driver is chosen once, here, so the per-call path carries no configuration checks.
        driver = _sync_fast if self._fast else _sync_general
        return functools.wraps(fn)(driver(self, fn))

    def awrap(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[object, None, R]]:
        """``fn`` guarded by this breaker: an async wrapper that awaits ``fn`` directly.

        Raises ``TypeError`` at once when ``fn`` is a generator function, sync or async.
        """
        refuse_generator(fn, f"circuit breaker {self._name!r}")
        if hides_generator(fn):
            acall = self.acall

            async def achecked(*args: P.args, **kwargs: P.kwargs) -> R:
                return await acall(fn, *args, **kwargs)

            return functools.wraps(fn)(achecked)
        driver = _async_fast if self._fast else _async_general
        return functools.wraps(fn)(driver(self, fn))

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[object, None, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or an async function (``@breaker``); generator functions are refused."""
        if inspect.iscoroutinefunction(fn):
            return self.awrap(fn)
        return self.wrap(fn)


# ---------------------------------------------------------------------------------- validation


def _count(key: str, value: object) -> int:
    return _validate.integer(key, value, minimum=1, type_error=True)


def _seconds(key: str, value: object, *, allow_zero: bool = False) -> float:
    return _validate.seconds(key, value, allow_zero=allow_zero, type_error=True)


def _percent(key: str, value: object) -> float | None:
    """A percentage, 0 < x <= 100, or None (the rule switched off)."""
    if value is None:
        return None
    return _validate.number(
        key, value, minimum=0, exclusive_minimum=True, maximum=100, type_error=True
    )


def _max_wait(value: object) -> float:
    """``max_wait_in_half_open`` in seconds; ``math.inf`` for None or 0 (wait for ever)."""
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"max_wait_in_half_open={value!r}: expected a number of seconds or None")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0.0:
        raise ConfigurationError(
            "max_wait_in_half_open", value, "must be positive, or 0 or None to wait for ever"
        )
    return math.inf if seconds == 0.0 else seconds


def _result_predicate(key: str, value: ResultPredicate | None) -> ResultPredicate | None:
    if value is not None and not callable(value):
        raise TypeError(f"{key}={value!r}: expected a predicate on the returned value, or None")
    return value


def _matcher(
    key: str, value: object, *, allow_empty: bool
) -> tuple[tuple[type[BaseException], ...], Callable[[BaseException], bool] | None]:
    """``record_on``/``ignore_on`` as the classes to test and an optional predicate after them."""
    if isinstance(value, type):
        if not issubclass(value, BaseException):
            raise TypeError(f"{key}={value!r}: not an exception class")
        return (value,), None
    if isinstance(value, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
            raise TypeError(f"{key}={value!r}: expected a tuple of exception classes")
        if not value and not allow_empty:
            raise ConfigurationError(key, value, "must name at least one exception class")
        return value, None
    if callable(value):
        # Like RetryPolicy.retry_on: a predicate is asked about Exceptions only, so that a
        # cancellation is never counted against a dependency by a broad predicate.
        return (Exception,), value
    raise TypeError(
        f"{key}={value!r}: expected an exception class, a tuple of them, or a predicate"
    )
