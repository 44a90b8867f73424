"""The engine's records: its options (:class:`EngineConfig`), its status snapshot
(:class:`EngineStatus`), and an order it still tracks (:class:`_Live`)."""

from __future__ import annotations

import dataclasses
import math

from strategylab.errors import ConfigurationError
from strategylab.strategy import OrderRequest

from ._reconcile import ReconciliationItem
from ._runner import StrategyStatus

__all__ = ["EngineConfig", "EngineStatus"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Engine options; validated on construction (errors name the option)."""

    max_failures: int = 3
    """Failures within ``failure_window`` after which a strategy is disabled, not restarted."""
    failure_window: float = 60.0
    fill_poll_interval: float = 0.1
    resolve_interval: float = 0.2
    """Seconds between rounds of the resolver while every round reaches the exchange."""
    resolve_max_interval: float = 0.5
    """The longest wait between rounds while the exchange fails (backoff doubles up to it), so an
    ambiguous outcome is resolved within about this long after the API answers again."""
    state_interval: float = 1.0
    """Seconds between saves of state that changed without an order (with an order it is saved
    in the order's own transaction)."""
    close_deadline: float = 5.0
    """Seconds a stop, or the kill switch's cancels, may take."""
    security_hold: float = 60.0
    """Seconds without a forged frame before the security hold may lift (the feed's
    ``violation_window`` by default)."""

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ConfigurationError("max_failures", self.max_failures, "must be >= 1")
        for key in (
            "failure_window",
            "fill_poll_interval",
            "resolve_interval",
            "resolve_max_interval",
            "state_interval",
            "close_deadline",
            "security_hold",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number of seconds > 0")
        if self.resolve_max_interval < self.resolve_interval:
            raise ConfigurationError(
                "resolve_max_interval",
                self.resolve_max_interval,
                f"must be >= resolve_interval ({self.resolve_interval!r})",
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EngineStatus:
    """A frozen snapshot for the demo and the process's status lines."""

    risk_state: str
    risk_reason: str
    positions: dict[str, dict[str, float]]
    open_orders: int
    inflight: int
    orders_sent: int
    orders_filled: int
    orders_rejected: int
    """Refused by the risk engine."""
    orders_refused: int
    """Refused by the exchange (4xx)."""
    ambiguous: int
    """Outcomes that were ambiguous (each then resolved by asking the exchange)."""
    unresolved: int
    """Ambiguous outcomes not yet resolved (the resolver is still asking)."""
    resent: int
    security_violations: int
    """Forged frames seen (each one held trading; see the module docstring)."""
    strategies: tuple[StrategyStatus, ...]
    reconciliation: tuple[ReconciliationItem, ...]
    breaker: dict[str, object] | None = None
    """The order client's circuit breaker: ``state`` and its call counters (``failed_calls``,
    ``rejected_calls``...: :class:`~strategylab.fault_tolerance.BreakerMetrics`)."""

    def to_dict(self) -> dict[str, object]:
        """For JSON."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["strategies"] = [dataclasses.asdict(s) for s in self.strategies]
        data["reconciliation"] = [i.to_dict() for i in self.reconciliation]
        return data


class _Live:
    """An order the engine still tracks (in flight, open, or filled but its fill not yet seen)."""

    __slots__ = ("cancel_requested", "filled", "order_id", "request", "status", "strategy")

    def __init__(self, strategy: str, request: OrderRequest, status: str) -> None:
        self.strategy = strategy
        self.request = request
        self.status = status
        self.order_id: str | None = None
        self.filled = 0.0
        self.cancel_requested = False

    @property
    def remaining_signed(self) -> float:
        if self.status in {"cancelled", "rejected", "void"}:
            return 0.0
        return (self.request.qty - self.filled) * self.request.side.sign
