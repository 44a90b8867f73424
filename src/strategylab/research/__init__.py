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
from ._columnar import (
    ColumnarStatistics,
    ColumnarSync,
    ColumnarUnavailableError,
    columnar_statistics,
    load_research_arrays,
    read_columnar,
    snapshot_directory,
    sync_columnar,
)
from ._export import (
    write_equity,
    write_plot,
    write_trades,
)
from ._frame import (
    ColumnMap,
    TickDataError,
    backtest_frame,
    frame_ticks,
)
from ._import import (
    ImportFailedError,
    ImportProgress,
    ImportReport,
    import_ticks,
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
    share_backtest_read,
    shared_backtest_read,
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
    "ColumnMap",
    "ColumnarStatistics",
    "ColumnarSync",
    "ColumnarUnavailableError",
    "ImportFailedError",
    "ImportProgress",
    "ImportReport",
    "JobResult",
    "JobStatus",
    "OptimizationReport",
    "Optimizer",
    "ParamValue",
    "TickDataError",
    "WorkerStartError",
    "backtest_frame",
    "backtest_metrics",
    "build_strategy",
    "columnar_statistics",
    "frame_ticks",
    "grid",
    "import_ticks",
    "load_research_arrays",
    "random_search",
    "rank",
    "read_columnar",
    "run_backtest",
    "scoped_backtest_spec",
    "share_backtest_read",
    "shared_backtest_read",
    "snapshot_directory",
    "sync_columnar",
    "write_equity",
    "write_plot",
    "write_trades",
]
