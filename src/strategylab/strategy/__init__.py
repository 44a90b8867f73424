"""The strategy API shared by live trading and research.

:class:`Strategy` and its context, the orders it decides (:class:`OrderRequest`, :class:`Side`,
:class:`OrderType`), the fills it is told about, and the built-in strategies
(:class:`MovingAverageCrossover`, :class:`MeanReversion`) that ``backtest``, ``optimize`` and
``trade`` name the same way.
"""

from __future__ import annotations

from ._builtin import (
    BUILTIN_STRATEGIES,
    MeanReversion,
    MovingAverageCrossover,
    make_strategy,
)
from ._strategy import (
    Fill,
    JSONValue,
    OrderRequest,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
)

__all__ = [
    "BUILTIN_STRATEGIES",
    "Fill",
    "JSONValue",
    "MeanReversion",
    "MovingAverageCrossover",
    "OrderRequest",
    "OrderType",
    "Side",
    "Strategy",
    "StrategyContext",
    "make_strategy",
]
