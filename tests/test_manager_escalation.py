"""RecoveryOutcome.escalated is DESIGN §4's escalation (a pattern level), not a fall-through."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from typing import TYPE_CHECKING

import pytest

from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    AuditLog,
    CircuitBreaker,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    RecoveryPolicy,
    RecoveryStrategyKind,
    RetryPolicy,
)
from strategylab.fault_tolerance._manager import RecoveryOutcome
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from pathlib import Path

    from strategylab.fault_tolerance._manager import RecoveryEvent

K = RecoveryStrategyKind
E = ErrorType


class Healthy:
    """A component that every strategy leaves healthy, optionally held at a gate."""

    def __init__(self, name: str, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.gate = gate

    async def _act(self) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def health(self) -> bool:
        return await self._act()

    async def restart(self) -> None:
        await self._act()

    async def failover(self) -> bool:
        return await self._act()

    async def degrade(self, level: int) -> bool:
        return await self._act()

    async def restore(self) -> bool:
        return await self._act()

    async def scale(self, factor: float) -> bool:
        return await self._act()

    async def reload(self) -> bool:
        return await self._act()


async def _shutdown(context: ErrorContext) -> bool:
    return True


async def _failing() -> None:
    raise TimeoutError("still timing out")


def _ctx(component: str, error_type: ErrorType) -> ErrorContext:
    return ErrorContext(
        error_id=uuid.uuid4(),
        error_type=error_type,
        timestamp=dt.datetime.now(dt.UTC),
        severity=DEFAULT_POLICIES[error_type].severity,
        component=component,
        message="boom",
    )


def _manager(
    clock: FakeClock,
    policies: dict[ErrorType, RecoveryPolicy] | None = None,
    **kwargs: object,
) -> ErrorRecoveryManager:
    return ErrorRecoveryManager(
        policies,
        clock=clock,
        retry_policy=RetryPolicy(max_attempts=2, base_delay=0.01, jitter=None, clock=clock),
        capture_state=False,
        shutdown_handler=_shutdown,
        **kwargs,  # type: ignore[arg-type]
    )


def _policy(
    error_type: ErrorType, threshold: int, window: float
) -> dict[ErrorType, RecoveryPolicy]:
    row = dataclasses.replace(
        DEFAULT_POLICIES[error_type], escalation_threshold=threshold, escalation_window=window
    )
    return {error_type: row}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=500.0)


async def _network_timeouts(
    clock: FakeClock, manager: ErrorRecoveryManager, count: int
) -> list[RecoveryOutcome]:
    manager.register(Healthy("api"), breaker=CircuitBreaker("api", 5, 30.0, clock))
    outcomes = []
    for _ in range(count):
        outcomes.append(await manager.handle(_ctx("api", E.NETWORK_TIMEOUT), "api", _failing))
        await clock.asleep(1.0)
    return outcomes


async def test_issue_seven_network_timeouts_escalate_from_the_fifth(clock: FakeClock) -> None:
    """Eight NETWORK_TIMEOUTs a second apart: the 5th to 8th, at HIGH, report escalated."""
    outcomes = await _network_timeouts(clock, _manager(clock), 8)
    assert [o.escalated for o in outcomes] == [False] * 4 + [True] * 4
    assert [o.severity for o in outcomes] == [ErrorSeverity.MEDIUM] * 4 + [ErrorSeverity.HIGH] * 4
    assert [o.escalation_level for o in outcomes] == [0] * 4 + [1] * 4


async def test_only_the_crossing_error_reports_crossed_threshold(clock: FakeClock) -> None:
    """Of eight NETWORK_TIMEOUTs under the default 5 in 60 s, only the fifth crossed."""
    outcomes = await _network_timeouts(clock, _manager(clock), 8)
    assert [o.crossed_threshold for o in outcomes] == [False] * 4 + [True] + [False] * 3


async def test_fall_through_is_not_escalation(clock: FakeClock) -> None:
    """A first error whose retry fails and falls through to the breaker is not escalated."""
    (outcome,) = await _network_timeouts(clock, _manager(clock), 1)
    assert outcome.strategies_tried == (K.RETRY, K.CIRCUIT_BREAKER)
    assert (outcome.fell_through, outcome.escalated, outcome.escalation_level) == (True, False, 0)


async def test_escalated_errors_start_further_along_the_chain(clock: FakeClock) -> None:
    """Escalated NETWORK_TIMEOUTs start at the circuit breaker and so do not fall through."""
    outcomes = await _network_timeouts(clock, _manager(clock), 8)
    assert [o.strategies_tried[0] for o in outcomes] == [K.RETRY] * 4 + [K.CIRCUIT_BREAKER] * 4
    assert [o.fell_through for o in outcomes] == [True] * 4 + [False] * 4


@pytest.mark.parametrize(
    ("error_type", "threshold", "window", "gap", "count"),
    [
        (E.NETWORK_TIMEOUT, 5, 60.0, 1.0, 8),
        (E.DATA_INGESTION_FAILURE, 3, 10.0, 2.0, 7),
        (E.EXTERNAL_API_FAILURE, 2, 5.0, 0.5, 6),
        (E.MEMORY_EXHAUSTION, 4, 30.0, 3.0, 9),
        (E.OPTIMIZATION_TIMEOUT, 1, 1.0, 0.1, 3),
        (E.SECURITY_VIOLATION, 2, 60.0, 10.0, 5),
    ],
)
async def test_escalated_follows_the_pattern_level(
    clock: FakeClock,
    *,
    error_type: ErrorType,
    threshold: int,
    window: float,
    gap: float,
    count: int,
) -> None:
    """For any type and threshold, escalated is True exactly from the first crossing on."""
    manager = _manager(clock, _policy(error_type, threshold, window))
    manager.register(Healthy("unit"))
    outcomes = []
    for _ in range(count):
        outcomes.append(await manager.handle(_ctx("unit", error_type)))
        await clock.asleep(gap)
    levels = [(n + 1) // threshold for n in range(count)]
    assert [o.escalation_level for o in outcomes] == levels
    assert [o.escalated for o in outcomes] == [level > 0 for level in levels]
    assert [o.crossed_threshold for o in outcomes] == [
        (n + 1) % threshold == 0 for n in range(count)
    ]
    base = DEFAULT_POLICIES[error_type].severity
    assert [o.severity for o in outcomes] == [base.raised(level) for level in levels]


async def test_errors_spread_beyond_the_window_are_never_escalated(clock: FakeClock) -> None:
    """Errors further apart than the window never reach the threshold."""
    manager = _manager(clock, _policy(E.BACKTEST_ENGINE_FAILURE, 2, 10.0))
    manager.register(Healthy("engine"))
    outcomes = []
    for _ in range(5):
        outcomes.append(await manager.handle(_ctx("engine", E.BACKTEST_ENGINE_FAILURE)))
        await clock.asleep(10.5)
    assert not any(o.escalated for o in outcomes)


async def test_quiet_window_ends_the_escalation(clock: FakeClock) -> None:
    """After a crossing, a whole quiet window makes the next error unescalated again."""
    manager = _manager(clock, _policy(E.DATA_INGESTION_FAILURE, 2, 10.0))
    manager.register(Healthy("feed"))
    first = [await manager.handle(_ctx("feed", E.DATA_INGESTION_FAILURE)) for _ in range(3)]
    await clock.asleep(10.5)
    later = await manager.handle(_ctx("feed", E.DATA_INGESTION_FAILURE))
    assert [o.escalated for o in first] == [False, True, True]
    assert (later.escalated, later.escalation_level) == (False, 0)


async def test_escalation_is_per_type_and_component(clock: FakeClock) -> None:
    """Errors of another component or another type do not escalate this one."""
    manager = _manager(clock, _policy(E.NETWORK_TIMEOUT, 2, 60.0))
    for name in ("api", "other"):
        manager.register(Healthy(name))
    await manager.handle(_ctx("other", E.NETWORK_TIMEOUT))
    await manager.handle(_ctx("api", E.EXTERNAL_API_FAILURE))
    outcome = await manager.handle(_ctx("api", E.NETWORK_TIMEOUT))
    assert not outcome.escalated


async def test_joined_outcome_reports_its_own_escalation(clock: FakeClock) -> None:
    """An error that crosses while joining an unescalated recovery reports escalated."""
    gate = asyncio.Event()
    manager = _manager(clock, _policy(E.STRATEGY_EXECUTION_ERROR, 2, 60.0))
    manager.register(Healthy("bot", gate=gate))
    async with asyncio.TaskGroup() as group:
        primary = group.create_task(manager.handle(_ctx("bot", E.STRATEGY_EXECUTION_ERROR)))
        await asyncio.sleep(0)
        joiner = group.create_task(manager.handle(_ctx("bot", E.STRATEGY_EXECUTION_ERROR)))
        await asyncio.sleep(0)
        gate.set()
    assert (primary.result().escalated, primary.result().joined) == (False, False)
    assert (joiner.result().joined, joiner.result().escalated) == (True, True)
    assert joiner.result().crossed_threshold


async def test_rejected_outcome_reports_its_own_escalation(clock: FakeClock) -> None:
    """A rejected error at a raised level still reports escalated."""
    gate = asyncio.Event()
    policies = {
        **_policy(E.NETWORK_TIMEOUT, 1, 60.0),
        **_policy(E.STRATEGY_EXECUTION_ERROR, 5, 60.0),
    }
    manager = _manager(clock, policies, max_concurrent_recoveries=1, max_queued_recoveries=0)
    manager.register(Healthy("busy", gate=gate))
    manager.register(Healthy("api"))
    async with asyncio.TaskGroup() as group:
        group.create_task(manager.handle(_ctx("busy", E.STRATEGY_EXECUTION_ERROR)))
        await asyncio.sleep(0)
        rejected = await manager.handle(_ctx("api", E.NETWORK_TIMEOUT))
        gate.set()
    assert (rejected.rejected, rejected.escalated, rejected.escalation_level) == (True, True, 1)


async def test_statistics_count_escalation_and_fall_through_apart(clock: FakeClock) -> None:
    """One crossing, four escalated errors and four fall-throughs are counted as such."""
    manager = _manager(clock)
    await _network_timeouts(clock, manager, 8)
    stats = manager.statistics()
    assert (stats.pattern_escalations, stats.escalated_errors, stats.fall_throughs) == (1, 4, 4)


async def test_escalated_event_is_sent_only_for_the_crossing(clock: FakeClock) -> None:
    """Listeners get one 'escalated' event (the crossing) and a 'fell_through' per step."""
    events: list[RecoveryEvent] = []
    manager = _manager(clock)
    manager.add_listener(events.append)
    await _network_timeouts(clock, manager, 8)
    escalated = [e for e in events if e.kind == "escalated"]
    assert [e.strategy for e in escalated] == [K.CIRCUIT_BREAKER]
    assert sum(e.kind == "fell_through" for e in events) == 4


async def test_audit_escalation_records_are_crossings(clock: FakeClock, tmp_path: Path) -> None:
    """The audit log holds one 'escalation' record per crossing, none for fall-throughs."""
    log = AuditLog(tmp_path / "audit.jsonl", clock=clock, fsync=False)
    try:
        await _network_timeouts(clock, _manager(clock, audit=log), 6)
    finally:
        log.close()
    kinds = [r.kind for r in AuditLog.read(tmp_path / "audit.jsonl")]
    assert (kinds.count("escalation"), kinds.count("fall_through")) == (1, 4)


def test_outcome_dict_carries_escalation_and_fall_through() -> None:
    """to_dict reports escalated, its level, the crossing and the fall-through."""
    outcome = RecoveryOutcome(
        error_id=uuid.uuid4(),
        error_type=E.NETWORK_TIMEOUT,
        component="api",
        success=True,
        strategy=K.CIRCUIT_BREAKER,
        escalated=True,
        escalation_level=1,
        crossed_threshold=True,
        severity=ErrorSeverity.HIGH,
    )
    data = outcome.to_dict()
    assert (data["escalated"], data["escalation_level"]) == (True, 1)
    assert (data["crossed_threshold"], data["fell_through"]) == (True, False)


@pytest.mark.parametrize(
    ("escalated", "level", "crossed"),
    [(True, 0, False), (False, 1, False), (False, 0, True), (True, -1, False)],
)
def test_outcome_refuses_inconsistent_escalation(
    escalated: bool, level: int, crossed: bool
) -> None:
    """escalated must agree with escalation_level, and a crossing is always escalated."""
    with pytest.raises(ValueError, match=r"escalat|crossed"):
        RecoveryOutcome(
            error_id=uuid.uuid4(),
            error_type=E.NETWORK_TIMEOUT,
            component="api",
            success=True,
            strategy=K.RETRY,
            escalated=escalated,
            escalation_level=level,
            crossed_threshold=crossed,
            severity=ErrorSeverity.MEDIUM,
        )
