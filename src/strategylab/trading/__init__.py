"""Live trading: a strategy engine behind a risk engine, an order client that resolves ambiguous
outcomes, durable positions and orders, reconciliation at start, and the security hold and kill
switch that forged market data pulls. The process entry point is :mod:`strategylab.node`.
"""

from __future__ import annotations

from ._engine import (
    EXIT_KILL_SWITCH,
    EngineConfig,
    EngineStatus,
    StrategyEngine,
)
from ._orders import (
    AmbiguousOrderError,
    ExchangeUnavailableError,
    OrderApiError,
    OrderClient,
    OrderRefusedError,
    RateLimitedError,
)
from ._positions import PositionStore
from ._reconcile import (
    ReconciliationItem,
)
from ._risk import (
    RiskEngine,
    RiskLimit,
    RiskLimits,
    RiskRejectedError,
    RiskRejection,
    RiskState,
)
from ._runner import (
    EnginePort,
    StrategyFactory,
    StrategyFailingError,
    StrategyStatus,
)
from ._security import SECURITY_HOLD, SecurityGuard

__all__ = [
    "EXIT_KILL_SWITCH",
    "SECURITY_HOLD",
    "AmbiguousOrderError",
    "EngineConfig",
    "EnginePort",
    "EngineStatus",
    "ExchangeUnavailableError",
    "OrderApiError",
    "OrderClient",
    "OrderRefusedError",
    "PositionStore",
    "RateLimitedError",
    "ReconciliationItem",
    "RiskEngine",
    "RiskLimit",
    "RiskLimits",
    "RiskRejectedError",
    "RiskRejection",
    "RiskState",
    "SecurityGuard",
    "StrategyEngine",
    "StrategyFactory",
    "StrategyFailingError",
    "StrategyStatus",
]
