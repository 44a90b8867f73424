"""Strategy Lab's status service (aiohttp): health probes, Prometheus metrics, status, events,
admin actions and the dashboard, served by every node on ``--status-port``."""

from __future__ import annotations

from ._service import MAX_ADMIN_BODY, MAX_REASON, StatusService
from ._source import AdminActionError, NodeSnapshot, StatusSource

__all__ = [
    "MAX_ADMIN_BODY",
    "MAX_REASON",
    "AdminActionError",
    "NodeSnapshot",
    "StatusService",
    "StatusSource",
]
