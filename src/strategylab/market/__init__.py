"""Strategy Lab's reference market pipeline.

An exchange simulator (WebSocket market data, HTTP order API, protocol faults), a resilient feed,
an ingestor with backpressure, tick stores (SQLite by default, PostgreSQL, a durable spool and a
failover store that drains it back), and a node that wires them to an ErrorRecoveryManager.
"""

from __future__ import annotations

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
    TickStore,
)
from ._tick import (
    Tick,
    validate_tick,
)

__all__ = [
    "AckLog",
    "EmittedLog",
    "Exchange",
    "ExchangeConfig",
    "FailoverState",
    "FailoverStatistics",
    "FailoverStore",
    "Feed",
    "FeedConfig",
    "FeedDisconnectedError",
    "FeedError",
    "FeedStatistics",
    "Frame",
    "FrameError",
    "Heartbeat",
    "IngestStatistics",
    "Ingestor",
    "IngestorClosedError",
    "IngestorConfig",
    "InvalidTickError",
    "Node",
    "NodeConfig",
    "PostgresTickStore",
    "QuarantinedTick",
    "ReplayDone",
    "ReplayRequest",
    "ReplayTimeoutError",
    "SQLiteTickStore",
    "SignatureError",
    "SpoolStatistics",
    "SpoolStore",
    "StaleFeedError",
    "Subscribe",
    "Tick",
    "TickRangeLostError",
    "TickSink",
    "TickStore",
    "decode_frame",
    "decode_ticks",
    "encode_frame",
    "encode_ticks",
    "raw_insert_rate",
    "read_acks",
    "read_emitted",
    "run_exchange",
    "run_node",
    "validate_tick",
]
