"""Errors by (type, component) and strategies by outcome, as the status service exports them."""

from __future__ import annotations

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType, RecoveryStrategyKind
from strategylab.fault_tolerance._statistics import StatisticsRecorder


def test_recorder_counts_errors_by_component_and_strategies_by_outcome() -> None:
    stats = StatisticsRecorder()
    stats.record_error(ErrorType.NETWORK_TIMEOUT, "feed")
    stats.record_error(ErrorType.NETWORK_TIMEOUT, "feed")
    stats.record_error(ErrorType.NETWORK_TIMEOUT, "store")
    stats.record_error(ErrorType.DISK_SPACE_EXHAUSTED)  # no component: by type only
    stats.record_strategy(RecoveryStrategyKind.RETRY, success=True)
    stats.record_strategy(RecoveryStrategyKind.RETRY, success=False)
    stats.record_strategy(RecoveryStrategyKind.RETRY, success=False)
    snap = stats.snapshot(running=0, queued=0)
    assert snap.error_component_distribution == {
        (ErrorType.NETWORK_TIMEOUT, "feed"): 2,
        (ErrorType.NETWORK_TIMEOUT, "store"): 1,
    }
    assert snap.error_type_distribution[ErrorType.DISK_SPACE_EXHAUSTED] == 1
    assert snap.strategy_outcomes == {
        (RecoveryStrategyKind.RETRY, True): 1,
        (RecoveryStrategyKind.RETRY, False): 2,
    }


async def test_manager_records_the_component_of_each_error() -> None:
    manager = ErrorRecoveryManager()
    await manager.handle(ConnectionError("reset"), component="feed")
    await manager.handle(ConnectionError("reset"), component="store")
    counts = manager.statistics().error_component_distribution
    assert sum(n for (_, component), n in counts.items() if component == "feed") == 1
    assert sum(n for (_, component), n in counts.items() if component == "store") == 1
