"""ErrorRecoveryManager: escalation, pattern analysis, concurrency, events, audit, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from typing import TYPE_CHECKING

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    AuditLog,
    BreakerState,
    Bulkhead,
    BulkheadStatistics,
    CircuitBreaker,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    RecoveryPolicy,
    RecoveryStrategyKind,
    RetryPolicy,
)
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from pathlib import Path

    from strategylab.fault_tolerance._manager import RecoveryEvent

K = RecoveryStrategyKind
E = ErrorType


class Fake:
    """A component whose health is its flag; ``fixes`` names the actions that really repair it."""

    def __init__(
        self,
        name: str,
        *,
        fixes: frozenset[str] = frozenset(),
        clock: FakeClock | None = None,
        cost: float = 0.0,
        gate: asyncio.Event | None = None,
        order: list[str] | None = None,
    ) -> None:
        self.name = name
        self.healthy = False
        self.fixes = fixes
        self.clock = clock
        self.cost = cost
        self.gate = gate
        self.order = order
        self.calls: list[str] = []

    async def _act(self, what: str) -> bool:
        self.calls.append(what)
        if self.gate is not None:
            await self.gate.wait()
        if self.clock is not None:
            self.clock.advance(self.cost)
        if what in self.fixes:
            self.healthy = True
        return True

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")
        self.healthy = False
        if self.order is not None:
            self.order.append(self.name)

    async def health(self) -> bool:
        return self.healthy

    async def restart(self) -> None:
        await self._act("restart")

    async def failover(self) -> bool:
        return await self._act("failover")

    async def degrade(self, level: int) -> bool:
        return await self._act("degrade")

    async def restore(self) -> bool:
        return await self._act("restore")

    async def scale(self, factor: float) -> bool:
        return await self._act("scale")

    async def reload(self) -> bool:
        return await self._act("reload")


def _ctx(
    component: str = "feed", error_type: ErrorType = E.STRATEGY_EXECUTION_ERROR
) -> ErrorContext:
    return ErrorContext(
        error_id=uuid.uuid4(),
        error_type=error_type,
        timestamp=dt.datetime.now(dt.UTC),
        severity=DEFAULT_POLICIES[error_type].severity,
        component=component,
        message="boom",
    )


def _manager(clock: FakeClock, **kwargs: object) -> ErrorRecoveryManager:
    kwargs.setdefault(
        "retry_policy", RetryPolicy(max_attempts=2, base_delay=0.01, jitter=None, clock=clock)
    )
    kwargs.setdefault("capture_state", False)
    return ErrorRecoveryManager(clock=clock, **kwargs)  # type: ignore[arg-type]


def _override(error_type: ErrorType, **changes: object) -> dict[ErrorType, RecoveryPolicy]:
    return {error_type: dataclasses.replace(DEFAULT_POLICIES[error_type], **changes)}  # type: ignore[arg-type]


async def _failing() -> None:
    raise ConnectionError("still down")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


# ---------------------------------------------------------------- construction and registration


def test_policies_merge_overrides_over_defaults(clock: FakeClock) -> None:
    """The manager's policy table is the defaults with the overridden rows replaced."""
    overrides = _override(E.NETWORK_TIMEOUT, chain=(K.CIRCUIT_BREAKER,))
    manager = _manager(clock, policies=overrides)
    assert manager.policies[E.NETWORK_TIMEOUT].chain == (K.CIRCUIT_BREAKER,)
    assert manager.policies[E.SECURITY_VIOLATION] is DEFAULT_POLICIES[E.SECURITY_VIOLATION]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_concurrent_recoveries": 0}, "max_concurrent_recoveries"),
        ({"max_queued_recoveries": -1}, "max_queued_recoveries"),
        ({"percentile_window": 0}, "percentile_window"),
        ({"shutdown_deadline": 0}, "shutdown_deadline"),
        ({"audit": object()}, "audit"),
        ({"retry_policy": object()}, "retry_policy"),
        ({"clock": object()}, "clock"),
    ],
)
def test_constructor_validation_names_the_argument(kwargs: dict[str, object], key: str) -> None:
    """A bad constructor argument raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as info:
        ErrorRecoveryManager(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_register_rejects_a_duplicate_name(clock: FakeClock) -> None:
    """Two components cannot share a name."""
    manager = _manager(clock)
    manager.register(Fake("feed"))
    with pytest.raises(ConfigurationError, match="already registered"):
        manager.register(Fake("feed"))


def test_register_requires_dependencies_first(clock: FakeClock) -> None:
    """depends_on may only name components already registered."""
    manager = _manager(clock)
    with pytest.raises(ConfigurationError, match="store"):
        manager.register(Fake("feed"), depends_on=["store"])


def test_register_rejects_a_non_component(clock: FakeClock) -> None:
    """An object without the Component methods is refused."""
    with pytest.raises(ConfigurationError, match="component"):
        _manager(clock).register(object())  # type: ignore[arg-type]


def test_unregister_forgets_the_component(clock: FakeClock) -> None:
    """unregister removes the component; an unknown name raises KeyError."""
    manager = _manager(clock)
    manager.register(Fake("feed"))
    manager.unregister("feed")
    assert manager.components() == ()
    with pytest.raises(KeyError):
        manager.unregister("feed")


def test_unregister_refuses_a_component_another_depends_on(clock: FakeClock) -> None:
    """A dependency cannot be unregistered while its dependant is, so the shutdown order holds."""
    manager = _manager(clock)
    manager.register(Fake("store"))
    manager.register(Fake("feed"), depends_on=["store"])
    with pytest.raises(ConfigurationError, match="'feed'"):
        manager.unregister("store")
    assert manager.registry.stop_order() == ("feed", "store")


# ---------------------------------------------------------------- one recovery


async def test_first_strategy_success_ends_the_recovery(clock: FakeClock) -> None:
    """A restart that makes the component healthy is a successful recovery with one attempt."""
    manager = _manager(clock)
    feed = Fake("feed", fixes=frozenset({"restart"}))
    manager.register(feed)
    outcome = await manager.handle(_ctx(), "feed")
    assert (outcome.success, outcome.strategy, outcome.strategies_tried) == (
        True,
        K.COMPONENT_RESTART,
        (K.COMPONENT_RESTART,),
    )
    assert (outcome.attempts, outcome.escalated, outcome.fell_through, outcome.error) == (
        1,
        False,
        False,
        None,
    )
    assert feed.healthy


async def test_exception_is_classified_into_a_context(clock: FakeClock) -> None:
    """An exception is classified and gets its policy's severity."""
    manager = _manager(clock, capture_state=True)
    manager.register(Fake("feed", fixes=frozenset({"reload"})))
    outcome = await manager.handle(MemoryError(), "feed")
    assert (outcome.error_type, outcome.severity, outcome.strategy) == (
        E.MEMORY_EXHAUSTION,
        ErrorSeverity.CRITICAL,
        K.CACHE_CLEAR_RELOAD,
    )


async def test_exception_without_component_is_refused(clock: FakeClock) -> None:
    """An exception must come with the name of the component that failed."""
    with pytest.raises(ValueError, match="component"):
        await _manager(clock).handle(MemoryError())


async def test_context_for_another_component_is_refused(clock: FakeClock) -> None:
    """A component argument that contradicts the context is an error."""
    with pytest.raises(ValueError, match="component"):
        await _manager(clock).handle(_ctx("feed"), "store")


async def test_failed_strategy_falls_through_along_the_chain(clock: FakeClock) -> None:
    """Retry and restart fail, failover heals: all three run in order within one handle."""
    manager = _manager(clock)
    feed = Fake("feed", fixes=frozenset({"failover"}))
    manager.register(feed)
    outcome = await manager.handle(_ctx(error_type=E.DATA_INGESTION_FAILURE), "feed", _failing)
    assert outcome.success
    assert (outcome.fell_through, outcome.escalated) == (True, False)
    assert outcome.strategies_tried == (K.RETRY, K.COMPONENT_RESTART, K.FAILOVER)
    assert outcome.attempts == 3


async def test_raising_strategy_counts_as_failed_and_is_recorded(clock: FakeClock) -> None:
    """An exception from a strategy is caught, recorded in the outcome, and escalates."""
    manager = _manager(clock)
    manager.register(Fake("feed", fixes=frozenset({"restart"})))
    outcome = await manager.handle(_ctx(error_type=E.DATA_INGESTION_FAILURE), "feed", _failing)
    assert outcome.success
    assert outcome.error is not None
    assert "retry: raised ConnectionError: still down" in outcome.error


async def test_not_applicable_strategy_is_skipped(clock: FakeClock) -> None:
    """A breaker strategy with no breaker registered moves on without counting as an attempt."""
    manager = _manager(clock)
    manager.register(Fake("api"))
    outcome = await manager.handle(_ctx("api", E.NETWORK_TIMEOUT), "api", _failing)
    assert not outcome.success
    assert outcome.strategies_tried == (K.RETRY, K.CIRCUIT_BREAKER)
    assert outcome.attempts == 1
    assert "no breaker registered" in (outcome.error or "")


async def test_circuit_breaker_strategy_opens_the_real_breaker(clock: FakeClock) -> None:
    """When retries run out, the registered CircuitBreaker is tripped and the recovery succeeds."""
    manager = _manager(clock)
    breaker = CircuitBreaker("exchange-api", 5, 30.0, clock)
    manager.register(Fake("api"), breaker=breaker)
    outcome = await manager.handle(_ctx("api", E.NETWORK_TIMEOUT), "api", _failing)
    assert (outcome.success, outcome.strategy) == (True, K.CIRCUIT_BREAKER)
    assert breaker.state is BreakerState.OPEN


async def test_unhealthy_after_every_strategy_is_a_failure(clock: FakeClock) -> None:
    """When no strategy makes the component healthy, the recovery fails (no shutdown if HIGH)."""
    manager = _manager(clock)
    feed = Fake("feed")
    manager.register(feed)
    outcome = await manager.handle(_ctx(), "feed")
    assert not outcome.success
    assert outcome.strategies_tried == (K.COMPONENT_RESTART, K.GRACEFUL_DEGRADATION)
    assert "stop" not in feed.calls


# ---------------------------------------------------------------- emergency shutdown


async def test_critical_exhausted_chain_ends_in_shutdown_in_reverse_order(
    clock: FakeClock,
) -> None:
    """A CRITICAL error whose chain fails ends in emergency shutdown, stopping in reverse order."""
    order: list[str] = []
    policies = _override(E.MEMORY_EXHAUSTION, chain=(K.CACHE_CLEAR_RELOAD, K.GRACEFUL_DEGRADATION))
    manager = _manager(clock, policies=policies)
    manager.register(Fake("store", order=order))
    manager.register(Fake("feed", order=order), depends_on=["store"])
    manager.register(Fake("engine", order=order), depends_on=["feed"])
    outcome = await manager.handle(_ctx("feed", E.MEMORY_EXHAUSTION), "feed")
    assert outcome.strategies_tried == (
        K.CACHE_CLEAR_RELOAD,
        K.GRACEFUL_DEGRADATION,
        K.EMERGENCY_SHUTDOWN,
    )
    assert (outcome.success, outcome.strategy) == (True, K.EMERGENCY_SHUTDOWN)
    assert order == ["engine", "feed", "store"]


async def test_shutdown_at_the_end_of_the_chain_runs_only_once(clock: FakeClock) -> None:
    """When the chain itself ends in a failed shutdown, it is not run a second time."""

    async def refuse(context: ErrorContext) -> bool:
        return False

    manager = _manager(clock, shutdown_handler=refuse)
    manager.register(Fake("feed"))
    outcome = await manager.handle(_ctx("feed", E.MEMORY_EXHAUSTION), "feed")
    assert not outcome.success
    assert outcome.strategies_tried.count(K.EMERGENCY_SHUTDOWN) == 1


async def test_security_violation_goes_straight_to_shutdown(clock: FakeClock) -> None:
    """SECURITY_VIOLATION's only strategy is the shutdown, which calls the handler."""
    seen: list[ErrorType] = []

    async def handler(context: ErrorContext) -> bool:
        seen.append(context.error_type)
        return True

    manager = _manager(clock, shutdown_handler=handler)
    outcome = await manager.handle(_ctx("gateway", E.SECURITY_VIOLATION))
    assert (outcome.success, outcome.strategies_tried) == (True, (K.EMERGENCY_SHUTDOWN,))
    assert seen == [E.SECURITY_VIOLATION]


# ---------------------------------------------------------------- pattern analysis


def _pattern_manager(clock: FakeClock) -> ErrorRecoveryManager:
    policies = _override(E.DATA_INGESTION_FAILURE, escalation_threshold=3, escalation_window=10.0)
    manager = _manager(clock, policies=policies)
    feed = Fake("feed")
    feed.healthy = True  # RETRY's health probe passes, so every recovery ends where it starts
    manager.register(feed)
    return manager


async def _start_of(manager: ErrorRecoveryManager) -> tuple[RecoveryStrategyKind, ErrorSeverity]:
    outcome = await manager.handle(_ctx("feed", E.DATA_INGESTION_FAILURE))
    assert outcome.success
    return outcome.strategies_tried[0], outcome.severity


async def test_threshold_crossing_moves_the_start_and_raises_severity(clock: FakeClock) -> None:
    """The third error in the window starts one step along the chain, one severity higher."""
    manager = _pattern_manager(clock)
    starts = [await _start_of(manager) for _ in range(3)]
    assert starts == [
        (K.RETRY, ErrorSeverity.HIGH),
        (K.RETRY, ErrorSeverity.HIGH),
        (K.COMPONENT_RESTART, ErrorSeverity.CRITICAL),
    ]
    assert manager.statistics().pattern_escalations == 1


async def test_each_further_crossing_is_another_step(clock: FakeClock) -> None:
    """Six errors in the window cross twice: the start reaches the third strategy."""
    manager = _pattern_manager(clock)
    starts = [(await _start_of(manager))[0] for _ in range(6)]
    assert starts[5] == K.FAILOVER


async def test_errors_spread_beyond_the_window_do_not_escalate(clock: FakeClock) -> None:
    """Errors further apart than the window never reach the threshold."""
    manager = _pattern_manager(clock)
    starts = []
    for _ in range(4):
        starts.append((await _start_of(manager))[0])
        clock.advance(6.0)
    assert starts == [K.RETRY] * 4


async def test_quiet_window_resets_the_escalation_level(clock: FakeClock) -> None:
    """After a crossing, a whole window without errors brings the start back to the first step."""
    manager = _pattern_manager(clock)
    for _ in range(3):
        await _start_of(manager)
    clock.advance(10.5)
    assert await _start_of(manager) == (K.RETRY, ErrorSeverity.HIGH)


async def test_pattern_is_counted_per_component(clock: FakeClock) -> None:
    """Errors of another component do not escalate this one."""
    manager = _pattern_manager(clock)
    other = Fake("store")
    other.healthy = True
    manager.register(other)
    for _ in range(2):
        await manager.handle(_ctx("store", E.DATA_INGESTION_FAILURE))
    assert await _start_of(manager) == (K.RETRY, ErrorSeverity.HIGH)


# ---------------------------------------------------------------- concurrency


async def test_limit_runs_two_queues_three_and_rejects_the_rest(clock: FakeClock) -> None:
    """With 2 slots and 3 queue places, 10 recoveries give 2 running, 3 queued, 5 rejected."""
    gate = asyncio.Event()
    manager = _manager(clock, max_concurrent_recoveries=2, max_queued_recoveries=3)
    for i in range(10):
        manager.register(Fake(f"c{i}", fixes=frozenset({"restart"}), gate=gate))
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(manager.handle(_ctx(f"c{i}"))) for i in range(10)]
        await _settle()
        stats = manager.statistics()
        assert (stats.current_recovery_attempts, stats.queued_recoveries) == (2, 3)
        assert len(manager.active_recoveries()) == 2
        gate.set()
    outcomes = [t.result() for t in tasks]
    assert [o.rejected for o in outcomes] == [False] * 5 + [True] * 5
    assert all(o.success for o in outcomes[:5])
    final = manager.statistics()
    assert (final.successful_recoveries, final.rejected_recoveries, final.total_errors) == (
        5,
        5,
        10,
    )
    assert (final.current_recovery_attempts, final.queued_recoveries) == (0, 0)


async def test_limit_is_a_bulkhead_that_refuses_at_its_limit(clock: FakeClock) -> None:
    """The recovery limit is the library's Bulkhead: its statistics count admissions and the
    refusal, and the refused error still yields a rejected, audited outcome."""
    gate = asyncio.Event()
    manager = _manager(clock, max_concurrent_recoveries=1, max_queued_recoveries=1)
    bulkhead = manager.bulkhead
    assert isinstance(bulkhead, Bulkhead)
    assert (bulkhead.name, bulkhead.max_concurrent, bulkhead.max_waiting) == ("recovery", 1, 1)
    for name in ("a", "b", "c"):
        manager.register(Fake(name, fixes=frozenset({"restart"}), gate=gate))
    async with asyncio.TaskGroup() as group:
        first = group.create_task(manager.handle(_ctx("a")))
        second = group.create_task(manager.handle(_ctx("b")))
        await _settle()
        assert bulkhead.statistics() == BulkheadStatistics(
            running=1, waiting=1, admitted=1, rejected=0
        )
        refused = await manager.handle(_ctx("c"))
        gate.set()
    assert (refused.rejected, refused.error) == (
        True,
        "recovery rejected: 1 running, 1 queued (limits 1 and 1)",
    )
    assert (first.result().rejected, second.result().rejected) == (False, False)
    assert bulkhead.statistics() == BulkheadStatistics(running=0, waiting=0, admitted=2, rejected=1)
    assert manager.statistics().rejected_recoveries == 1


async def test_rejected_outcome_has_no_strategy(clock: FakeClock) -> None:
    """A rejection returns at once with success=False and no strategy tried."""
    gate = asyncio.Event()
    manager = _manager(clock, max_concurrent_recoveries=1, max_queued_recoveries=0)
    manager.register(Fake("a", gate=gate))
    manager.register(Fake("b"))
    async with asyncio.TaskGroup() as group:
        group.create_task(manager.handle(_ctx("a")))
        await _settle()
        outcome = await manager.handle(_ctx("b"))
        gate.set()
    assert (outcome.rejected, outcome.success, outcome.strategy, outcome.strategies_tried) == (
        True,
        False,
        None,
        (),
    )


async def test_same_error_and_component_joins_the_running_recovery(clock: FakeClock) -> None:
    """A second error for the same (type, component) waits for the first recovery's result."""
    gate = asyncio.Event()
    manager = _manager(clock)
    feed = Fake("feed", fixes=frozenset({"restart"}), gate=gate)
    manager.register(feed)
    first_ctx, second_ctx = _ctx(), _ctx()
    async with asyncio.TaskGroup() as group:
        first = group.create_task(manager.handle(first_ctx))
        await _settle()
        second = group.create_task(manager.handle(second_ctx))
        await _settle()
        gate.set()
    assert feed.calls.count("restart") == 1
    assert (first.result().joined, second.result().joined) == (False, True)
    assert second.result().success
    assert second.result().error_id == second_ctx.error_id
    stats = manager.statistics()
    assert (stats.joined_recoveries, stats.successful_recoveries, stats.total_errors) == (1, 1, 2)


async def test_joiner_gets_a_failure_when_the_joined_recovery_is_cancelled(
    clock: FakeClock,
) -> None:
    """Cancelling the running recovery does not cancel the error that joined it."""
    gate = asyncio.Event()
    manager = _manager(clock)
    manager.register(Fake("feed", gate=gate))
    first = asyncio.create_task(manager.handle(_ctx()))
    await _settle()
    second = asyncio.create_task(manager.handle(_ctx()))
    await _settle()
    first.cancel()
    outcome = await second
    assert (outcome.joined, outcome.success) == (True, False)
    assert "cancelled" in (outcome.error or "")
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_cancelled_handle_propagates_and_leaves_nothing_behind(clock: FakeClock) -> None:
    """CancelledError escapes handle and the recovery's slot, view entry and join key are freed."""
    gate = asyncio.Event()
    manager = _manager(clock, max_concurrent_recoveries=1)
    feed = Fake("feed", fixes=frozenset({"restart"}), gate=gate)
    manager.register(feed)
    task = asyncio.create_task(manager.handle(_ctx()))
    await _settle()
    assert len(manager.active_recoveries()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.active_recoveries() == ()
    assert manager.statistics().current_recovery_attempts == 0
    gate.set()
    outcome = await manager.handle(_ctx())
    assert (outcome.joined, outcome.success) == (False, True)


async def test_active_recoveries_show_the_blocked_strategy(clock: FakeClock) -> None:
    """While a restart is blocked, the view shows its error, component, strategy and start."""
    gate = asyncio.Event()
    manager = _manager(clock)
    manager.register(Fake("feed", fixes=frozenset({"restart"}), gate=gate))
    context = _ctx()
    async with asyncio.TaskGroup() as group:
        group.create_task(manager.handle(context))
        await _settle()
        (active,) = manager.active_recoveries()
        gate.set()
    assert (active.error_id, active.component, active.strategy, active.attempt) == (
        context.error_id,
        "feed",
        K.COMPONENT_RESTART,
        1,
    )
    assert active.started_at == 1000.0
    assert manager.active_recoveries() == ()


# ---------------------------------------------------------------- listeners and audit


async def test_listeners_see_the_recovery_events_in_order(clock: FakeClock) -> None:
    """A recovery that falls through emits error, started, failed, fell_through, finished."""
    events: list[RecoveryEvent] = []
    manager = _manager(clock)
    manager.add_listener(events.append)
    manager.register(Fake("feed", fixes=frozenset({"degrade"})))
    await manager.handle(_ctx())
    assert [e.kind for e in events] == [
        "error",
        "recovery_started",
        "strategy_failed",
        "fell_through",
        "recovery_finished",
    ]
    assert events[-1].outcome is not None
    assert events[-1].outcome.success


async def test_raising_listener_is_logged_and_ignored(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises does not stop the recovery or the other listeners."""
    seen: list[str] = []

    def broken(event: RecoveryEvent) -> None:
        raise RuntimeError("listener bug")

    manager = _manager(clock)
    manager.add_listener(broken)
    manager.add_listener(lambda e: seen.append(e.kind))
    manager.register(Fake("feed", fixes=frozenset({"restart"})))
    with caplog.at_level(logging.ERROR):
        outcome = await manager.handle(_ctx())
    assert outcome.success
    assert seen[-1] == "recovery_finished"
    assert "listener" in caplog.text


async def test_rejection_is_sent_to_listeners(clock: FakeClock) -> None:
    """A rejected recovery emits a 'rejected' event carrying the outcome."""
    gate = asyncio.Event()
    events: list[RecoveryEvent] = []
    manager = _manager(clock, max_concurrent_recoveries=1, max_queued_recoveries=0)
    manager.register(Fake("a", gate=gate))
    async with asyncio.TaskGroup() as group:
        group.create_task(manager.handle(_ctx("a")))
        await _settle()
        manager.add_listener(events.append)
        await manager.handle(_ctx("b"))
        gate.set()
    assert events[1].kind == "rejected"
    assert events[1].outcome is not None
    assert events[1].outcome.rejected


async def test_audit_records_recoveries_and_fall_throughs(clock: FakeClock, tmp_path: Path) -> None:
    """Each recovery and fall-through is appended to the audit log, whose chain then verifies."""
    log = AuditLog(tmp_path / "audit.jsonl", clock=clock, fsync=False)
    try:
        manager = _manager(clock, audit=log)
        manager.register(Fake("feed", fixes=frozenset({"degrade"})))
        context = _ctx()
        outcome = await manager.handle(context)
        verification = log.verify()
    finally:
        log.close()
    records = list(AuditLog.read(tmp_path / "audit.jsonl"))
    assert [r.kind for r in records] == ["error", "fall_through", "recovery"]
    arrived = records[0].data["context"]
    assert isinstance(arrived, dict)
    assert arrived["error_id"] == str(context.error_id)
    data = records[2].data
    assert (data["error_id"], data["success"], data["strategy"]) == (
        str(context.error_id),
        True,
        outcome.strategy and outcome.strategy.value,
    )
    assert isinstance(data["context"], dict)
    assert data["context"]["message"] == "boom"
    assert verification.records == 3


async def test_audit_failure_does_not_fail_the_recovery(clock: FakeClock) -> None:
    """An audit sink that raises is logged; the recovery's outcome stands."""

    class Broken:
        async def aappend(self, kind: str, data: dict[str, object], /) -> None:
            raise OSError("disk full")

    manager = _manager(clock, audit=Broken())
    manager.register(Fake("feed", fixes=frozenset({"restart"})))
    outcome = await manager.handle(_ctx())
    assert outcome.success
