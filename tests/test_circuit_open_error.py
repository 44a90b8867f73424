"""CircuitOpenError keeps its fields in ``args``: every way of building one reads the same."""

from __future__ import annotations

import asyncio
import copy
import pickle

import pytest

from strategylab.errors import CircuitOpenError
from strategylab.fault_tolerance import CircuitBreaker


def _fields(error: CircuitOpenError) -> tuple[object, ...]:
    return (error.breaker, error.retry_after, error.last_failure)


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError("quotes", 2.5, ValueError("bad")),
        CircuitOpenError(breaker="quotes", retry_after=2.5, last_failure=ValueError("bad")),
        BaseException.__new__(CircuitOpenError, "quotes", 2.5, ValueError("bad")),
    ],
    ids=["positional", "keywords", "hot-path"],
)
def test_every_construction_reads_the_same_fields(error: CircuitOpenError) -> None:
    assert error.breaker == "quotes"
    assert error.retry_after == 2.5
    assert isinstance(error.last_failure, ValueError)
    assert str(error) == "circuit 'quotes' is open; retry after 2.500s"
    for twin in (pickle.loads(pickle.dumps(error)), copy.copy(error)):  # noqa: S301 - our own bytes
        assert type(twin) is CircuitOpenError
        assert twin.breaker == "quotes"
        assert twin.retry_after == 2.5
        assert str(twin.last_failure) == "bad"


def test_last_failure_defaults_to_none() -> None:
    assert CircuitOpenError("db", 1.0).last_failure is None
    assert CircuitOpenError("db", 1.0).args == ("db", 1.0, None)


def _tripped(failure: BaseException) -> CircuitBreaker:
    breaker = CircuitBreaker("orders", failure_threshold=1, recovery_timeout=30.0)

    def boom() -> None:
        raise failure

    with pytest.raises(type(failure)):
        breaker.wrap(boom)()
    return breaker


def test_sync_rejection_from_the_fast_driver_carries_name_wait_and_failure() -> None:
    failure = ConnectionError("refused")
    breaker = _tripped(failure)
    with pytest.raises(CircuitOpenError) as info:
        breaker.wrap(lambda: 1)()
    assert info.value.breaker == "orders"
    assert 29.0 < info.value.retry_after <= 30.0
    assert info.value.last_failure is failure
    assert info.value.__cause__ is None  # carried, not chained


def test_async_rejection_from_the_fast_driver_carries_name_wait_and_failure() -> None:
    failure = TimeoutError("slow")
    breaker = _tripped(failure)

    async def call() -> int:
        return 1

    with pytest.raises(CircuitOpenError) as info:
        asyncio.run(breaker.awrap(call)())
    assert info.value.breaker == "orders"
    assert 29.0 < info.value.retry_after <= 30.0
    assert info.value.last_failure is failure
