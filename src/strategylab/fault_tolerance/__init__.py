"""Strategy Lab's fault-tolerance library.

Classify an error, decide how to recover, recover, and prove it: retry, circuit breaker, bulkhead,
timeout and fallback primitives that are cheap enough for a trading hot path, and an
:class:`ErrorRecoveryManager` that escalates through recovery strategies, keeps statistics against
SLAs and writes a tamper-evident audit log.
"""

from __future__ import annotations

from strategylab.errors import (
    AuditIntegrityError,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    RecoveryRejectedError,
    RetryExhaustedError,
)

from ._audit import AuditLog, AuditRecord, AuditVerification, load_audit_key
from ._breaker import (
    BreakerCallListener,
    BreakerMetrics,
    BreakerState,
    CircuitBreaker,
    SlidingWindowType,
    open_breaker_names,
)
from ._bulkhead import Bulkhead, BulkheadStatistics
from ._classify import ClassificationRule, Classifier, classify, is_corruption, register_rule
from ._component import (
    AuditSink,
    Component,
    Degradable,
    Reloadable,
    Restartable,
    Scalable,
    SupportsFailover,
)
from ._context import ErrorContext, SystemState
from ._fallback import Fallback
from ._manager import ActiveRecovery, ErrorRecoveryManager, RecoveryEvent, RecoveryOutcome
from ._pipeline import Pipeline
from ._policy import DEFAULT_POLICIES, RecoveryPolicy, SlaClass
from ._registry import CircuitBreakerRegistry
from ._retry import RetryDetails, RetryPolicy, is_testing, set_testing
from ._retry_after import parse_retry_after, retry_after_hint
from ._statistics import RecoveryStatistics
from ._taxonomy import ErrorSeverity, ErrorType, RecoveryStrategyKind, UserImpact
from ._timeout import Timeout
from ._typing import Policy

__all__ = [
    "DEFAULT_POLICIES",
    "ActiveRecovery",
    "AuditIntegrityError",
    "AuditLog",
    "AuditRecord",
    "AuditSink",
    "AuditVerification",
    "BreakerCallListener",
    "BreakerMetrics",
    "BreakerState",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadStatistics",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitBreakerRegistry",
    "CircuitOpenError",
    "ClassificationRule",
    "Classifier",
    "Component",
    "Degradable",
    "ErrorContext",
    "ErrorRecoveryManager",
    "ErrorSeverity",
    "ErrorType",
    "Fallback",
    "Pipeline",
    "Policy",
    "RecoveryEvent",
    "RecoveryOutcome",
    "RecoveryPolicy",
    "RecoveryRejectedError",
    "RecoveryStatistics",
    "RecoveryStrategyKind",
    "Reloadable",
    "Restartable",
    "RetryDetails",
    "RetryExhaustedError",
    "RetryPolicy",
    "Scalable",
    "SlaClass",
    "SlidingWindowType",
    "SupportsFailover",
    "SystemState",
    "Timeout",
    "UserImpact",
    "classify",
    "is_corruption",
    "is_testing",
    "load_audit_key",
    "open_breaker_names",
    "parse_retry_after",
    "register_rule",
    "retry_after_hint",
    "set_testing",
]
