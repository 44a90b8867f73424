"""The exchange simulator, a peer of the client side: market data over WebSocket (generation,
pub/sub, replay), an HTTP order API over an order book, and admin-injected protocol faults.

Imported by tests, benchmarks, the demo and the chaos lab; never by ``market``, ``strategy``,
``trading`` or ``research`` (the wire types both sides share live in :mod:`strategylab.market`).
"""

from __future__ import annotations

from ._book import (
    CancelTooLateError,
    OrderBook,
    OrderRequestError,
    OrderStateError,
)
from ._config import (
    ExchangeConfig,
)
from ._faults import (
    FaultBoard,
    FaultKind,
    FaultRequestError,
)
from ._gen import (
    TickGenerator,
)
from ._process import (
    run_exchange,
    run_exchange_process,
)
from ._server import (
    Exchange,
)

__all__ = [
    "CancelTooLateError",
    "Exchange",
    "ExchangeConfig",
    "FaultBoard",
    "FaultKind",
    "FaultRequestError",
    "OrderBook",
    "OrderRequestError",
    "OrderStateError",
    "TickGenerator",
    "run_exchange",
    "run_exchange_process",
]
