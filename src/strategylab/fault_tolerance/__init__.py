"""Strategy Lab's fault-tolerance library.

Classify an error, decide how to recover, recover, and prove it: retry, circuit breaker, bulkhead,
timeout and fallback primitives that are cheap enough for a trading hot path, and an
:class:`ErrorRecoveryManager` that escalates through recovery strategies, keeps statistics against
SLAs and writes a tamper-evident audit log.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from ._components import ComponentRegistry
    from ._context import ErrorContext, SystemState
    from ._fallback import Fallback
    from ._manager import ActiveRecovery, ErrorRecoveryManager, RecoveryEvent, RecoveryOutcome
    from ._pipeline import Pipeline
    from ._policy import DEFAULT_POLICIES, RecoveryPolicy, SlaClass
    from ._registry import CircuitBreakerRegistry
    from ._reporter import ErrorReporter, ReporterStatistics
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
    "ComponentRegistry",
    "Degradable",
    "ErrorContext",
    "ErrorRecoveryManager",
    "ErrorReporter",
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
    "ReporterStatistics",
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

# PEP 562: a name's module is imported on first use, so that `import strategylab.fault_tolerance`
# costs no more than the parts a caller touches (the manager and the audit log pull in asyncio,
# hashing and psutil; a retry on a hot path needs none of them). bench/startup.py measures it.
_SOURCES: dict[str, str] = {
    "DEFAULT_POLICIES": "._policy",
    "ActiveRecovery": "._manager",
    "AuditIntegrityError": "strategylab.errors",
    "AuditLog": "._audit",
    "AuditRecord": "._audit",
    "AuditSink": "._component",
    "AuditVerification": "._audit",
    "BreakerCallListener": "._breaker",
    "BreakerMetrics": "._breaker",
    "BreakerState": "._breaker",
    "Bulkhead": "._bulkhead",
    "BulkheadFullError": "strategylab.errors",
    "BulkheadStatistics": "._bulkhead",
    "CallTimeoutError": "strategylab.errors",
    "CircuitBreaker": "._breaker",
    "CircuitBreakerRegistry": "._registry",
    "CircuitOpenError": "strategylab.errors",
    "ClassificationRule": "._classify",
    "Classifier": "._classify",
    "Component": "._component",
    "ComponentRegistry": "._components",
    "Degradable": "._component",
    "ErrorContext": "._context",
    "ErrorRecoveryManager": "._manager",
    "ErrorReporter": "._reporter",
    "ErrorSeverity": "._taxonomy",
    "ErrorType": "._taxonomy",
    "Fallback": "._fallback",
    "Pipeline": "._pipeline",
    "Policy": "._typing",
    "RecoveryEvent": "._manager",
    "RecoveryOutcome": "._manager",
    "RecoveryPolicy": "._policy",
    "RecoveryRejectedError": "strategylab.errors",
    "RecoveryStatistics": "._statistics",
    "RecoveryStrategyKind": "._taxonomy",
    "Reloadable": "._component",
    "ReporterStatistics": "._reporter",
    "Restartable": "._component",
    "RetryDetails": "._retry",
    "RetryExhaustedError": "strategylab.errors",
    "RetryPolicy": "._retry",
    "Scalable": "._component",
    "SlaClass": "._policy",
    "SlidingWindowType": "._breaker",
    "SupportsFailover": "._component",
    "SystemState": "._context",
    "Timeout": "._timeout",
    "UserImpact": "._taxonomy",
    "classify": "._classify",
    "is_corruption": "._classify",
    "is_testing": "._retry",
    "load_audit_key": "._audit",
    "open_breaker_names": "._breaker",
    "parse_retry_after": "._retry_after",
    "register_rule": "._classify",
    "retry_after_hint": "._retry_after",
    "set_testing": "._retry",
}


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
