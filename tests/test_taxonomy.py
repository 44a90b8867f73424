"""Tests of the error taxonomy (DESIGN §4) and of ErrorContext / SystemState."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import itertools
import json
import sqlite3
import uuid
from typing import TYPE_CHECKING

import pytest
import websockets.exceptions as wse
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Close

from strategylab.errors import BulkheadFullError, CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import (
    ErrorContext,
    ErrorSeverity,
    ErrorType,
    RecoveryStrategyKind,
    SystemState,
    UserImpact,
)
from strategylab.fault_tolerance._taxonomy import DEFAULT_SEVERITY
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from pathlib import Path

DESIGN_TYPES = [
    "DATA_INGESTION_FAILURE",
    "DATABASE_CONNECTION_LOST",
    "WEBSOCKET_CONNECTION_DROPPED",
    "MEMORY_EXHAUSTION",
    "DISK_SPACE_EXHAUSTED",
    "NETWORK_TIMEOUT",
    "STRATEGY_EXECUTION_ERROR",
    "BACKTEST_ENGINE_FAILURE",
    "OPTIMIZATION_TIMEOUT",
    "INVALID_MARKET_DATA",
    "SYSTEM_OVERLOAD",
    "EXTERNAL_API_FAILURE",
    "CONFIGURATION_ERROR",
    "SECURITY_VIOLATION",
]

# DESIGN §4, column "severity".
DESIGN_SEVERITY = {
    "DATA_INGESTION_FAILURE": "HIGH",
    "DATABASE_CONNECTION_LOST": "HIGH",
    "WEBSOCKET_CONNECTION_DROPPED": "HIGH",
    "MEMORY_EXHAUSTION": "CRITICAL",
    "DISK_SPACE_EXHAUSTED": "CRITICAL",
    "NETWORK_TIMEOUT": "MEDIUM",
    "STRATEGY_EXECUTION_ERROR": "HIGH",
    "BACKTEST_ENGINE_FAILURE": "MEDIUM",
    "OPTIMIZATION_TIMEOUT": "LOW",
    "INVALID_MARKET_DATA": "MEDIUM",
    "SYSTEM_OVERLOAD": "HIGH",
    "EXTERNAL_API_FAILURE": "MEDIUM",
    "CONFIGURATION_ERROR": "HIGH",
    "SECURITY_VIOLATION": "CRITICAL",
}

SEVERITIES_ASCENDING = [
    ErrorSeverity.INFO,
    ErrorSeverity.LOW,
    ErrorSeverity.MEDIUM,
    ErrorSeverity.HIGH,
    ErrorSeverity.CRITICAL,
]

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def _context(**changes: object) -> ErrorContext:
    fields: dict[str, object] = {
        "error_id": uuid.uuid4(),
        "error_type": ErrorType.NETWORK_TIMEOUT,
        "timestamp": NOW,
        "severity": ErrorSeverity.MEDIUM,
        "component": "feed",
        "message": "timed out",
    }
    fields.update(changes)
    return ErrorContext(**fields)  # type: ignore[arg-type]


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


# ------------------------------------------------------------------------------------------------
# The enums
# ------------------------------------------------------------------------------------------------


def test_exactly_the_fourteen_design_types() -> None:
    """ErrorType has exactly the 14 members DESIGN §3 names, in its order."""
    assert [t.name for t in ErrorType] == DESIGN_TYPES


def test_error_type_values_are_lowercase_names() -> None:
    """Each ErrorType's value is its name in lower case."""
    assert all(t.value == t.name.lower() for t in ErrorType)


def test_default_severity_matches_design() -> None:
    """DEFAULT_SEVERITY is the severity column of DESIGN §4, for every type."""
    assert {t.name: s.name for t, s in DEFAULT_SEVERITY.items()} == DESIGN_SEVERITY


def test_severity_total_order() -> None:
    """CRITICAL > HIGH > MEDIUM > LOW > INFO, and sorting follows that order."""
    shuffled = [SEVERITIES_ASCENDING[i] for i in (3, 0, 4, 2, 1)]
    assert sorted(shuffled) == SEVERITIES_ASCENDING
    assert ErrorSeverity.CRITICAL > ErrorSeverity.HIGH > ErrorSeverity.MEDIUM
    assert ErrorSeverity.MEDIUM > ErrorSeverity.LOW > ErrorSeverity.INFO


@pytest.mark.parametrize(("low", "high"), list(itertools.pairwise(SEVERITIES_ASCENDING)))
def test_severity_comparisons_agree(low: ErrorSeverity, high: ErrorSeverity) -> None:
    """<, <=, > and >= agree with each other for adjacent severities."""
    assert (low < high, low <= high, low > high, low >= high) == (True, True, False, False)


def test_severity_comparison_with_other_type_is_type_error() -> None:
    """Comparing a severity with a non-severity raises TypeError rather than guessing."""
    with pytest.raises(TypeError):
        _ = ErrorSeverity.HIGH < 3


@pytest.mark.parametrize(
    ("severity", "steps", "expected"),
    [
        (ErrorSeverity.INFO, 1, ErrorSeverity.LOW),
        (ErrorSeverity.LOW, 1, ErrorSeverity.MEDIUM),
        (ErrorSeverity.MEDIUM, 1, ErrorSeverity.HIGH),
        (ErrorSeverity.HIGH, 1, ErrorSeverity.CRITICAL),
        (ErrorSeverity.CRITICAL, 1, ErrorSeverity.CRITICAL),
        (ErrorSeverity.INFO, 2, ErrorSeverity.MEDIUM),
        (ErrorSeverity.LOW, 10, ErrorSeverity.CRITICAL),
        (ErrorSeverity.MEDIUM, 0, ErrorSeverity.MEDIUM),
    ],
)
def test_severity_raised(severity: ErrorSeverity, steps: int, expected: ErrorSeverity) -> None:
    """``raised(steps)`` moves up by ``steps`` and saturates at CRITICAL."""
    assert severity.raised(steps) is expected


def test_severity_raised_defaults_to_one_step() -> None:
    """``raised()`` with no argument raises by one step."""
    assert ErrorSeverity.LOW.raised() is ErrorSeverity.MEDIUM


def test_severity_parse_is_case_insensitive() -> None:
    """``parse`` accepts any case."""
    assert ErrorSeverity.parse("High") is ErrorSeverity.HIGH


def test_severity_parse_names_bad_value() -> None:
    """``parse`` of an unknown name raises ValueError naming it and the choices."""
    with pytest.raises(ValueError, match=r"severity='urgent'.*critical"):
        ErrorSeverity.parse("urgent")


def test_user_impact_grows_with_severity() -> None:
    """The assumed user impact never shrinks as severity rises."""
    order = list(UserImpact)
    impacts = [order.index(UserImpact.for_severity(s)) for s in SEVERITIES_ASCENDING]
    assert impacts == sorted(impacts)
    assert UserImpact.for_severity(ErrorSeverity.CRITICAL) is UserImpact.FULL_OUTAGE


def test_eight_recovery_strategies() -> None:
    """RecoveryStrategyKind has exactly the 8 strategies of DESIGN §3."""
    assert {k.name for k in RecoveryStrategyKind} == {
        "RETRY",
        "FAILOVER",
        "GRACEFUL_DEGRADATION",
        "COMPONENT_RESTART",
        "RESOURCE_SCALING",
        "CIRCUIT_BREAKER",
        "EMERGENCY_SHUTDOWN",
        "CACHE_CLEAR_RELOAD",
    }


# ------------------------------------------------------------------------------------------------
# Checks on an ErrorContext's fields
# ------------------------------------------------------------------------------------------------


def test_naive_timestamp_rejected() -> None:
    """A timestamp without a timezone raises ValueError naming the field."""
    with pytest.raises(ValueError, match="timestamp="):
        _context(timestamp=dt.datetime(2025, 1, 1))  # noqa: DTZ001 - naive on purpose


def test_non_utc_timestamp_rejected() -> None:
    """A timestamp in another timezone raises ValueError naming the field."""
    with pytest.raises(ValueError, match="timestamp="):
        _context(timestamp=NOW.astimezone(dt.timezone(dt.timedelta(hours=2))))


@pytest.mark.parametrize("metadata", [{"k": 1}, {1: "v"}, {"k": None}, {"k": b"v"}])
def test_metadata_must_be_str_to_str(metadata: dict[object, object]) -> None:
    """Non-str metadata keys or values raise TypeError naming the key."""
    with pytest.raises(TypeError, match=r"metadata\["):
        _context(metadata=metadata)


def test_empty_component_rejected() -> None:
    """An empty component name raises ValueError naming the field."""
    with pytest.raises(ValueError, match="component="):
        _context(component="")


def test_metadata_is_copied() -> None:
    """Changing the caller's dict afterwards does not change the frozen context."""
    meta = {"symbol": "BTC-USD"}
    ctx = _context(metadata=meta)
    meta["symbol"] = "ETH-USD"
    assert ctx.metadata == {"symbol": "BTC-USD"}


def test_context_is_frozen() -> None:
    """Assigning to a field of a context raises FrozenInstanceError."""
    ctx = _context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.message = "changed"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# The JSON round trip of an ErrorContext
# ------------------------------------------------------------------------------------------------

_finite = st.floats(allow_nan=False)
_text = st.text(max_size=40)

system_states = st.builds(
    SystemState,
    memory_rss_bytes=st.integers(min_value=0, max_value=2**63),
    memory_percent=_finite,
    cpu_percent=_finite,
    disk_free_bytes=st.integers(min_value=-1, max_value=2**63),
    open_breakers=st.lists(_text, max_size=4).map(tuple),
    active_recoveries=st.integers(min_value=0, max_value=10_000),
)

contexts = st.builds(
    ErrorContext,
    error_id=st.uuids(),
    error_type=st.sampled_from(ErrorType),
    timestamp=st.datetimes(timezones=st.just(dt.UTC)),
    severity=st.sampled_from(ErrorSeverity),
    component=st.text(min_size=1, max_size=40),
    message=st.text(max_size=200),
    metadata=st.dictionaries(_text, _text, max_size=5),
    stack_trace=st.none() | st.text(max_size=200),
    user_impact=st.sampled_from(UserImpact),
    system_state=st.none() | system_states,
)


@given(contexts)
def test_json_round_trip(ctx: ErrorContext) -> None:
    """``from_json(to_json(c)) == c`` for contexts built from every field's domain."""
    assert ErrorContext.from_json(ctx.to_json()) == ctx


@given(contexts)
def test_json_is_plain_json(ctx: ErrorContext) -> None:
    """``to_json`` produces a JSON object whose keys are exactly the fields."""
    data = json.loads(ctx.to_json())
    assert set(data) == {f.name for f in dataclasses.fields(ErrorContext)}


def test_from_json_accepts_bytes() -> None:
    """``from_json`` reads bytes as well as str."""
    ctx = _context()
    assert ErrorContext.from_json(ctx.to_json().encode()) == ctx


def test_from_dict_missing_field_names_it() -> None:
    """A missing required field raises ValueError naming the field."""
    data = _context().to_dict()
    del data["error_type"]
    with pytest.raises(ValueError, match="'error_type'"):
        ErrorContext.from_dict(data)


def test_from_dict_naive_timestamp_rejected() -> None:
    """A serialised timestamp without an offset is rejected on load."""
    data = _context().to_dict()
    data["timestamp"] = "2025-01-02T03:04:05"
    with pytest.raises(ValueError, match="timestamp="):
        ErrorContext.from_dict(data)


# ------------------------------------------------------------------------------------------------
# Building a context from an exception
# ------------------------------------------------------------------------------------------------


def test_from_exception_classifies() -> None:
    """The error type comes from ``classify`` when not given."""
    ctx = ErrorContext.from_exception(OSError(errno.ENOSPC, "full"), component="store")
    assert ctx.error_type is ErrorType.DISK_SPACE_EXHAUSTED


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_from_exception_default_severity(error_type: ErrorType) -> None:
    """The severity defaults to DESIGN §4's severity for the type."""
    ctx = ErrorContext.from_exception(
        ValueError("x"), component="c", error_type=error_type, capture_state=False
    )
    assert ctx.severity.name == DESIGN_SEVERITY[error_type.name]


def test_from_exception_explicit_severity_and_impact() -> None:
    """An explicit severity and user impact override the defaults."""
    ctx = ErrorContext.from_exception(
        MemoryError(),
        component="c",
        severity=ErrorSeverity.LOW,
        user_impact=UserImpact.DATA_AT_RISK,
        capture_state=False,
    )
    assert (ctx.severity, ctx.user_impact) == (ErrorSeverity.LOW, UserImpact.DATA_AT_RISK)


def test_from_exception_impact_follows_severity() -> None:
    """Without an explicit impact, the impact is the one assumed for the severity."""
    ctx = ErrorContext.from_exception(MemoryError(), component="c", capture_state=False)
    assert ctx.user_impact is UserImpact.for_severity(ErrorSeverity.CRITICAL)


def test_from_exception_records_stack_trace_when_raised() -> None:
    """A raised exception's traceback is recorded, naming this test function."""
    exc = _raised(KeyError("px"))
    ctx = ErrorContext.from_exception(exc, component="strategy", capture_state=False)
    assert ctx.stack_trace is not None
    assert "_raised" in ctx.stack_trace
    assert "KeyError" in ctx.stack_trace


def test_from_exception_without_traceback_has_no_trace() -> None:
    """An exception that was never raised has no stack trace."""
    ctx = ErrorContext.from_exception(KeyError("px"), component="strategy", capture_state=False)
    assert ctx.stack_trace is None


def test_from_exception_records_exception_class() -> None:
    """The exception's qualified class name is recorded in the metadata."""
    ctx = ErrorContext.from_exception(
        ConfigurationError("k", 1, "bad"), component="c", capture_state=False
    )
    assert ctx.metadata["exception"] == "strategylab.errors.ConfigurationError"


def test_from_exception_merges_metadata() -> None:
    """Caller metadata is kept alongside the recorded exception class."""
    ctx = ErrorContext.from_exception(
        ValueError(), component="c", metadata={"symbol": "BTC-USD"}, capture_state=False
    )
    assert ctx.metadata == {"exception": "builtins.ValueError", "symbol": "BTC-USD"}


def test_from_exception_message_falls_back_to_class_name() -> None:
    """An exception with an empty message is described by its class name."""
    ctx = ErrorContext.from_exception(MemoryError(), component="c", capture_state=False)
    assert ctx.message == "MemoryError"


def test_from_exception_timestamp_from_clock() -> None:
    """The timestamp is the injected clock's time, as aware UTC."""
    clock = FakeClock(start=1_700_000_000.25)
    ctx = ErrorContext.from_exception(ValueError(), component="c", clock=clock, capture_state=False)
    assert ctx.timestamp == dt.datetime.fromtimestamp(1_700_000_000.25, tz=dt.UTC)


def test_from_exception_captures_system_state() -> None:
    """By default a SystemState of this process is captured."""
    ctx = ErrorContext.from_exception(ValueError(), component="c")
    assert ctx.system_state is not None
    assert ctx.system_state.memory_rss_bytes > 0


def test_from_exception_without_capture() -> None:
    """``capture_state=False`` records no system state."""
    ctx = ErrorContext.from_exception(ValueError(), component="c", capture_state=False)
    assert ctx.system_state is None


def test_from_exception_round_trips() -> None:
    """A context built from a real raised exception survives JSON."""
    ctx = ErrorContext.from_exception(_raised(TimeoutError("slow")), component="api")
    assert ErrorContext.from_json(ctx.to_json()) == ctx


# ------------------------------------------------------------------------------------------------
# Every type can be reached
# ------------------------------------------------------------------------------------------------


class _SignatureError(Exception):
    """What the feed raises on a bad HMAC: it declares its own type."""

    error_type = ErrorType.SECURITY_VIOLATION


def _sqlite_error(tmp: Path, kind: str) -> BaseException:
    if kind == "cantopen":
        return _raised_by(lambda: sqlite3.connect(tmp / "missing" / "x.db"))
    path = tmp / "garbage.db"
    path.write_bytes(b"not a database" * 100)
    con = sqlite3.connect(path)
    try:
        return _raised_by(lambda: con.execute("SELECT * FROM sqlite_master"))
    finally:
        con.close()


def _raised_by(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    pytest.fail("nothing raised")


def test_every_error_type_is_reachable(tmp_path: Path) -> None:
    """Real exceptions and component hints, through ErrorContext, reach all 14 types."""
    cases: list[tuple[BaseException, str]] = [
        (_sqlite_error(tmp_path, "notadb"), "store"),
        (_sqlite_error(tmp_path, "cantopen"), "store"),
        (wse.ConnectionClosedError(Close(1011, "bye"), None), "feed"),
        (_raised_by(lambda: bytearray(2**60)), "ingestor"),
        (OSError(errno.ENOSPC, "No space left on device"), "store"),
        (_raised(TimeoutError()), "exchange"),
        (_raised(KeyError("px")), "strategy.momentum"),
        (_raised(ValueError("nan")), "backtest"),
        (_raised(TimeoutError()), "optimizer"),
        (_raised_by(lambda: json.loads("{")), "feed"),
        (BulkheadFullError("orders", 4, 0), "orders"),
        (CircuitOpenError("exchange", 2.0), "strategy"),
        (ConfigurationError("db.path", "", "must not be empty"), "node"),
        (_SignatureError("bad hmac"), "feed"),
    ]
    reached = {
        ErrorContext.from_exception(exc, component=c, capture_state=False).error_type
        for exc, c in cases
    }
    assert reached == set(ErrorType)
