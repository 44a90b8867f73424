"""Beyond one machine (DESIGN §9): the fault-tolerance state several nodes must share, kept in
existing engines rather than a home-made one.

- Shared circuit-breaker state on Redis (:mod:`._redis_breaker`): a breaker given a
  :class:`RedisBreakerBackend` sees the transitions of every process's breaker of that name.
- The cluster kill switch on Redis (:mod:`._kill`): a durable key plus a pub/sub notice halts
  every node of a cluster, including those down at the time or started later.
- Symbol leases with fencing tokens on PostgreSQL (:mod:`._leases`): sharded ingest with node
  failover; the store rejects the writes of a node that lost its lease.

Layer: imported by ``node`` and the CLI; imports ``market``, ``fault_tolerance``, ``errors`` and
``clock``, never ``chaos`` or ``service`` (its siblings).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._kill import (
        MEMBER_TTL_POLLS,
        ClusterKillAck,
        ClusterKillError,
        ClusterKillRecord,
        ClusterKillState,
        ClusterKillSwitch,
        ClusterKillWatcher,
        check_redis_url,
        clear_mac,
        cluster_kill_keys,
    )
    from ._leases import (
        LeaseConfig,
        LeasePlan,
        LeaseStatistics,
        SymbolLeases,
        SymbolSetMismatchError,
        member_id,
        symbols_hash,
    )
    from ._redis_breaker import (
        RedisBreakerBackend,
        RedisBreakerMetrics,
        SharedStateLostError,
        SharedStateUnavailableError,
        breaker_keys,
    )

# Imported on first use (PEP 562): a process that needs only the kill switch or the breaker
# backend does not pay for psycopg, nor one that needs only the leases for redis.
_WHERE = {
    "ClusterKillAck": "_kill",
    "ClusterKillError": "_kill",
    "ClusterKillRecord": "_kill",
    "ClusterKillState": "_kill",
    "ClusterKillSwitch": "_kill",
    "ClusterKillWatcher": "_kill",
    "MEMBER_TTL_POLLS": "_kill",
    "check_redis_url": "_kill",
    "clear_mac": "_kill",
    "cluster_kill_keys": "_kill",
    "LeaseConfig": "_leases",
    "LeasePlan": "_leases",
    "LeaseStatistics": "_leases",
    "SymbolLeases": "_leases",
    "SymbolSetMismatchError": "_leases",
    "member_id": "_leases",
    "symbols_hash": "_leases",
    "RedisBreakerBackend": "_redis_breaker",
    "RedisBreakerMetrics": "_redis_breaker",
    "SharedStateLostError": "_redis_breaker",
    "SharedStateUnavailableError": "_redis_breaker",
    "breaker_keys": "_redis_breaker",
}

__all__ = [
    "MEMBER_TTL_POLLS",
    "ClusterKillAck",
    "ClusterKillError",
    "ClusterKillRecord",
    "ClusterKillState",
    "ClusterKillSwitch",
    "ClusterKillWatcher",
    "LeaseConfig",
    "LeasePlan",
    "LeaseStatistics",
    "RedisBreakerBackend",
    "RedisBreakerMetrics",
    "SharedStateLostError",
    "SharedStateUnavailableError",
    "SymbolLeases",
    "SymbolSetMismatchError",
    "breaker_keys",
    "check_redis_url",
    "clear_mac",
    "cluster_kill_keys",
    "member_id",
    "symbols_hash",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
