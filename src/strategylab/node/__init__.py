"""Composition roots: the processes that wire the library together.

:class:`Node` (feed → ingestor → store under an error recovery manager, ``strategylab node``,
run as a process by :func:`run_node_process`) and the trader (:func:`run_engine`: a feed into a
:class:`~strategylab.trading.StrategyEngine`, ``strategylab trade``, run as a process by
:func:`run_trader_process` over a :class:`TraderConfig`). A node runs the operations layer too:
health monitor, supervisor, degradation, kill switch (exit :data:`EXIT_EMERGENCY`, with
``snapshot.json`` and ``UNCLEAN_SHUTDOWN``; the next start resumes from them), config reload and,
with ``status_port`` set, the status service.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._config import NodeConfig
    from ._node import Node
    from ._process import EXIT_EMERGENCY, run_node, run_node_process
    from ._settings import (
        NODE_ENV_PREFIX,
        RELOADABLE_KEYS,
        RESTART_KEYS,
        NodeReloader,
        load_node_config,
    )
    from ._shedding import NodeDegradation, build_degradation, node_features
    from ._trader import TraderConfig, load_factory, run_engine, run_trader_process

# Imported on first use (PEP 562): `strategylab node` never loads the trading stack, and
# `strategylab trade` never loads the node's operations layer.
_LAZY = {
    "NodeConfig": "._config",
    "Node": "._node",
    "EXIT_EMERGENCY": "._process",
    "run_node": "._process",
    "run_node_process": "._process",
    "NODE_ENV_PREFIX": "._settings",
    "RELOADABLE_KEYS": "._settings",
    "RESTART_KEYS": "._settings",
    "NodeReloader": "._settings",
    "load_node_config": "._settings",
    "NodeDegradation": "._shedding",
    "build_degradation": "._shedding",
    "node_features": "._shedding",
    "TraderConfig": "._trader",
    "load_factory": "._trader",
    "run_engine": "._trader",
    "run_trader_process": "._trader",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EXIT_EMERGENCY",
    "NODE_ENV_PREFIX",
    "RELOADABLE_KEYS",
    "RESTART_KEYS",
    "Node",
    "NodeConfig",
    "NodeDegradation",
    "NodeReloader",
    "TraderConfig",
    "build_degradation",
    "load_factory",
    "load_node_config",
    "node_features",
    "run_engine",
    "run_node",
    "run_node_process",
    "run_trader_process",
]
