"""Composition roots: the processes that wire the library together.

:class:`Node` (feed → ingestor → store under an error recovery manager,
``strategylab node``) and the trader (:func:`run_engine`: a feed into a
:class:`~strategylab.trading.StrategyEngine`, ``strategylab trade``).
"""

from __future__ import annotations

from ._node import (
    Node,
    NodeConfig,
    run_node,
)
from ._trader import load_factory, run_engine

__all__ = [
    "Node",
    "NodeConfig",
    "load_factory",
    "run_engine",
    "run_node",
]
