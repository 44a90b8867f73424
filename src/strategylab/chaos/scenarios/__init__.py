"""The ten built-in categories of the chaos lab (DESIGN §6), by id.

:data:`SCENARIOS` maps a category id to its :class:`~strategylab.chaos.Scenario` class; adding a
category is one import and one line in the mapping.
"""

from __future__ import annotations

from typing import Final

from strategylab.chaos._scenario import Scenario

from ._c01_basic import BasicErrorRecovery
from ._c02_cascade import CascadingFailure
from ._c03_partition import NetworkPartition
from ._c04_database import DatabaseFailover
from ._c05_memory import MemoryPressure
from ._c06_breaker import CircuitBreakerScenario
from ._c07_degradation import GracefulDegradation
from ._c08_integrity import DataIntegrity
from ._c09_sla import RecoverySla
from ._c10_shutdown import EmergencyShutdownScenario
from ._cluster import ClusterFailover  # `strategylab lab --cluster N` (issue 14), not in SCENARIOS

__all__ = [
    "SCENARIOS",
    "BasicErrorRecovery",
    "CascadingFailure",
    "CircuitBreakerScenario",
    "ClusterFailover",
    "DataIntegrity",
    "DatabaseFailover",
    "EmergencyShutdownScenario",
    "GracefulDegradation",
    "MemoryPressure",
    "NetworkPartition",
    "RecoverySla",
    "scenarios_for",
]

SCENARIOS: Final[dict[int, type[Scenario]]] = {
    1: BasicErrorRecovery,
    2: CascadingFailure,
    3: NetworkPartition,
    4: DatabaseFailover,
    5: MemoryPressure,
    6: CircuitBreakerScenario,
    7: GracefulDegradation,
    8: DataIntegrity,
    9: RecoverySla,
    10: EmergencyShutdownScenario,
}
"""Category id -> scenario class, in id order."""


def scenarios_for(ids: tuple[int, ...]) -> list[Scenario]:
    """One scenario object per id in ``ids``, in that order. Raises :class:`ValueError` naming
    an id that is not a known category."""
    unknown = [i for i in ids if i not in SCENARIOS]
    if unknown:
        known = ", ".join(str(i) for i in sorted(SCENARIOS))
        raise ValueError(f"categories {unknown}: not a category of this lab (known: {known})")
    return [SCENARIOS[i]() for i in ids]
