"""Research on stored ticks: the event-driven backtest engine, its vectorised twin, the columnar
read path, and an optimiser that runs backtests over worker processes.
"""

from __future__ import annotations

from ._backtest import (
    BacktestConfig,
    BacktestEngine,
    BacktestError,
    BacktestStatistics,
)
from ._optimizer import (
    BACKTEST_METRICS,
    JobResult,
    JobStatus,
    OptimizationReport,
    Optimizer,
    ParamValue,
    WorkerStartError,
    backtest_metrics,
    grid,
    random_search,
    rank,
    scoped_backtest_spec,
)
from ._result import (
    BacktestResult,
)
from ._spec import (
    BacktestSpec,
    run_backtest,
)

__all__ = [
    "BACKTEST_METRICS",
    "BacktestConfig",
    "BacktestEngine",
    "BacktestError",
    "BacktestResult",
    "BacktestSpec",
    "BacktestStatistics",
    "JobResult",
    "JobStatus",
    "OptimizationReport",
    "Optimizer",
    "ParamValue",
    "WorkerStartError",
    "backtest_metrics",
    "grid",
    "random_search",
    "rank",
    "run_backtest",
    "scoped_backtest_spec",
]
