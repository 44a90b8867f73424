"""What the status service reads and steers: the :class:`StatusSource` protocol and the frozen
:class:`NodeSnapshot` it returns.

The service (``strategylab.service``) sits above ``market`` and ``fault_tolerance`` and below
``node``: it never imports the node. The node implements :class:`StatusSource`; tests may
implement it over real library components. Every figure the service shows or exports comes from
one :class:`NodeSnapshot`, taken at request (scrape) time; the core never imports Prometheus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import (
    ActiveRecovery,
    BreakerMetrics,
    DegradationSnapshot,
    HealthSnapshot,
    ProbeResult,
    RecoveryStatistics,
    SupervisorSnapshot,
)
from strategylab.market import FeedStatistics, IngestStatistics

__all__ = ["AdminActionError", "ChaosAgent", "NodeSnapshot", "StatusSource"]


class AdminActionError(StrategyLabError):
    """An admin action the source refuses: ``status`` is the HTTP status to answer (404 for an
    unknown breaker or feature, 409 for an action that cannot run now, 400 for a bad value), and
    the message names what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeSnapshot:
    """A node at one moment: every component's frozen statistics snapshot.

    ``None`` for a part the node does not run (no feed in a test, no degradation controller).
    """

    node: str
    """The node's name (shown on the dashboard, the ``node`` label in metrics)."""
    uptime: float
    """Seconds since the node started."""
    recovery: RecoveryStatistics
    active_recoveries: tuple[ActiveRecovery, ...]
    breakers: Mapping[str, BreakerMetrics]
    """Every circuit breaker by name."""
    health: HealthSnapshot | None
    degradation: DegradationSnapshot | None
    supervisor: SupervisorSnapshot | None
    ingest: IngestStatistics | None
    feed: FeedStatistics | None
    ticks_per_s: float
    """Acknowledged ticks per second over the last few seconds (ticks/s)."""
    last_price: Mapping[str, float]
    """The last acknowledged price per symbol (the live price chart's source)."""
    risk_state: str | None
    """The risk engine's state (``ACTIVE``, ``HALTED``, ...), None without a strategy engine."""
    store_state: str
    """``primary``, ``spooling`` or ``draining`` (the tick store's failover group)."""
    spool_pending: int
    """Ticks in the spool waiting to be drained into the store."""
    kill_switch: Mapping[str, Any] | None
    """The kill report's ``to_dict()`` once the kill switch was pulled, else None."""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Anything else JSON-ready the node wants on ``/status`` (resumed-from snapshot, config)."""


class StatusSource(Protocol):
    """The node as the status service sees it. Reads are synchronous and cheap (snapshots);
    actions are coroutines that raise :class:`AdminActionError` to refuse."""

    def snapshot(self) -> NodeSnapshot:
        """Every component's statistics now."""
        ...

    def liveness(self) -> ProbeResult:
        """The liveness aggregate (``GET /health/live``: 200 when ``ok``, else 503)."""
        ...

    def readiness(self) -> ProbeResult:
        """The readiness aggregate (``GET /health/ready``: 200 when ``ok``, else 503)."""
        ...

    def recent_audit(self, limit: int) -> list[Mapping[str, Any]]:
        """The last ``limit`` audit records as JSON-ready dicts, oldest first."""
        ...

    async def kill(self, reason: str) -> Mapping[str, Any]:
        """Pull the kill switch (source ``http``); returns at once with what was accepted (the
        process exits afterwards)."""
        ...

    async def force_breaker(self, name: str, state: str) -> Mapping[str, Any]:
        """Force breaker ``name`` to ``state`` (``open``, ``closed`` or ``reset``)."""
        ...

    async def shed(self, feature: str) -> Mapping[str, Any]:
        """Shed degradable feature ``feature`` now (recorded like any other shed)."""
        ...

    async def restore(self, feature: str) -> Mapping[str, Any]:
        """Restore degradable feature ``feature`` now."""
        ...

    async def reload_config(self) -> Mapping[str, Any]:
        """Reload the configuration file; the result says whether it was accepted and why not."""
        ...


class ChaosAgent(Protocol):
    """The node's opt-in chaos agent (``strategylab node --chaos-agent``): faults that only the
    node's own process can carry, steered through the admin routes. Off by default; the status
    service answers 404 to its routes when none is given."""

    async def set_ballast(self, nbytes: int) -> Mapping[str, Any]:
        """Hold ``nbytes`` of real, touched memory in the node's process (0 releases it all);
        returns ``{"ballast_bytes", "rss_bytes", "memory_budget"}`` after the change."""
        ...


class ClusterKillAgent(Protocol):
    """The node's cluster kill switch (``strategylab node --cluster NAME --redis URL``), behind
    ``POST /admin/cluster-kill`` and ``POST /admin/cluster-kill/clear`` (issue 14); the status
    service answers 404 to those routes when none is given. Each raises
    :class:`AdminActionError` to refuse (Redis unreachable: 502; nothing to clear: 409)."""

    async def cluster_kill(self, reason: str) -> Mapping[str, Any]:
        """Pull the cluster's kill switch, signed with the node's admin token."""
        ...

    async def cluster_clear(self) -> Mapping[str, Any]:
        """Clear the cluster's kill in force (the node's admin token must be the one that
        pulled it)."""
        ...
