"""``GET /status``: one :class:`NodeSnapshot` (and the recent audit entries) as a JSON body.

The body is a JSON object (every key always present; ``null`` for a part the node does not run):

``node`` (str), ``uptime`` (s), ``time`` (the service clock's wall time, s since the epoch),
``components``
    ``[{"name", "state", "checks": [check names]}]``: each monitored component with the worst
    state of its health checks (``healthy`` / ``degraded`` / ``unhealthy``, ``null`` before the
    first verdict);
``health``
    :meth:`HealthSnapshot.to_dict` (``liveness``, ``readiness``, ``checks`` with ``state``,
    ``last_reason``, ``since``, ...) or ``null``;
``breakers``
    ``{name: {"state": "closed" | "open" | "half_open" | "forced_open" | "forced_closed" |
    "disabled", "failure_rate", "slow_call_rate", "consecutive_failures", ... }}`` (the fields of
    :class:`BreakerMetrics`; rates are percentages or -1.0);
``active_recoveries``
    ``[{"error_id", "error_type", "component", "strategy", "started_at", "attempt",
    "elapsed"}]`` (``elapsed``: seconds on the service clock since ``started_at``, which is the
    manager's monotonic clock: the node gives both the same clock);
``statistics``
    the fields of :class:`RecoveryStatistics` (``total_errors``, ``success_rate`` in 0..1,
    ``p50_ms``/``p95_ms``/``p99_ms``, ``error_type_distribution`` keyed by error type value, ...);
``degradation``
    :meth:`DegradationSnapshot.to_dict` (``level``, ``max_level``, ``shed``, ``features``,
    ``triggers``, ``history``) or ``null``;
``supervisor``
    the fields of :class:`SupervisorSnapshot` (``state``, ``children``, ``restarts_total``,
    ``history``, ...) or ``null``;
``risk_state`` (str or ``null``),
``store``
    ``{"state": "primary" | "spooling" | "draining", "spool_pending": int}``;
``ingest``
    the fields of :class:`IngestStatistics` plus ``ticks_per_s``, or ``null``;
``ticks_per_s`` (acknowledged ticks per second, also without an ingestor),
``feed``
    the fields of :class:`FeedStatistics` or ``null``;
``last_price`` (``{symbol: price}``), ``kill_switch`` (the kill report or ``null``),
``audit`` (the last 20 audit records, oldest first: ``{"seq", "timestamp", "kind", "data", ...}``),
``chart``
    ``{"enabled": bool, "state": "on" | "shed"}`` (the live price chart, a degradable feature);
``events``
    ``{"clients": int, "dropped_clients": int}`` (server-sent-event clients now, and dropped
    for being too slow since start);
``extra`` (whatever else the node put on its snapshot; the dashboard reads ``resumed``,
``config`` and ``trader``: with the supervisor's child ``trader``, its panel).

Enums are given by value, UUIDs as strings, mappings with string keys, non-finite floats as
``null`` (JSON has no NaN).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from strategylab.fault_tolerance import HealthSnapshot

from ._source import NodeSnapshot

__all__ = ["AUDIT_LIMIT", "jsonable", "status_body"]

AUDIT_LIMIT = 20
"""How many recent audit records ``/status`` carries."""

_RANK = {None: -1, "healthy": 0, "degraded": 1, "unhealthy": 2}


def jsonable(value: object) -> Any:  # noqa: PLR0911 - one return per kind of value
    """``value`` as plain JSON types: dataclasses by field, enums by value, UUIDs and other
    keys as strings, tuples as lists, non-finite floats as None."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Sequence | set | frozenset):
        return [jsonable(item) for item in value]
    return str(value)


def _key(key: object) -> str:
    """A mapping key as a string: an enum by value, a tuple key as its parts joined by ``/``
    (``("network_timeout", "feed")`` -> ``"network_timeout/feed"``), a bool as ``true`` or
    ``false``."""
    if isinstance(key, enum.Enum):
        return str(key.value)
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, tuple):
        return "/".join(_key(part) for part in key)
    return key if isinstance(key, str) else str(key)


def _components(health: HealthSnapshot | None) -> list[dict[str, Any]]:
    if health is None:
        return []
    out: dict[str, dict[str, Any]] = {}
    for check in health.checks:
        state = None if check.state is None else check.state.value
        entry = out.setdefault(check.component, {"name": check.component, "state": state})
        entry.setdefault("checks", []).append(check.name)
        if _RANK[state] > _RANK[entry["state"]]:
            entry["state"] = state
    return list(out.values())


def status_body(
    snapshot: NodeSnapshot,
    audit: Sequence[Mapping[str, Any]],
    *,
    now: float,
    wall: float,
    chart_enabled: bool,
    clients: int,
    dropped_clients: int,
) -> dict[str, Any]:
    """The ``GET /status`` body (see the module docstring) from one snapshot; ``now`` is the
    service clock's monotonic reading (for ``elapsed``), ``wall`` its wall time."""
    ingest = None
    if snapshot.ingest is not None:
        ingest = jsonable(snapshot.ingest)
        ingest["ticks_per_s"] = jsonable(snapshot.ticks_per_s)
    active = []
    for recovery in snapshot.active_recoveries:
        entry = jsonable(recovery)
        entry["elapsed"] = max(0.0, now - recovery.started_at)
        active.append(entry)
    return {
        "node": snapshot.node,
        "uptime": jsonable(snapshot.uptime),
        "time": wall,
        "components": _components(snapshot.health),
        "health": None if snapshot.health is None else jsonable(snapshot.health.to_dict()),
        "breakers": jsonable(snapshot.breakers),
        "active_recoveries": active,
        "statistics": jsonable(snapshot.recovery),
        "degradation": (
            None if snapshot.degradation is None else jsonable(snapshot.degradation.to_dict())
        ),
        "supervisor": jsonable(snapshot.supervisor),
        "risk_state": snapshot.risk_state,
        "store": {"state": snapshot.store_state, "spool_pending": snapshot.spool_pending},
        "ingest": ingest,
        "ticks_per_s": jsonable(snapshot.ticks_per_s),
        "feed": jsonable(snapshot.feed),
        "last_price": jsonable(snapshot.last_price),
        "kill_switch": jsonable(snapshot.kill_switch),
        "audit": [jsonable(record) for record in audit],
        "chart": {"enabled": chart_enabled, "state": "on" if chart_enabled else "shed"},
        "events": {"clients": clients, "dropped_clients": dropped_clients},
        "extra": jsonable(snapshot.extra),
    }
