"""Recovery statistics: a cheap recorder in the manager and a frozen :class:`RecoveryStatistics`.

Recording a recovery is O(1): counters, a running sum and an append to a bounded ring of recent
durations. Only :meth:`StatisticsRecorder.snapshot` does real work, sorting that window once to read
the percentiles.

Definitions (all durations are measured on the manager's clock, from the moment ``handle`` is
called, queueing included, to the moment the recovery finished):

- a *completed* recovery is one that ran its strategies (successfully or not); rejected recoveries
  and errors that joined a running recovery are counted apart and never in rates or timings;
- ``success_rate`` = successful / (completed + rejected): a rejection is a recovery that did not
  happen, so it counts against the rate; 0.0 before any recovery;
- ``average_recovery_time_ms`` is over every completed recovery since the manager started;
- ``p50_ms``/``p95_ms``/``p99_ms`` are exact nearest-rank percentiles over the last
  ``percentile_window`` completed recoveries: the value at rank ``ceil(p/100 * n)`` of the sorted
  window; 0.0 when the window is empty;
- ``sla_compliance[name]`` = recoveries of that SLA class that *succeeded* within the class's
  seconds, over completed recoveries of that class; a class with no recovery yet has no entry;
- *escalation* is DESIGN §4's: ``pattern_escalations`` counts threshold crossings and
  ``escalated_errors`` the errors handled at a raised level (those whose outcome reports
  ``escalated=True``); ``fall_throughs`` counts steps to a later strategy within one recovery after
  a strategy failed, which is not an escalation.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._taxonomy import ErrorType, RecoveryStrategyKind

__all__ = ["RecoveryStatistics", "StatisticsRecorder", "nearest_rank"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryStatistics:
    """A frozen snapshot of the recovery manager's counters (see the module docstring)."""

    total_errors: int
    """Every error handed to the manager, joined and rejected ones included."""
    successful_recoveries: int
    failed_recoveries: int
    rejected_recoveries: int
    """Turned away at once because the running and queued limits were both reached."""
    joined_recoveries: int
    """Errors that joined an already running recovery of the same (type, component)."""
    success_rate: float
    average_recovery_time_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_type_distribution: Mapping[ErrorType, int]
    strategy_distribution: Mapping[RecoveryStrategyKind, int]
    """How many times each strategy was executed (not-applicable strategies are not counted)."""
    current_recovery_attempts: int
    """Recoveries running right now (holding a slot)."""
    queued_recoveries: int
    """Recoveries waiting for a slot right now."""
    pattern_escalations: int
    """Crossings of a policy's escalation threshold by pattern analysis (DESIGN §4)."""
    escalated_errors: int = 0
    """Errors handled while their (type, component) was escalated: outcomes with ``escalated``."""
    fall_throughs: int = 0
    """Steps to a later strategy within one recovery, after a strategy failed (not escalations)."""
    sla_compliance: Mapping[str, float]
    error_component_distribution: Mapping[tuple[ErrorType, str], int] = dataclasses.field(
        default_factory=dict
    )
    """Errors by (type, component) (the status service's ``errors_total{type,component}``)."""
    strategy_outcomes: Mapping[tuple[RecoveryStrategyKind, bool], int] = dataclasses.field(
        default_factory=dict
    )
    """Executed strategies by (strategy, succeeded): ``recoveries by strategy and outcome``."""


def nearest_rank(sorted_values: list[float], percentile: float) -> float:
    """The nearest-rank ``percentile`` (0 < p <= 100) of already sorted values; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(percentile / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


class StatisticsRecorder:
    """The mutable, O(1)-per-event side of the statistics; owned by one manager (one event loop)."""

    __slots__ = (
        "_durations",
        "_error_components",
        "_error_types",
        "_escalated_errors",
        "_failed",
        "_fall_throughs",
        "_joined",
        "_pattern_escalations",
        "_rejected",
        "_sla",
        "_strategies",
        "_strategy_outcomes",
        "_succeeded",
        "_total_duration_ms",
        "_total_errors",
    )

    def __init__(self, percentile_window: int = 10_000) -> None:
        self._durations: collections.deque[float] = collections.deque(maxlen=percentile_window)
        self._error_types: collections.Counter[ErrorType] = collections.Counter()
        self._strategies: collections.Counter[RecoveryStrategyKind] = collections.Counter()
        self._error_components: collections.Counter[tuple[ErrorType, str]] = collections.Counter()
        self._strategy_outcomes: collections.Counter[tuple[RecoveryStrategyKind, bool]] = (
            collections.Counter()
        )
        # SLA class name -> [within, total]
        self._sla: dict[str, list[int]] = {}
        self._total_errors = 0
        self._succeeded = 0
        self._failed = 0
        self._rejected = 0
        self._joined = 0
        self._fall_throughs = 0
        self._escalated_errors = 0
        self._pattern_escalations = 0
        self._total_duration_ms = 0.0

    def record_error(self, error_type: ErrorType, component: str | None = None) -> None:
        """Count one error reported to the manager (by type, and by component when given)."""
        self._total_errors += 1
        self._error_types[error_type] += 1
        if component is not None:
            self._error_components[error_type, component] += 1

    def record_strategy(self, kind: RecoveryStrategyKind, *, success: bool | None = None) -> None:
        """Count one executed strategy (and its outcome when given)."""
        self._strategies[kind] += 1
        if success is not None:
            self._strategy_outcomes[kind, success] += 1

    def record_escalation(self, *, pattern: bool = True) -> None:
        """Count one threshold crossing; ``pattern=False`` is the old spelling of a fall-through."""
        if pattern:
            self._pattern_escalations += 1
        else:
            self._fall_throughs += 1

    def record_escalated_error(self) -> None:
        """Count one error handled at a raised escalation level."""
        self._escalated_errors += 1

    def record_fall_through(self) -> None:
        """Count one step to a later strategy within a recovery."""
        self._fall_throughs += 1

    def record_rejected(self) -> None:
        """Count one recovery turned away by the concurrency limit."""
        self._rejected += 1

    def record_joined(self) -> None:
        """Count one error that joined a running recovery."""
        self._joined += 1

    def record_completed(
        self, *, success: bool, duration_ms: float, sla: str, within_sla: bool
    ) -> None:
        """Count one completed recovery with its duration and SLA result."""
        if success:
            self._succeeded += 1
        else:
            self._failed += 1
        self._durations.append(duration_ms)
        self._total_duration_ms += duration_ms
        counts = self._sla.get(sla)
        if counts is None:
            counts = self._sla[sla] = [0, 0]
        counts[0] += within_sla
        counts[1] += 1

    def snapshot(self, *, running: int, queued: int) -> RecoveryStatistics:
        """A frozen :class:`RecoveryStatistics`; sorts the duration window once."""
        completed = self._succeeded + self._failed
        attempted = completed + self._rejected
        window = sorted(self._durations)
        return RecoveryStatistics(
            total_errors=self._total_errors,
            successful_recoveries=self._succeeded,
            failed_recoveries=self._failed,
            rejected_recoveries=self._rejected,
            joined_recoveries=self._joined,
            success_rate=self._succeeded / attempted if attempted else 0.0,
            average_recovery_time_ms=self._total_duration_ms / completed if completed else 0.0,
            p50_ms=nearest_rank(window, 50),
            p95_ms=nearest_rank(window, 95),
            p99_ms=nearest_rank(window, 99),
            error_type_distribution=types.MappingProxyType(dict(self._error_types)),
            strategy_distribution=types.MappingProxyType(dict(self._strategies)),
            current_recovery_attempts=running,
            queued_recoveries=queued,
            pattern_escalations=self._pattern_escalations,
            escalated_errors=self._escalated_errors,
            fall_throughs=self._fall_throughs,
            sla_compliance=types.MappingProxyType(
                {name: within / total for name, (within, total) in self._sla.items()}
            ),
            error_component_distribution=types.MappingProxyType(dict(self._error_components)),
            strategy_outcomes=types.MappingProxyType(dict(self._strategy_outcomes)),
        )
