"""Strategy Lab's reference market pipeline.

An exchange simulator (WebSocket market data, HTTP order API, protocol faults), a resilient feed,
an ingestor with backpressure, tick stores (SQLite by default, PostgreSQL, a durable spool and a
failover store that drains it back), a node that wires them to an ErrorRecoveryManager, and the
trading path: a strategy engine behind a risk engine, an order client that resolves ambiguous
outcomes, a backtest engine with a vectorised twin, and an optimiser over worker processes.
"""

from __future__ import annotations

from ._backtest import (
    BacktestConfig,
    BacktestEngine,
    BacktestError,
    BacktestStatistics,
)
from ._backtest_result import (
    BacktestResult,
)
from ._backtest_spec import (
    BacktestSpec,
    run_backtest,
)
from ._builtin_strategies import (
    MeanReversion,
    MovingAverageCrossover,
)
from ._engine import (
    EngineConfig,
    EngineStatus,
    StrategyEngine,
    run_engine,
)
from ._engine_reconcile import (
    ReconciliationItem,
)
from ._engine_runner import (
    StrategyFailingError,
    StrategyStatus,
)
from ._exchange import (
    Exchange,
    ExchangeConfig,
    run_exchange,
)
from ._failover_store import (
    FailoverState,
    FailoverStatistics,
    FailoverStore,
)
from ._feed import (
    AcknowledgingSink,
    Feed,
    FeedConfig,
    FeedDisconnectedError,
    FeedError,
    FeedStatistics,
    InvalidTickError,
    ReplayTimeoutError,
    StaleFeedError,
    TickRangeLostError,
    TickSink,
    UnknownSymbolsError,
)
from ._ingest import (
    Ingestor,
    IngestorClosedError,
    IngestorConfig,
    IngestStatistics,
)
from ._ledger import (
    AckLog,
    EmittedLog,
    read_acks,
    read_emitted,
)
from ._node import (
    Node,
    NodeConfig,
    run_node,
)
from ._optimizer import (
    JobResult,
    JobStatus,
    OptimizationReport,
    Optimizer,
    grid,
    random_search,
    rank,
)
from ._orders import (
    AmbiguousOrderError,
    ExchangeUnavailableError,
    OrderApiError,
    OrderClient,
    OrderRefusedError,
    RateLimitedError,
)
from ._pg_store import (
    PostgresTickStore,
)
from ._protocol import (
    Frame,
    FrameError,
    Heartbeat,
    ReplayDone,
    ReplayRequest,
    SignatureError,
    Subscribe,
    decode_frame,
    decode_ticks,
    encode_frame,
    encode_ticks,
)
from ._risk import (
    RiskEngine,
    RiskLimit,
    RiskLimits,
    RiskRejectedError,
    RiskRejection,
    RiskState,
)
from ._spool import (
    SpoolStatistics,
    SpoolStore,
)
from ._sqlite_store import (
    SQLiteTickStore,
    raw_insert_rate,
)
from ._store import (
    QuarantinedTick,
    StoreCorruptedError,
    TickStore,
)
from ._strategy import (
    Fill,
    OrderRequest,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
)
from ._tick import (
    Tick,
    validate_tick,
)

__all__ = [
    "AckLog",
    "AcknowledgingSink",
    "AmbiguousOrderError",
    "BacktestConfig",
    "BacktestEngine",
    "BacktestError",
    "BacktestResult",
    "BacktestSpec",
    "BacktestStatistics",
    "EmittedLog",
    "EngineConfig",
    "EngineStatus",
    "Exchange",
    "ExchangeConfig",
    "ExchangeUnavailableError",
    "FailoverState",
    "FailoverStatistics",
    "FailoverStore",
    "Feed",
    "FeedConfig",
    "FeedDisconnectedError",
    "FeedError",
    "FeedStatistics",
    "Fill",
    "Frame",
    "FrameError",
    "Heartbeat",
    "IngestStatistics",
    "Ingestor",
    "IngestorClosedError",
    "IngestorConfig",
    "InvalidTickError",
    "JobResult",
    "JobStatus",
    "MeanReversion",
    "MovingAverageCrossover",
    "Node",
    "NodeConfig",
    "OptimizationReport",
    "Optimizer",
    "OrderApiError",
    "OrderClient",
    "OrderRefusedError",
    "OrderRequest",
    "OrderType",
    "PostgresTickStore",
    "QuarantinedTick",
    "RateLimitedError",
    "ReconciliationItem",
    "ReplayDone",
    "ReplayRequest",
    "ReplayTimeoutError",
    "RiskEngine",
    "RiskLimit",
    "RiskLimits",
    "RiskRejectedError",
    "RiskRejection",
    "RiskState",
    "SQLiteTickStore",
    "Side",
    "SignatureError",
    "SpoolStatistics",
    "SpoolStore",
    "StaleFeedError",
    "StoreCorruptedError",
    "Strategy",
    "StrategyContext",
    "StrategyEngine",
    "StrategyFailingError",
    "StrategyStatus",
    "Subscribe",
    "Tick",
    "TickRangeLostError",
    "TickSink",
    "TickStore",
    "UnknownSymbolsError",
    "decode_frame",
    "decode_ticks",
    "encode_frame",
    "encode_ticks",
    "grid",
    "random_search",
    "rank",
    "raw_insert_rate",
    "read_acks",
    "read_emitted",
    "run_backtest",
    "run_engine",
    "run_exchange",
    "run_node",
    "validate_tick",
]
