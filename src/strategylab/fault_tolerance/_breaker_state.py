"""The circuit breaker's vocabulary: its states, the codes its state machine records, its metrics
snapshot and its call listeners.

Shared by :mod:`._breaker` (the state machine), :mod:`._breaker_window` (the sliding windows) and
:mod:`._breaker_drivers` (the guarded callables), which import the codes as module constants so
that the drivers can bind them to closure locals once, at ``wrap`` time.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from strategylab.errors import CircuitOpenError

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = [
    "DEFAULT_MAX_WAIT_IN_HALF_OPEN",
    "BreakerCallListener",
    "BreakerMetrics",
    "BreakerState",
    "ExceptionMatcher",
    "Listener",
    "ResultPredicate",
    "SharedBreakerState",
    "SlidingWindowType",
]


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

ExceptionMatcher = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""``record_on``/``ignore_on``: an exception class, a tuple of them, or a predicate."""

ResultPredicate = Callable[[Any], bool]

_LISTENED: Final = object()
"""The value of ``_gate`` while call listeners are registered: no state is this object."""


DEFAULT_MAX_WAIT_IN_HALF_OPEN: Final = 60.0
"""Seconds a breaker stays HALF_OPEN without a decision before it re-opens."""


class BreakerCallListener:
    """Base class for call listeners (resilience4j's ``CircuitBreakerEvent`` consumers).

    Register one with :meth:`CircuitBreaker.add_call_listener`. Override only the events you want:
    the methods inherited from this class are skipped, not called. Any object works as a listener
    as long as it has at least one of these methods; subclassing is a convenience. Durations are
    seconds on the breaker's clock, from just before the protected call to just after it. A
    listener that raises is logged and ignored: it never breaks the call it observes. Calls made
    while the breaker is DISABLED publish no event.
    """

    __slots__ = ()

    def before_call(self, breaker: CircuitBreaker) -> None:
        """A call was permitted and is about to run."""

    def on_success(self, breaker: CircuitBreaker, duration: float) -> None:
        """A call counted as a success (it returned, or raised an exception not recorded)."""

    def on_failure(
        self, breaker: CircuitBreaker, exc: BaseException | None, duration: float, result: object
    ) -> None:
        """A call counted as a failure: ``exc`` raised (``result`` None), or ``exc`` is None
        and ``record_result`` rejected the returned ``result``."""

    def on_ignored(
        self, breaker: CircuitBreaker, exc: BaseException | None, duration: float
    ) -> None:
        """A call counted as neither: ``exc`` matched ``ignore_on`` or is a cancellation, or
        ``exc`` is None and ``ignore_result`` accepted the returned value."""

    def on_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        """A call was refused with ``error`` (which is raised after the listeners return)."""


class SharedBreakerState(Protocol):
    """What a breaker given ``shared=`` tells the state it shares with other processes.

    Implemented by :class:`strategylab.distributed.RedisBreakerBackend`. The breaker calls it only
    off its hot path: never on a CLOSED call or an OPEN rejection.
    """

    def register(self, breaker: CircuitBreaker) -> None:
        """The breaker was created; adopt the shared state (called once, from ``__init__``)."""

    def transitioned(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        """A local transition; called under the breaker's lock, so it must not block."""

    def claim_trial(self, breaker: CircuitBreaker) -> bool:
        """HALF_OPEN: may this process run a trial call? False: the cluster's trials are taken.

        Called outside the breaker's lock; may block for one round trip to the shared store.
        """

    def trial_settled(self, breaker: CircuitBreaker, *, success: bool) -> None:
        """A trial succeeded without closing the breaker, or was ignored (``success`` False);
        called under the breaker's lock, so it must not block."""


_EVENTS: Final = ("before_call", "on_success", "on_failure", "on_ignored", "on_rejected")


@dataclasses.dataclass(frozen=True, slots=True)
class _CallEvents:
    """The registered call listeners, with each event's callbacks bound once."""

    listeners: tuple[object, ...]
    before_call: tuple[Callable[..., object], ...]
    on_success: tuple[Callable[..., object], ...]
    on_failure: tuple[Callable[..., object], ...]
    on_ignored: tuple[Callable[..., object], ...]
    on_rejected: tuple[Callable[..., object], ...]

    @classmethod
    def of(cls, listeners: tuple[object, ...]) -> _CallEvents:
        bound: dict[str, list[Callable[..., object]]] = {event: [] for event in _EVENTS}
        for listener in listeners:
            for event, callbacks in bound.items():
                method = getattr(listener, event, None)
                if method is None or getattr(method, "__func__", None) is getattr(
                    BreakerCallListener, event
                ):
                    continue  # absent, or the base class's no-op
                callbacks.append(method)
        return cls(listeners, *(tuple(bound[event]) for event in _EVENTS))


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
    """Calls that ended in an ``ignore_on`` exception, in a non-``Exception`` (cancellation), or
    in an ``ignore_result`` value."""
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
