"""The recovery policy table: DESIGN §4 defaults, validation, and merging overrides."""

from __future__ import annotations

import dataclasses

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    ErrorSeverity,
    ErrorType,
    RecoveryPolicy,
    RecoveryStrategyKind,
    SlaClass,
)
from strategylab.fault_tolerance._policy import merge_policies
from strategylab.fault_tolerance._taxonomy import DEFAULT_SEVERITY

K = RecoveryStrategyKind
E = ErrorType

DESIGN_TABLE: dict[ErrorType, tuple[ErrorSeverity, tuple[RecoveryStrategyKind, ...], str]] = {
    E.DATA_INGESTION_FAILURE: (
        ErrorSeverity.HIGH,
        (K.RETRY, K.COMPONENT_RESTART, K.FAILOVER),
        "critical",
    ),
    E.DATABASE_CONNECTION_LOST: (
        ErrorSeverity.HIGH,
        (K.RETRY, K.FAILOVER, K.CIRCUIT_BREAKER),
        "database",
    ),
    E.WEBSOCKET_CONNECTION_DROPPED: (
        ErrorSeverity.HIGH,
        (K.RETRY, K.FAILOVER, K.COMPONENT_RESTART),
        "critical",
    ),
    E.MEMORY_EXHAUSTION: (
        ErrorSeverity.CRITICAL,
        (K.CACHE_CLEAR_RELOAD, K.GRACEFUL_DEGRADATION, K.EMERGENCY_SHUTDOWN),
        "memory",
    ),
    E.DISK_SPACE_EXHAUSTED: (
        ErrorSeverity.CRITICAL,
        (K.GRACEFUL_DEGRADATION, K.FAILOVER, K.EMERGENCY_SHUTDOWN),
        "database",
    ),
    E.NETWORK_TIMEOUT: (ErrorSeverity.MEDIUM, (K.RETRY, K.CIRCUIT_BREAKER), "api"),
    E.STRATEGY_EXECUTION_ERROR: (
        ErrorSeverity.HIGH,
        (K.COMPONENT_RESTART, K.GRACEFUL_DEGRADATION),
        "critical",
    ),
    E.BACKTEST_ENGINE_FAILURE: (ErrorSeverity.MEDIUM, (K.RETRY, K.COMPONENT_RESTART), "batch"),
    E.OPTIMIZATION_TIMEOUT: (ErrorSeverity.LOW, (K.RETRY, K.GRACEFUL_DEGRADATION), "batch"),
    E.INVALID_MARKET_DATA: (
        ErrorSeverity.MEDIUM,
        (K.CACHE_CLEAR_RELOAD, K.CIRCUIT_BREAKER),
        "critical",
    ),
    E.SYSTEM_OVERLOAD: (
        ErrorSeverity.HIGH,
        (K.GRACEFUL_DEGRADATION, K.RESOURCE_SCALING, K.CIRCUIT_BREAKER),
        "critical",
    ),
    E.EXTERNAL_API_FAILURE: (
        ErrorSeverity.MEDIUM,
        (K.RETRY, K.CIRCUIT_BREAKER, K.FAILOVER),
        "api",
    ),
    E.CONFIGURATION_ERROR: (
        ErrorSeverity.HIGH,
        (K.CACHE_CLEAR_RELOAD, K.EMERGENCY_SHUTDOWN),
        "critical",
    ),
    E.SECURITY_VIOLATION: (ErrorSeverity.CRITICAL, (K.EMERGENCY_SHUTDOWN,), "immediate"),
}


def _policy(**changes: object) -> RecoveryPolicy:
    fields: dict[str, object] = {
        "error_type": E.NETWORK_TIMEOUT,
        "severity": ErrorSeverity.MEDIUM,
        "chain": (K.RETRY,),
        "sla": SlaClass.API,
    }
    fields.update(changes)
    return RecoveryPolicy(**fields)  # type: ignore[arg-type]


def test_default_table_covers_all_fourteen_error_types() -> None:
    """DEFAULT_POLICIES has exactly one row per ErrorType."""
    assert set(DEFAULT_POLICIES) == set(ErrorType)
    assert len(DEFAULT_POLICIES) == 14


@pytest.mark.parametrize("error_type", list(ErrorType), ids=lambda e: e.value)
def test_default_row_matches_design(error_type: ErrorType) -> None:
    """Each default row has DESIGN §4's severity, chain (in order) and SLA class."""
    severity, chain, sla = DESIGN_TABLE[error_type]
    policy = DEFAULT_POLICIES[error_type]
    assert (policy.error_type, policy.severity, policy.chain, policy.sla.name) == (
        error_type,
        severity,
        chain,
        sla,
    )


def test_default_severities_agree_with_the_taxonomy() -> None:
    """The table's severities are the taxonomy's DEFAULT_SEVERITY."""
    assert {t: p.severity for t, p in DEFAULT_POLICIES.items()} == DEFAULT_SEVERITY


def test_default_escalation_is_five_in_sixty_seconds() -> None:
    """Every default row escalates after 5 errors in 60 s."""
    assert {(p.escalation_threshold, p.escalation_window) for p in DEFAULT_POLICIES.values()} == {
        (5, 60.0)
    }


def test_default_table_is_read_only() -> None:
    """DEFAULT_POLICIES cannot be modified."""
    with pytest.raises(TypeError):
        DEFAULT_POLICIES[E.NETWORK_TIMEOUT] = _policy()  # type: ignore[index]


@pytest.mark.parametrize(
    ("sla", "name", "seconds"),
    [
        (SlaClass.API, "api", 10.0),
        (SlaClass.CRITICAL, "critical", 30.0),
        (SlaClass.MEMORY, "memory", 45.0),
        (SlaClass.DATABASE, "database", 60.0),
        (SlaClass.BATCH, "batch", 60.0),
        (SlaClass.IMMEDIATE, "immediate", 5.0),
    ],
)
def test_standard_sla_classes(sla: SlaClass, name: str, seconds: float) -> None:
    """The standard SLA classes carry DESIGN's names and seconds."""
    assert (sla.name, sla.seconds) == (name, seconds)


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf"), True])
def test_sla_rejects_bad_seconds(seconds: object) -> None:
    """An SLA must be a finite positive number of seconds; the error names the field."""
    with pytest.raises(ConfigurationError, match="seconds"):
        SlaClass(name="x", seconds=seconds)  # type: ignore[arg-type]


def test_sla_rejects_empty_name() -> None:
    """An SLA class needs a name."""
    with pytest.raises(ConfigurationError, match="name"):
        SlaClass(name="", seconds=1.0)


def test_policy_chain_list_is_stored_as_tuple() -> None:
    """A list chain is copied into a tuple, so the caller's list cannot change the policy."""
    chain = [K.RETRY, K.FAILOVER]
    policy = _policy(chain=chain)
    chain.append(K.CIRCUIT_BREAKER)
    assert policy.chain == (K.RETRY, K.FAILOVER)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"chain": ()}, "chain"),
        ({"chain": (K.RETRY, K.RETRY)}, "chain"),
        ({"chain": ("retry",)}, "chain"),
        ({"chain": "retry"}, "chain"),
        ({"error_type": "network_timeout"}, "error_type"),
        ({"severity": "high"}, "severity"),
        ({"sla": 10.0}, "sla"),
        ({"escalation_threshold": 0}, "escalation_threshold"),
        ({"escalation_threshold": 2.5}, "escalation_threshold"),
        ({"escalation_window": 0.0}, "escalation_window"),
        ({"escalation_window": float("inf")}, "escalation_window"),
        ({"retry": object()}, "retry"),
    ],
)
def test_policy_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    """A bad policy field raises ConfigurationError naming that field."""
    with pytest.raises(ConfigurationError) as info:
        _policy(**changes)
    assert info.value.key == field


def test_merge_replaces_only_overridden_rows() -> None:
    """An override replaces its row and leaves the other thirteen as the defaults."""
    override = dataclasses.replace(
        DEFAULT_POLICIES[E.NETWORK_TIMEOUT], chain=(K.CIRCUIT_BREAKER,), escalation_threshold=2
    )
    merged = merge_policies({E.NETWORK_TIMEOUT: override})
    assert merged[E.NETWORK_TIMEOUT] is override
    assert all(merged[t] is DEFAULT_POLICIES[t] for t in ErrorType if t is not E.NETWORK_TIMEOUT)


def test_merge_does_not_touch_the_defaults() -> None:
    """Merging an override leaves DEFAULT_POLICIES as it was."""
    merge_policies({E.NETWORK_TIMEOUT: _policy(chain=(K.FAILOVER,))})
    assert DEFAULT_POLICIES[E.NETWORK_TIMEOUT].chain == (K.RETRY, K.CIRCUIT_BREAKER)


def test_merge_result_is_read_only() -> None:
    """The merged table cannot be modified."""
    merged = merge_policies({E.NETWORK_TIMEOUT: _policy()})
    with pytest.raises(TypeError):
        merged[E.NETWORK_TIMEOUT] = _policy()  # type: ignore[index]


def test_merge_rejects_a_row_under_the_wrong_key() -> None:
    """A policy filed under another error type's key is refused."""
    with pytest.raises(ConfigurationError, match="SECURITY_VIOLATION"):
        merge_policies({E.SECURITY_VIOLATION: _policy()})


def test_merge_rejects_a_non_policy_value() -> None:
    """A value that is not a RecoveryPolicy is refused, naming the key."""
    with pytest.raises(ConfigurationError, match="NETWORK_TIMEOUT"):
        merge_policies({E.NETWORK_TIMEOUT: "retry"})  # type: ignore[dict-item]
