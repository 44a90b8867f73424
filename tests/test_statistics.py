"""Recovery statistics: counters, nearest-rank percentiles, SLA compliance, frozen snapshots."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorType,
    RecoveryPolicy,
    RecoveryStatistics,
    RecoveryStrategyKind,
)
from strategylab.fault_tolerance._statistics import StatisticsRecorder, nearest_rank
from strategylab.testing import FakeClock

K = RecoveryStrategyKind
E = ErrorType


class Timed:
    """A component whose restart takes ``cost`` seconds of fake time and heals it if ``heals``."""

    def __init__(self, name: str, clock: FakeClock, cost: float, *, heals: bool = True) -> None:
        self.name = name
        self.clock = clock
        self.cost = cost
        self.heals = heals
        self.healthy = False

    async def start(self) -> None:
        self.healthy = self.heals

    async def stop(self) -> None:
        self.healthy = False

    async def health(self) -> bool:
        return self.healthy

    async def restart(self) -> None:
        self.clock.advance(self.cost)
        self.healthy = self.heals


def _ctx(component: str, error_type: ErrorType = E.STRATEGY_EXECUTION_ERROR) -> ErrorContext:
    return ErrorContext(
        error_id=uuid.uuid4(),
        error_type=error_type,
        timestamp=dt.datetime.now(dt.UTC),
        severity=DEFAULT_POLICIES[error_type].severity,
        component=component,
        message="boom",
    )


def _only_restart() -> dict[ErrorType, RecoveryPolicy]:
    policy = DEFAULT_POLICIES[E.STRATEGY_EXECUTION_ERROR]
    return {E.STRATEGY_EXECUTION_ERROR: dataclasses.replace(policy, chain=(K.COMPONENT_RESTART,))}


async def _run(clock: FakeClock, costs: list[float], *, heals: bool = True) -> RecoveryStatistics:
    manager = ErrorRecoveryManager(
        policies=_only_restart(),
        clock=clock,
        capture_state=False,
    )
    for i, cost in enumerate(costs):
        manager.register(Timed(f"c{i}", clock, cost, heals=heals))
        await manager.handle(_ctx(f"c{i}"))
    return manager.statistics()


@pytest.mark.parametrize(
    ("values", "percentile", "expected"),
    [
        ([15.0, 20.0, 35.0, 40.0, 50.0], 30, 20.0),
        ([15.0, 20.0, 35.0, 40.0, 50.0], 40, 20.0),
        ([15.0, 20.0, 35.0, 40.0, 50.0], 50, 35.0),
        ([15.0, 20.0, 35.0, 40.0, 50.0], 100, 50.0),
        ([3.0], 1, 3.0),
        ([], 50, 0.0),
    ],
)
def test_nearest_rank(values: list[float], percentile: float, expected: float) -> None:
    """nearest_rank returns the value at rank ceil(p/100 * n) (the textbook examples)."""
    assert nearest_rank(values, percentile) == expected


def test_empty_snapshot_is_all_zero() -> None:
    """Before any error every counter, rate and percentile is zero and SLA compliance is empty."""
    stats = StatisticsRecorder().snapshot(running=0, queued=0)
    assert (stats.total_errors, stats.success_rate, stats.p99_ms) == (0, 0.0, 0.0)
    assert dict(stats.sla_compliance) == {}


def test_percentiles_cover_only_the_recent_window() -> None:
    """Percentiles are over the last ``percentile_window`` durations; the average is over all."""
    recorder = StatisticsRecorder(percentile_window=3)
    for ms in (100.0, 200.0, 300.0, 400.0, 500.0):
        recorder.record_completed(success=True, duration_ms=ms, sla="api", within_sla=True)
    stats = recorder.snapshot(running=0, queued=0)
    assert (stats.p50_ms, stats.p99_ms) == (400.0, 500.0)
    assert stats.average_recovery_time_ms == 300.0


def test_rejections_count_against_the_success_rate() -> None:
    """success_rate = successful / (successful + failed + rejected)."""
    recorder = StatisticsRecorder()
    recorder.record_completed(success=True, duration_ms=1.0, sla="api", within_sla=True)
    recorder.record_completed(success=False, duration_ms=1.0, sla="api", within_sla=False)
    recorder.record_rejected()
    recorder.record_rejected()
    assert recorder.snapshot(running=0, queued=0).success_rate == 0.25


def test_snapshot_mappings_are_read_only() -> None:
    """The snapshot's distributions cannot be modified."""
    recorder = StatisticsRecorder()
    recorder.record_error(E.NETWORK_TIMEOUT)
    stats = recorder.snapshot(running=0, queued=0)
    with pytest.raises(TypeError):
        stats.error_type_distribution[E.NETWORK_TIMEOUT] = 5  # type: ignore[index]


def test_snapshot_does_not_change_after_more_recording() -> None:
    """A snapshot is frozen: later errors do not show in it."""
    recorder = StatisticsRecorder()
    recorder.record_error(E.NETWORK_TIMEOUT)
    stats = recorder.snapshot(running=0, queued=0)
    recorder.record_error(E.NETWORK_TIMEOUT)
    assert (stats.total_errors, stats.error_type_distribution[E.NETWORK_TIMEOUT]) == (1, 1)


async def test_percentiles_of_known_recovery_durations() -> None:
    """Restarts taking 0.1 s .. 1.0 s of fake time give exact nearest-rank percentiles."""
    stats = await _run(FakeClock(), [0.1 * i for i in range(1, 11)])
    assert stats.p50_ms == pytest.approx(500.0)
    assert stats.p95_ms == pytest.approx(1000.0)
    assert stats.p99_ms == pytest.approx(1000.0)
    assert stats.average_recovery_time_ms == pytest.approx(550.0)


async def test_sla_compliance_is_the_fraction_within_the_class() -> None:
    """One restart within the 30 s critical SLA and one past it give compliance 0.5."""
    stats = await _run(FakeClock(), [10.0, 40.0])
    assert dict(stats.sla_compliance) == {"critical": 0.5}


async def test_failed_recoveries_are_not_within_sla() -> None:
    """A fast recovery that failed does not count as compliant."""
    stats = await _run(FakeClock(), [0.1], heals=False)
    assert (stats.failed_recoveries, dict(stats.sla_compliance)) == (1, {"critical": 0.0})


async def test_counters_and_distributions_from_the_manager() -> None:
    """Errors, outcomes and executed strategies are counted per type and per strategy."""
    clock = FakeClock()
    manager = ErrorRecoveryManager(clock=clock, capture_state=False)
    manager.register(Timed("engine", clock, 0.0))
    broken = Timed("backtest", clock, 0.0, heals=False)
    manager.register(broken)
    await manager.handle(_ctx("engine"))
    await manager.handle(_ctx("backtest", E.STRATEGY_EXECUTION_ERROR))
    stats = manager.statistics()
    assert (stats.total_errors, stats.successful_recoveries, stats.failed_recoveries) == (2, 1, 1)
    assert stats.success_rate == 0.5
    assert dict(stats.error_type_distribution) == {E.STRATEGY_EXECUTION_ERROR: 2}
    # engine: restart; backtest: restart, then degradation (not applicable: not counted)
    assert dict(stats.strategy_distribution) == {K.COMPONENT_RESTART: 2}
    assert (stats.fall_throughs, stats.escalated_errors, stats.pattern_escalations) == (1, 0, 0)


def test_escalation_and_fall_through_are_counted_apart() -> None:
    """Crossings, escalated errors and fall-throughs each have their own counter."""
    recorder = StatisticsRecorder()
    recorder.record_escalation(pattern=True)
    for _ in range(3):
        recorder.record_escalated_error()
    recorder.record_fall_through()
    recorder.record_fall_through()
    stats = recorder.snapshot(running=0, queued=0)
    assert (stats.pattern_escalations, stats.escalated_errors, stats.fall_throughs) == (1, 3, 2)
