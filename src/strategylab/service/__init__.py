"""Strategy Lab's status service (aiohttp): health probes, Prometheus metrics, status, events,
admin actions and the dashboard, served by every node on ``--status-port``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._auth import MIN_ADMIN_TOKEN

if TYPE_CHECKING:
    from ._service import MAX_ADMIN_BODY, MAX_REASON, StatusService
    from ._source import (
        AdminActionError,
        ChaosAgent,
        ClusterKillAgent,  # the cluster kill switch (issue 14)
        NodeSnapshot,
        StatusSource,
    )

__all__ = [
    "MAX_ADMIN_BODY",
    "MAX_REASON",
    "MIN_ADMIN_TOKEN",
    "AdminActionError",
    "ChaosAgent",
    "ClusterKillAgent",
    "NodeSnapshot",
    "StatusService",
    "StatusSource",
]

# Imported on first use (PEP 562): a command line that only checks an admin token against
# MIN_ADMIN_TOKEN does not load aiohttp and Prometheus.
_LAZY = {
    "MAX_ADMIN_BODY": "._service",
    "MAX_REASON": "._service",
    "StatusService": "._service",
    "AdminActionError": "._source",
    "ChaosAgent": "._source",
    "ClusterKillAgent": "._source",
    "NodeSnapshot": "._source",
    "StatusSource": "._source",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
