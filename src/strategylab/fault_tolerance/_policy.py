"""How each error type is recovered: :class:`RecoveryPolicy`, :class:`SlaClass`, the default table.

:data:`DEFAULT_POLICIES` is exactly the table of DESIGN §4. The recovery manager merges a user's
overrides over it, so a deployment changes one row without restating the other thirteen.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar

from strategylab import _validate
from strategylab.errors import ConfigurationError

from ._taxonomy import DEFAULT_SEVERITY, ErrorSeverity, ErrorType, RecoveryStrategyKind

if TYPE_CHECKING:
    from ._component import RetryRunner

__all__ = ["DEFAULT_POLICIES", "RecoveryPolicy", "SlaClass", "merge_policies"]


def _validated_chain(given: object) -> tuple[RecoveryStrategyKind, ...]:
    if isinstance(given, str | bytes) or not isinstance(given, Iterable):
        raise ConfigurationError("chain", given, "must be a sequence of strategies")
    chain = tuple(given)
    if not chain:
        raise ConfigurationError("chain", chain, "needs at least one strategy")
    for kind in chain:
        if not isinstance(kind, RecoveryStrategyKind):
            raise ConfigurationError("chain", chain, f"{kind!r} is not a RecoveryStrategyKind")
    if len(set(chain)) != len(chain):
        raise ConfigurationError("chain", chain, "names a strategy twice")
    return chain


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlaClass:
    """A recovery-time objective: a recovery in this class should finish within ``seconds``.

    The standard classes are class attributes: ``API`` (10 s), ``CRITICAL`` (30 s), ``MEMORY``
    (45 s), ``DATABASE`` (60 s), ``BATCH`` (60 s) and ``IMMEDIATE`` (5 s). DESIGN §4 only says
    "immediate" for a security violation; 5 s is the time we allow the kill switch to halt trading
    and stop every component, which is also the per-component shutdown deadline's default.
    """

    name: str
    seconds: float

    API: ClassVar[SlaClass]
    CRITICAL: ClassVar[SlaClass]
    MEMORY: ClassVar[SlaClass]
    DATABASE: ClassVar[SlaClass]
    BATCH: ClassVar[SlaClass]
    IMMEDIATE: ClassVar[SlaClass]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("name", self.name, "an SLA class needs a non-empty name")
        _validate.seconds("seconds", self.seconds)


SlaClass.API = SlaClass(name="api", seconds=10.0)
SlaClass.CRITICAL = SlaClass(name="critical", seconds=30.0)
SlaClass.MEMORY = SlaClass(name="memory", seconds=45.0)
SlaClass.DATABASE = SlaClass(name="database", seconds=60.0)
SlaClass.BATCH = SlaClass(name="batch", seconds=60.0)
SlaClass.IMMEDIATE = SlaClass(name="immediate", seconds=5.0)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryPolicy:
    """How one error type is recovered.

    ``chain`` is the escalation order: the manager starts at the first strategy (or further along
    when pattern analysis has escalated) and moves to the next when one fails. Pattern analysis
    escalates once per ``escalation_threshold`` errors of this type from one component within
    ``escalation_window`` seconds. ``retry`` is the policy the RETRY strategy runs under; None uses
    the manager's default.
    """

    error_type: ErrorType
    severity: ErrorSeverity
    chain: tuple[RecoveryStrategyKind, ...]
    sla: SlaClass
    escalation_threshold: int = 5
    escalation_window: float = 60.0
    retry: RetryRunner | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.error_type, ErrorType):
            raise ConfigurationError("error_type", self.error_type, "must be an ErrorType")
        if not isinstance(self.severity, ErrorSeverity):
            raise ConfigurationError("severity", self.severity, "must be an ErrorSeverity")
        # A list passed by the caller must not alias a frozen record.
        object.__setattr__(self, "chain", _validated_chain(self.chain))
        if not isinstance(self.sla, SlaClass):
            raise ConfigurationError("sla", self.sla, "must be a SlaClass")
        _validate.integer("escalation_threshold", self.escalation_threshold, minimum=1)
        _validate.seconds("escalation_window", self.escalation_window)
        if self.retry is not None and not callable(getattr(self.retry, "acall", None)):
            raise ConfigurationError("retry", self.retry, "must have an async acall(fn) method")


_R = RecoveryStrategyKind


def _row(error_type: ErrorType, sla: SlaClass, *chain: RecoveryStrategyKind) -> RecoveryPolicy:
    return RecoveryPolicy(
        error_type=error_type, severity=DEFAULT_SEVERITY[error_type], chain=chain, sla=sla
    )


DEFAULT_POLICIES: Mapping[ErrorType, RecoveryPolicy] = types.MappingProxyType(
    {
        p.error_type: p
        for p in (
            _row(
                ErrorType.DATA_INGESTION_FAILURE,
                SlaClass.CRITICAL,
                _R.RETRY,
                _R.COMPONENT_RESTART,
                _R.FAILOVER,
            ),
            _row(
                ErrorType.DATABASE_CONNECTION_LOST,
                SlaClass.DATABASE,
                _R.RETRY,
                _R.FAILOVER,
                _R.CIRCUIT_BREAKER,
            ),
            _row(
                ErrorType.WEBSOCKET_CONNECTION_DROPPED,
                SlaClass.CRITICAL,
                _R.RETRY,
                _R.FAILOVER,
                _R.COMPONENT_RESTART,
            ),
            _row(
                ErrorType.MEMORY_EXHAUSTION,
                SlaClass.MEMORY,
                _R.CACHE_CLEAR_RELOAD,
                _R.GRACEFUL_DEGRADATION,
                _R.EMERGENCY_SHUTDOWN,
            ),
            _row(
                ErrorType.DISK_SPACE_EXHAUSTED,
                SlaClass.DATABASE,
                _R.GRACEFUL_DEGRADATION,
                _R.FAILOVER,
                _R.EMERGENCY_SHUTDOWN,
            ),
            _row(ErrorType.NETWORK_TIMEOUT, SlaClass.API, _R.RETRY, _R.CIRCUIT_BREAKER),
            _row(
                ErrorType.STRATEGY_EXECUTION_ERROR,
                SlaClass.CRITICAL,
                _R.COMPONENT_RESTART,
                _R.GRACEFUL_DEGRADATION,
            ),
            _row(ErrorType.BACKTEST_ENGINE_FAILURE, SlaClass.BATCH, _R.RETRY, _R.COMPONENT_RESTART),
            _row(
                ErrorType.OPTIMIZATION_TIMEOUT,
                SlaClass.BATCH,
                _R.RETRY,
                _R.GRACEFUL_DEGRADATION,
            ),
            _row(
                ErrorType.INVALID_MARKET_DATA,
                SlaClass.CRITICAL,
                _R.CACHE_CLEAR_RELOAD,
                _R.CIRCUIT_BREAKER,
            ),
            _row(
                ErrorType.SYSTEM_OVERLOAD,
                SlaClass.CRITICAL,
                _R.GRACEFUL_DEGRADATION,
                _R.RESOURCE_SCALING,
                _R.CIRCUIT_BREAKER,
            ),
            _row(
                ErrorType.EXTERNAL_API_FAILURE,
                SlaClass.API,
                _R.RETRY,
                _R.CIRCUIT_BREAKER,
                _R.FAILOVER,
            ),
            _row(
                ErrorType.CONFIGURATION_ERROR,
                SlaClass.CRITICAL,
                _R.CACHE_CLEAR_RELOAD,
                _R.EMERGENCY_SHUTDOWN,
            ),
            _row(ErrorType.SECURITY_VIOLATION, SlaClass.IMMEDIATE, _R.EMERGENCY_SHUTDOWN),
        )
    }
)
"""The DESIGN §4 policy table, read-only: one :class:`RecoveryPolicy` per :class:`ErrorType`."""


def merge_policies(
    overrides: Mapping[ErrorType, RecoveryPolicy] | None,
) -> Mapping[ErrorType, RecoveryPolicy]:
    """:data:`DEFAULT_POLICIES` with ``overrides`` replacing whole rows; read-only; validated."""
    merged = dict(DEFAULT_POLICIES)
    if overrides is None:
        return DEFAULT_POLICIES
    if not isinstance(overrides, Mapping):
        raise ConfigurationError("policies", overrides, "must be a mapping ErrorType -> policy")
    for key, policy in overrides.items():
        if not isinstance(key, ErrorType):
            raise ConfigurationError(f"policies[{key!r}]", policy, "key must be an ErrorType")
        if not isinstance(policy, RecoveryPolicy):
            raise ConfigurationError(
                f"policies[{key.name}]", policy, "value must be a RecoveryPolicy"
            )
        if policy.error_type is not key:
            raise ConfigurationError(
                f"policies[{key.name}]",
                policy.error_type,
                "the policy's error_type does not match its key",
            )
        merged[key] = policy
    return types.MappingProxyType(merged)
