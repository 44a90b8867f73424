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

__all__: list[str] = []
# Each module's public names are appended below, one block per module.
