"""validate_tick bounds every field: 64-bit integers, a timestamp window, prices and sizes."""

from __future__ import annotations

import math

import pytest

from strategylab.errors import ConfigurationError
from strategylab.market._tick import Tick, TickBounds, validate_tick

T0 = 1_750_000_000 * 10**9
BOUNDS = TickBounds(min_ts=T0 - 10**12, max_ts=T0 + 10**12, max_price=1e6, max_size=1e9)


def tick(**fields: object) -> Tick:
    values: dict[str, object] = {
        "symbol": "A",
        "seq": 1,
        "ts": T0,
        "bid": 1.0,
        "ask": 1.1,
        "bid_size": 1.0,
        "ask_size": 1.0,
    }
    values.update(fields)
    return Tick(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"seq": 2**63}, "seq"),
        ({"seq": 0}, "seq"),
        ({"ts": T0 + 10**12 + 1}, "timestamp"),
        ({"ts": 0}, "timestamp"),
        ({"ts": -(2**63)}, "timestamp"),
        ({"ts": 2**63}, "timestamp"),
        ({"bid": 2e6, "ask": 2e6}, "max_price"),
        ({"ask_size": 1e10}, "max_size"),
        ({"bid_size": -0.5}, "negative size"),
        ({"bid": math.nan}, "non-finite"),
    ],
)
def test_a_field_outside_its_bound_is_refused_with_a_reason(
    fields: dict[str, object], words: str
) -> None:
    """Each out-of-range field gives a reason that names it."""
    reason = validate_tick(tick(**fields), bounds=BOUNDS)
    assert reason is not None
    assert words in reason


def test_a_tick_at_the_edges_of_its_bounds_is_valid() -> None:
    """The bounds are inclusive."""
    edge = tick(seq=2**63 - 1, ts=T0 + 10**12, bid=1e6, ask=1e6, bid_size=1e9, ask_size=0.0)
    assert validate_tick(edge, T0, bounds=BOUNDS) is None


def test_without_bounds_only_the_store_columns_limit_integers() -> None:
    """The default bounds accept any timestamp a 64-bit column holds, and no more."""
    assert validate_tick(tick(ts=-(2**63))) is None
    assert validate_tick(tick(ts=2**63)) is not None


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"min_ts": 5, "max_ts": 4}, "min_ts"),
        ({"max_ts": 2**63}, "min_ts"),
        ({"max_price": 0.0}, "max_price"),
        ({"max_size": math.nan}, "max_size"),
    ],
)
def test_bad_bounds_are_refused_naming_the_field(fields: dict[str, float], key: str) -> None:
    """An inconsistent or non-positive bound is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=f"^{key}="):
        TickBounds(**fields)  # type: ignore[arg-type]
