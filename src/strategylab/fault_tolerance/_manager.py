"""The :class:`ErrorRecoveryManager`: classify, pick a strategy, recover, escalate, record.

One ``handle`` call is one error:

1. the error becomes an :class:`ErrorContext` (an exception is classified; a context is kept as is);
2. pattern analysis counts errors per (type, component) in a sliding window on the manager's clock.
   Every ``policy.escalation_threshold`` errors within ``policy.escalation_window`` seconds is a
   *crossing*: it moves the starting strategy one step along the chain (clamped at the last one) and
   raises the severity one step. A whole window without an error of that (type, component) resets
   the level to 0. This is *escalation* in the sense of DESIGN §4, and only this: an error handled
   while its (type, component) is at level >= 1 (the crossing error and every later one until the
   reset) reports ``escalated=True`` with its ``escalation_level``, because its severity and its
   starting strategy are the escalated ones; the crossing error also reports
   ``crossed_threshold=True``, emits an ``escalated`` event and writes an ``escalation`` audit
   record;
3. if a recovery of the same (type, component) is already queued or running, the error *joins* it:
   it waits for that recovery's result and returns a copy marked ``joined=True`` with its own
   ``error_id``. A second restart of a component that is being restarted would only fight the first;
4. otherwise the recovery takes a slot in the manager's :class:`Bulkhead` (named ``recovery``: at
   most ``max_concurrent_recoveries`` run at once, at most ``max_queued_recoveries`` more wait, in
   FIFO order; beyond that the bulkhead refuses and ``handle`` returns at once with
   ``rejected=True``, counted in :meth:`ErrorRecoveryManager.statistics` and audited);
5. strategies run from the starting one: the first that succeeds ends the recovery; one that fails,
   raises or is not applicable *falls through* to the next (``fell_through=True``, every step in
   ``strategies_tried``, a ``fell_through`` event and a ``fall_through`` audit record). A
   fall-through is not an escalation: it says nothing about the error pattern. When the chain is
   exhausted and the severity is CRITICAL, the emergency shutdown runs (unless it just ran): it
   stops the registered components in the :class:`ComponentRegistry`'s stop order, every dependant
   before what it depends on;
6. the outcome is recorded in statistics, sent to listeners, and appended to the audit log.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from strategylab import _validate
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import BulkheadFullError, ConfigurationError

from ._bulkhead import Bulkhead
from ._classify import classify
from ._component import AuditSink, Component, RetryRunner, TrippableBreaker
from ._components import ComponentRegistry
from ._context import ErrorContext, SystemState
from ._policy import RecoveryPolicy, merge_policies
from ._retry import RetryPolicy
from ._statistics import RecoveryStatistics, StatisticsRecorder
from ._strategies import STRATEGIES, ShutdownHandler, StrategyRequest, StrategyResult
from ._taxonomy import ErrorSeverity, ErrorType, RecoveryStrategyKind

if TYPE_CHECKING:
    import uuid

__all__ = [
    "ActiveRecovery",
    "ErrorRecoveryManager",
    "RecoveryEvent",
    "RecoveryListener",
    "RecoveryOutcome",
]

_log = logging.getLogger(__name__)

_Key = tuple[ErrorType, str]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryOutcome:
    """The result of handling one error.

    ``strategy`` is the last strategy tried (None when the recovery was rejected);
    ``strategies_tried`` lists every strategy considered, not-applicable ones included, in order;
    ``attempts`` counts the strategies actually executed. ``within_sla`` is True only for a
    successful recovery that finished within its policy's SLA. ``error`` collects what went wrong
    along the way (a failed, raising or not-applicable strategy; the rejection), else None.

    ``escalated`` is escalation as DESIGN §4 defines it: pattern analysis had this error's
    (type, component) at ``escalation_level`` >= 1 when the error arrived, so its severity was
    raised and its recovery started that many steps along the chain. It is True for the error that
    crossed the threshold (``crossed_threshold``) *and* for every later one handled at the raised
    level, until a quiet window resets it; the level, not the crossing alone, is what changed how
    the error was handled. Joined and rejected outcomes report their own error's level.
    ``fell_through`` says that a strategy failed and the recovery moved on to the next one in the
    chain (visible step by step in ``strategies_tried``); it is not an escalation.
    """

    error_id: uuid.UUID
    error_type: ErrorType
    component: str
    success: bool
    strategy: RecoveryStrategyKind | None
    strategies_tried: tuple[RecoveryStrategyKind, ...] = ()
    attempts: int = 0
    duration_ms: float = 0.0
    escalated: bool = False
    escalation_level: int = 0
    """Pattern-analysis steps along the chain for this error; 0 when not escalated."""
    crossed_threshold: bool = False
    """True for the one error whose arrival crossed ``escalation_threshold``."""
    fell_through: bool = False
    severity: ErrorSeverity
    rejected: bool = False
    joined: bool = False
    within_sla: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"attempts={self.attempts!r}: must be >= 0")
        if self.escalation_level < 0:
            raise ValueError(f"escalation_level={self.escalation_level!r}: must be >= 0")
        if self.escalated != (self.escalation_level > 0):
            raise ValueError(
                f"escalated={self.escalated!r}: must be True exactly when escalation_level "
                f"({self.escalation_level!r}) is >= 1"
            )
        if self.crossed_threshold and not self.escalated:
            raise ValueError("crossed_threshold=True: a crossing error is always escalated")
        if not math.isfinite(self.duration_ms) or self.duration_ms < 0:
            raise ValueError(f"duration_ms={self.duration_ms!r}: must be a finite number >= 0")
        object.__setattr__(self, "strategies_tried", tuple(self.strategies_tried))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "error_id": str(self.error_id),
            "error_type": self.error_type.value,
            "component": self.component,
            "success": self.success,
            "strategy": None if self.strategy is None else self.strategy.value,
            "strategies_tried": [k.value for k in self.strategies_tried],
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "escalated": self.escalated,
            "escalation_level": self.escalation_level,
            "crossed_threshold": self.crossed_threshold,
            "fell_through": self.fell_through,
            "severity": self.severity.value,
            "rejected": self.rejected,
            "joined": self.joined,
            "within_sla": self.within_sla,
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ActiveRecovery:
    """A snapshot of one running recovery: which strategy it is on and since when."""

    error_id: uuid.UUID
    error_type: ErrorType
    component: str
    strategy: RecoveryStrategyKind | None
    """The strategy being executed; None between taking the slot and starting the first one."""
    started_at: float
    """When the recovery took its slot, on the manager's monotonic clock."""
    attempt: int
    """1 for the first strategy executed, 2 for the next, ..."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryEvent:
    """Sent to listeners. ``kind`` is one of ``error``, ``escalated`` (pattern analysis crossed the
    threshold: DESIGN §4's escalation; ``strategy`` is the new starting strategy),
    ``recovery_started``, ``strategy_failed``, ``fell_through`` (moving on to ``strategy``, the next
    in the chain, after a failure), ``recovery_finished``, ``rejected``."""

    kind: str
    error_id: uuid.UUID
    error_type: ErrorType
    component: str
    at: float
    """The manager's monotonic clock when the event happened."""
    strategy: RecoveryStrategyKind | None = None
    detail: str = ""
    outcome: RecoveryOutcome | None = None
    """Set on ``recovery_finished`` and ``rejected``."""


RecoveryListener = Callable[[RecoveryEvent], object]


class _Active:
    """The mutable twin of :class:`ActiveRecovery`, updated in place as strategies run."""

    __slots__ = ("attempt", "context", "started_at", "strategy")

    def __init__(self, context: ErrorContext, started_at: float) -> None:
        self.context = context
        self.started_at = started_at
        self.strategy: RecoveryStrategyKind | None = None
        self.attempt = 0


class _Window:
    __slots__ = ("last", "level", "times")

    def __init__(self) -> None:
        self.times: collections.deque[float] = collections.deque()
        self.level = 0
        self.last: float | None = None


class _PatternAnalyser:
    """Errors per (type, component) in a sliding window; O(1) amortised per error."""

    __slots__ = ("_windows",)

    def __init__(self) -> None:
        self._windows: dict[_Key, _Window] = {}

    def record(self, key: _Key, now: float, policy: RecoveryPolicy) -> tuple[int, bool]:
        """Record one error; the escalation level after it, and whether this error crossed."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        span = policy.escalation_window
        if window.last is not None and now - window.last > span:
            window.level = 0
            window.times.clear()
        window.last = now
        times = window.times
        while times and now - times[0] > span:
            times.popleft()
        times.append(now)
        if len(times) >= policy.escalation_threshold:
            # Start counting afresh so that each further threshold's worth is one more step.
            times.clear()
            window.level += 1
            return window.level, True
        return window.level, False


def _unrecovered(
    context: ErrorContext,
    severity: ErrorSeverity,
    level: int,
    crossed: bool,
    *,
    error: str,
    duration_ms: float = 0.0,
    joined: bool = False,
    rejected: bool = False,
) -> RecoveryOutcome:
    """The outcome of an error that ran no strategy: its recovery was refused or cancelled."""
    return RecoveryOutcome(
        error_id=context.error_id,
        error_type=context.error_type,
        component=context.component,
        success=False,
        strategy=None,
        duration_ms=duration_ms,
        escalated=level > 0,
        escalation_level=level,
        crossed_threshold=crossed,
        severity=severity,
        joined=joined,
        rejected=rejected,
        error=error,
    )


class ErrorRecoveryManager:
    """Recovers components from errors by escalating through the policy's strategies.

    ``policies`` overrides rows of :data:`DEFAULT_POLICIES`. ``retry_policy`` is what the RETRY
    strategy runs under when a policy has none (default: 3 attempts, 0.1 s base, doubling, 2 s cap,
    full jitter, on ``clock``). ``max_concurrent_recoveries`` (>= 1) and ``max_queued_recoveries``
    (>= 0) size the :attr:`bulkhead` that recoveries run in. ``shutdown_handler`` replaces the
    default emergency shutdown (stop every registered component in the :attr:`registry`'s stop
    order, dependants first, each within ``shutdown_deadline`` seconds). ``audit`` receives one
    ``error`` record when an error arrives (its context), one ``recovery`` record per handled
    error when its recovery ends (a rejected one included), one ``escalation`` record per
    threshold crossing (DESIGN §4) and one ``fall_through`` record per step to a later strategy
    within a recovery. ``capture_state=False`` skips the :class:`SystemState` snapshot
    taken for each exception.

    One manager belongs to one event loop; its methods are not thread-safe.
    """

    def __init__(
        self,
        policies: Mapping[ErrorType, RecoveryPolicy] | None = None,
        clock: Clock | None = None,
        max_concurrent_recoveries: int = 4,
        *,
        max_queued_recoveries: int = 64,
        audit: AuditSink | None = None,
        retry_policy: RetryRunner | None = None,
        shutdown_handler: ShutdownHandler | None = None,
        percentile_window: int = 10_000,
        shutdown_deadline: float = 5.0,
        capture_state: bool = True,
    ) -> None:
        self._policies = merge_policies(policies)
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError("clock", clock, "must implement strategylab.clock.Clock")
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        max_running = _validate.integer(
            "max_concurrent_recoveries", max_concurrent_recoveries, minimum=1
        )
        max_queued = _validate.integer("max_queued_recoveries", max_queued_recoveries, minimum=0)
        _validate.integer("percentile_window", percentile_window, minimum=1)
        if audit is not None and not callable(getattr(audit, "aappend", None)):
            raise ConfigurationError("audit", audit, "must have an async aappend(kind, data)")
        if retry_policy is not None and not callable(getattr(retry_policy, "acall", None)):
            raise ConfigurationError("retry_policy", retry_policy, "must have an async acall(fn)")
        if shutdown_handler is not None and not callable(shutdown_handler):
            raise ConfigurationError("shutdown_handler", shutdown_handler, "must be callable")
        deadline = _validate.seconds("shutdown_deadline", shutdown_deadline)
        self._audit = audit
        self._retry: RetryRunner = (
            retry_policy
            if retry_policy is not None
            else RetryPolicy(
                max_attempts=3,
                base_delay=0.1,
                multiplier=2.0,
                max_delay=2.0,
                clock=self._clock,
                name="recovery",
            )
        )
        self._shutdown_handler = shutdown_handler
        self._shutdown_deadline = deadline
        self._capture_state = capture_state
        self._bulkhead = Bulkhead(max_running, max_queued, name="recovery")
        self._stats = StatisticsRecorder(percentile_window)
        self._patterns = _PatternAnalyser()
        self._registry: ComponentRegistry[Component] = ComponentRegistry()
        self._breakers: dict[str, TrippableBreaker] = {}
        self._inflight: dict[_Key, asyncio.Future[RecoveryOutcome]] = {}
        self._active: dict[uuid.UUID, _Active] = {}
        self._listeners: list[RecoveryListener] = []

    # ------------------------------------------------------------------ configuration

    @property
    def policies(self) -> Mapping[ErrorType, RecoveryPolicy]:
        """The effective, read-only policy table (defaults merged with overrides)."""
        return self._policies

    @property
    def bulkhead(self) -> Bulkhead:
        """The bulkhead recoveries run in (``name='recovery'``): its limits and statistics."""
        return self._bulkhead

    @property
    def registry(self) -> ComponentRegistry[Component]:
        """The registered components and their dependency order (read it; register through
        :meth:`register` so that breakers and the dependencies-first rule are kept)."""
        return self._registry

    def register(
        self,
        component: Component,
        *,
        breaker: TrippableBreaker | None = None,
        depends_on: Sequence[str] = (),
    ) -> None:
        """Make ``component`` recoverable; ``breaker`` guards its dependency (CIRCUIT_BREAKER).

        ``depends_on`` names components this one needs; they must be registered first (the
        emergency shutdown then never meets an unknown name or a cycle). Raises
        :class:`~strategylab.errors.ConfigurationError` for a non-component, an empty or duplicate
        name, a bad breaker, or a dependency that is not registered.
        """
        if not isinstance(component, Component):
            raise ConfigurationError(
                "component", component, "must have name, start(), stop() and health()"
            )
        name = component.name
        if not isinstance(name, str) or not name:
            raise ConfigurationError("component.name", name, "must be a non-empty str")
        if name in self._registry:
            raise ConfigurationError("component.name", name, "is already registered")
        if breaker is not None and not callable(getattr(breaker, "trip", None)):
            raise ConfigurationError("breaker", breaker, "must have trip() and state")
        if isinstance(depends_on, str):
            raise ConfigurationError("depends_on", depends_on, "must be a sequence of names")
        for dependency in depends_on:
            if dependency not in self._registry:
                raise ConfigurationError(
                    "depends_on", dependency, "is not registered; register dependencies first"
                )
        self._registry.register(name, component, depends_on=depends_on)
        if breaker is not None:
            self._breakers[name] = breaker

    def unregister(self, name: str) -> None:
        """Forget the component called ``name``; ``KeyError`` if it is not registered,
        :class:`~strategylab.errors.ConfigurationError` while another one depends on it."""
        self._registry.unregister(name)
        self._breakers.pop(name, None)

    def components(self) -> tuple[Component, ...]:
        """The registered components, in registration order."""
        return self._registry.components()

    def add_listener(self, listener: RecoveryListener) -> None:
        """Call ``listener(event)`` for every :class:`RecoveryEvent`; exceptions are logged."""
        if not callable(listener):
            raise ConfigurationError("listener", listener, "must be callable")
        self._listeners.append(listener)

    def remove_listener(self, listener: RecoveryListener) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was never added."""
        self._listeners.remove(listener)

    # ------------------------------------------------------------------ views

    def statistics(self) -> RecoveryStatistics:
        """A frozen snapshot of the counters, timings and SLA compliance."""
        slots = self._bulkhead.statistics()
        return self._stats.snapshot(running=slots.running, queued=slots.waiting)

    def active_recoveries(self) -> tuple[ActiveRecovery, ...]:
        """The recoveries holding a slot right now, oldest first."""
        return tuple(
            ActiveRecovery(
                error_id=a.context.error_id,
                error_type=a.context.error_type,
                component=a.context.component,
                strategy=a.strategy,
                started_at=a.started_at,
                attempt=a.attempt,
            )
            for a in self._active.values()
        )

    # ------------------------------------------------------------------ handling

    async def handle(
        self,
        exc_or_context: BaseException | ErrorContext,
        component: str | None = None,
        operation: Callable[[], Awaitable[object]] | None = None,
    ) -> RecoveryOutcome:
        """Recover from one error (see the module docstring); never raises for a failed recovery.

        ``component`` names the failed component; with an :class:`ErrorContext` it defaults to the
        context's. ``operation`` is the failed call, re-run by the RETRY strategy.
        """
        started = self._clock.monotonic()
        context = self._context_for(exc_or_context, component)
        policy = self._policies[context.error_type]
        key: _Key = (context.error_type, context.component)
        self._stats.record_error(context.error_type, context.component)
        self._emit("error", context, detail=context.message)
        # On arrival, not only when the recovery ends: a fault whose recovery waits for ever (an
        # exchange that refuses every connection) is in the audit trail from its first moment.
        await self._audit_append("error", {"context": context.to_dict()})

        level, crossed = self._patterns.record(key, started, policy)
        severity = context.severity.raised(level) if level else context.severity
        if level:
            self._stats.record_escalated_error()
        if crossed:
            self._stats.record_escalation(pattern=True)
            start_kind = policy.chain[min(level, len(policy.chain) - 1)]
            detail = (
                f"{policy.escalation_threshold} errors within {policy.escalation_window}s: "
                f"level {level}, start at {start_kind.value}, severity {severity.value}"
            )
            self._emit("escalated", context, strategy=start_kind, detail=detail)
            await self._audit_append(
                "escalation",
                {
                    "error_id": str(context.error_id),
                    "error_type": context.error_type.value,
                    "component": context.component,
                    "reason": "pattern",
                    "level": level,
                    "to": start_kind.value,
                    "severity": severity.value,
                },
            )

        running = self._inflight.get(key)
        if running is not None:
            return await self._join(
                running, context, severity, started, level=level, crossed=crossed
            )

        future: asyncio.Future[RecoveryOutcome] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            outcome = await self._bulkhead.acall(
                self._recover,
                context,
                policy,
                level=level,
                crossed=crossed,
                severity=severity,
                started=started,
                operation=operation,
            )
            future.set_result(outcome)
        except BulkheadFullError:
            # The bulkhead refuses before suspending, so nobody has joined this future yet.
            refused = True
        else:
            refused = False
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            if not future.done():
                # Refused, cancelled or failed: joiners are told through a cancelled future.
                future.cancel()
        if refused:
            return await self._reject(context, severity, level, crossed)
        self._emit("recovery_finished", context, strategy=outcome.strategy, outcome=outcome)
        await self._audit_append("recovery", {**outcome.to_dict(), "context": context.to_dict()})
        return outcome

    def _context_for(
        self, exc_or_context: BaseException | ErrorContext, component: str | None
    ) -> ErrorContext:
        if isinstance(exc_or_context, ErrorContext):
            if component is not None and component != exc_or_context.component:
                raise ValueError(
                    f"component={component!r}: the context is for {exc_or_context.component!r}"
                )
            return exc_or_context
        if not isinstance(exc_or_context, BaseException):
            raise TypeError(
                f"exc_or_context={exc_or_context!r}: expected an exception or an ErrorContext"
            )
        if not isinstance(component, str) or not component:
            raise ValueError(f"component={component!r}: name the component that failed")
        kind = classify(exc_or_context, component=component)
        state = (
            SystemState.capture(active_recoveries=len(self._active))
            if self._capture_state
            else None
        )
        return ErrorContext.from_exception(
            exc_or_context,
            component=component,
            error_type=kind,
            severity=self._policies[kind].severity,
            system_state=state,
            capture_state=False,
            clock=self._clock,
        )

    async def _join(
        self,
        running: asyncio.Future[RecoveryOutcome],
        context: ErrorContext,
        severity: ErrorSeverity,
        started: float,
        *,
        level: int,
        crossed: bool,
    ) -> RecoveryOutcome:
        # The joiner shares the recovery but keeps its own pattern state: it may be the error
        # that crossed the threshold while the recovery it joined started unescalated.
        self._stats.record_joined()
        try:
            primary = await asyncio.shield(running)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not running.cancelled() or (task is not None and task.cancelling()):
                raise
            # The recovery we joined was cancelled, not us: report a failure, do not propagate.
            outcome = _unrecovered(
                context,
                severity,
                level,
                crossed,
                duration_ms=self._elapsed_ms(started),
                joined=True,
                error="the recovery this error joined was cancelled",
            )
        else:
            outcome = dataclasses.replace(
                primary,
                error_id=context.error_id,
                joined=True,
                escalated=level > 0,
                escalation_level=level,
                crossed_threshold=crossed,
                severity=max(severity, primary.severity),
                duration_ms=self._elapsed_ms(started),
            )
        await self._audit_append("recovery", {**outcome.to_dict(), "context": context.to_dict()})
        return outcome

    async def _reject(
        self, context: ErrorContext, severity: ErrorSeverity, level: int, crossed: bool
    ) -> RecoveryOutcome:
        self._stats.record_rejected()
        slots = self._bulkhead.statistics()
        outcome = _unrecovered(
            context,
            severity,
            level,
            crossed,
            rejected=True,
            error=(
                f"recovery rejected: {slots.running} running, {slots.waiting} queued "
                f"(limits {self._bulkhead.max_concurrent} and {self._bulkhead.max_waiting})"
            ),
        )
        self._emit("rejected", context, detail=outcome.error or "", outcome=outcome)
        await self._audit_append("recovery", {**outcome.to_dict(), "context": context.to_dict()})
        return outcome

    async def _recover(
        self,
        context: ErrorContext,
        policy: RecoveryPolicy,
        *,
        level: int,
        crossed: bool,
        severity: ErrorSeverity,
        started: float,
        operation: Callable[[], Awaitable[object]] | None,
    ) -> RecoveryOutcome:
        """Run the strategy chain; called inside a bulkhead slot (see :meth:`handle`)."""
        active = _Active(context, self._clock.monotonic())
        self._active[context.error_id] = active
        try:
            self._emit("recovery_started", context)
            component = context.component
            base = StrategyRequest(
                kind=policy.chain[0],
                context=dataclasses.replace(context, severity=severity),
                component=self._registry.get(component) if component in self._registry else None,
                operation=operation,
                retry=policy.retry if policy.retry is not None else self._retry,
                breaker=self._breakers.get(component),
                level=level + 1,
                components=self._registry.start_components(),
                shutdown_handler=self._shutdown_handler,
                shutdown_deadline=self._shutdown_deadline,
            )
            plan = list(policy.chain[min(level, len(policy.chain) - 1) :])
            tried: list[RecoveryStrategyKind] = []
            problems: list[str] = []
            success = False
            while plan:
                kind = plan.pop(0)
                if tried:
                    await self._fall_through(context, tried[-1], kind)
                tried.append(kind)
                result = await self._attempt(dataclasses.replace(base, kind=kind), active)
                if result.success:
                    success = True
                    break
                problems.append(f"{kind.value}: {result.detail}")
                self._emit("strategy_failed", context, strategy=kind, detail=result.detail)
                if (
                    not plan
                    and severity is ErrorSeverity.CRITICAL
                    and RecoveryStrategyKind.EMERGENCY_SHUTDOWN not in tried
                ):
                    plan.append(RecoveryStrategyKind.EMERGENCY_SHUTDOWN)

            duration_ms = self._elapsed_ms(started)
            within = success and duration_ms <= policy.sla.seconds * 1000.0
            self._stats.record_completed(
                success=success, duration_ms=duration_ms, sla=policy.sla.name, within_sla=within
            )
            return RecoveryOutcome(
                error_id=context.error_id,
                error_type=context.error_type,
                component=context.component,
                success=success,
                strategy=tried[-1],
                strategies_tried=tuple(tried),
                attempts=active.attempt,
                duration_ms=duration_ms,
                escalated=level > 0,
                escalation_level=level,
                crossed_threshold=crossed,
                fell_through=len(tried) > 1,
                severity=severity,
                within_sla=within,
                error="; ".join(problems) if problems else None,
            )
        finally:
            del self._active[context.error_id]

    async def _attempt(self, request: StrategyRequest, active: _Active) -> StrategyResult:
        kind = request.kind
        active.strategy = kind
        # Counted up front so the live view shows the attempt in progress; a strategy that turns
        # out not to apply gives its number back.
        active.attempt += 1
        try:
            result = await STRATEGIES[kind](request)
        except Exception as exc:
            # A failing strategy is a failed step, not a failed manager; CancelledError passes.
            result = StrategyResult(
                kind=kind, success=False, detail=f"raised {type(exc).__name__}: {exc}"
            )
        if result.applicable:
            self._stats.record_strategy(kind, success=result.success)
        else:
            active.attempt -= 1
        return result

    async def _fall_through(
        self, context: ErrorContext, source: RecoveryStrategyKind, target: RecoveryStrategyKind
    ) -> None:
        self._stats.record_fall_through()
        self._emit(
            "fell_through", context, strategy=target, detail=f"{source.value} -> {target.value}"
        )
        await self._audit_append(
            "fall_through",
            {
                "error_id": str(context.error_id),
                "error_type": context.error_type.value,
                "component": context.component,
                "reason": "strategy_failed",
                "from": source.value,
                "to": target.value,
            },
        )

    # ------------------------------------------------------------------ plumbing

    def _elapsed_ms(self, started: float) -> float:
        return max(0.0, (self._clock.monotonic() - started) * 1000.0)

    def _emit(
        self,
        kind: str,
        context: ErrorContext,
        *,
        strategy: RecoveryStrategyKind | None = None,
        detail: str = "",
        outcome: RecoveryOutcome | None = None,
    ) -> None:
        if not self._listeners:
            return
        event = RecoveryEvent(
            kind=kind,
            error_id=context.error_id,
            error_type=context.error_type,
            component=context.component,
            at=self._clock.monotonic(),
            strategy=strategy,
            detail=detail,
            outcome=outcome,
        )
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("recovery listener %r failed on %s event", listener, kind)

    async def _audit_append(self, kind: str, data: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            await self._audit.aappend(kind, data)
        except Exception:
            # The audit trail must not turn a recovery into a failure (a full disk is one of the
            # errors being recovered from); the loss is logged loudly instead.
            _log.exception("could not append %s record to the audit log", kind)
