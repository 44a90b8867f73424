"""The error taxonomy: what went wrong, how bad it is, and who notices."""

from __future__ import annotations

import enum
from typing import Self

__all__ = ["DEFAULT_SEVERITY", "ErrorSeverity", "ErrorType", "RecoveryStrategyKind", "UserImpact"]


class ErrorType(enum.Enum):
    """The fourteen kinds of failure Strategy Lab recognises (DESIGN §4)."""

    DATA_INGESTION_FAILURE = "data_ingestion_failure"
    DATABASE_CONNECTION_LOST = "database_connection_lost"
    WEBSOCKET_CONNECTION_DROPPED = "websocket_connection_dropped"
    MEMORY_EXHAUSTION = "memory_exhaustion"
    DISK_SPACE_EXHAUSTED = "disk_space_exhausted"
    NETWORK_TIMEOUT = "network_timeout"
    STRATEGY_EXECUTION_ERROR = "strategy_execution_error"
    BACKTEST_ENGINE_FAILURE = "backtest_engine_failure"
    OPTIMIZATION_TIMEOUT = "optimization_timeout"
    INVALID_MARKET_DATA = "invalid_market_data"
    SYSTEM_OVERLOAD = "system_overload"
    EXTERNAL_API_FAILURE = "external_api_failure"
    CONFIGURATION_ERROR = "configuration_error"
    SECURITY_VIOLATION = "security_violation"


_SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


class ErrorSeverity(enum.Enum):
    """How bad an error is; ordered so that ``CRITICAL > HIGH > MEDIUM > LOW > INFO``."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for INFO up to 4 for CRITICAL."""
        return _SEVERITY_RANK[self.value]

    def raised(self, steps: int = 1) -> ErrorSeverity:
        """This severity raised by ``steps``, saturating at CRITICAL."""
        return _BY_RANK[min(self.rank + steps, 4)]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ErrorSeverity):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, ErrorSeverity):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, ErrorSeverity):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, ErrorSeverity):
            return NotImplemented
        return self.rank >= other.rank

    @classmethod
    def parse(cls, value: str) -> Self:
        """The severity named ``value`` (case-insensitive); ``ValueError`` names a bad one."""
        try:
            return cls(value.lower())
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"severity={value!r}: expected one of {allowed}") from None


_BY_RANK = {s.rank: s for s in ErrorSeverity}


class UserImpact(enum.Enum):
    """What a user of the system notices while the error lasts."""

    NONE = "none"
    """Invisible: absorbed by a retry or a cache."""
    DEGRADED = "degraded"
    """Works, slower or with non-essential features shed."""
    PARTIAL_OUTAGE = "partial_outage"
    """One feature or one strategy is unavailable."""
    FULL_OUTAGE = "full_outage"
    """Trading or ingestion has stopped."""
    DATA_AT_RISK = "data_at_risk"
    """Acknowledged data may be lost or wrong unless recovery succeeds."""

    @classmethod
    def for_severity(cls, severity: ErrorSeverity) -> UserImpact:
        """The impact assumed for a severity when the reporter does not say."""
        return _IMPACT_BY_SEVERITY[severity]


_IMPACT_BY_SEVERITY = {
    ErrorSeverity.INFO: UserImpact.NONE,
    ErrorSeverity.LOW: UserImpact.NONE,
    ErrorSeverity.MEDIUM: UserImpact.DEGRADED,
    ErrorSeverity.HIGH: UserImpact.PARTIAL_OUTAGE,
    ErrorSeverity.CRITICAL: UserImpact.FULL_OUTAGE,
}


class RecoveryStrategyKind(enum.Enum):
    """The eight recovery strategies (DESIGN §4)."""

    RETRY = "retry"
    FAILOVER = "failover"
    GRACEFUL_DEGRADATION = "graceful_degradation"
    COMPONENT_RESTART = "component_restart"
    RESOURCE_SCALING = "resource_scaling"
    CIRCUIT_BREAKER = "circuit_breaker"
    EMERGENCY_SHUTDOWN = "emergency_shutdown"
    CACHE_CLEAR_RELOAD = "cache_clear_reload"


DEFAULT_SEVERITY: dict[ErrorType, ErrorSeverity] = {
    ErrorType.DATA_INGESTION_FAILURE: ErrorSeverity.HIGH,
    ErrorType.DATABASE_CONNECTION_LOST: ErrorSeverity.HIGH,
    ErrorType.WEBSOCKET_CONNECTION_DROPPED: ErrorSeverity.HIGH,
    ErrorType.MEMORY_EXHAUSTION: ErrorSeverity.CRITICAL,
    ErrorType.DISK_SPACE_EXHAUSTED: ErrorSeverity.CRITICAL,
    ErrorType.NETWORK_TIMEOUT: ErrorSeverity.MEDIUM,
    ErrorType.STRATEGY_EXECUTION_ERROR: ErrorSeverity.HIGH,
    ErrorType.BACKTEST_ENGINE_FAILURE: ErrorSeverity.MEDIUM,
    ErrorType.OPTIMIZATION_TIMEOUT: ErrorSeverity.LOW,
    ErrorType.INVALID_MARKET_DATA: ErrorSeverity.MEDIUM,
    ErrorType.SYSTEM_OVERLOAD: ErrorSeverity.HIGH,
    ErrorType.EXTERNAL_API_FAILURE: ErrorSeverity.MEDIUM,
    ErrorType.CONFIGURATION_ERROR: ErrorSeverity.HIGH,
    ErrorType.SECURITY_VIOLATION: ErrorSeverity.CRITICAL,
}
"""Default severity per error type (DESIGN §4); the recovery policy table may override it."""
