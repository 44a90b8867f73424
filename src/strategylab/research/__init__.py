"""Research on stored ticks: the event-driven backtest engine, its vectorised twin, the columnar
read path, an optimiser that runs backtests over worker processes, and the export of a result's
trades and equity curve (CSV, Parquet, a PNG plot).
"""

from __future__ import annotations

from ._backtest import (
    BacktestConfig,
    BacktestEngine,
    BacktestError,
    BacktestStatistics,
)
from ._export import (
    write_equity,
    write_plot,
    write_trades,
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
    build_strategy,
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
    "build_strategy",
    "grid",
    "random_search",
    "rank",
    "run_backtest",
    "scoped_backtest_spec",
    "write_equity",
    "write_plot",
    "write_trades",
]
