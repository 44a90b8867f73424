"""strategylab._validate: the shared field validators, their messages, type_error and clipping."""

from __future__ import annotations

import math

import pytest

from strategylab import _validate
from strategylab.errors import ConfigurationError


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "1"])
def test_seconds_refuses_what_is_not_a_positive_duration(value: object) -> None:
    """seconds() refuses zero, negatives, NaN, infinity, bool and strings, naming the key."""
    with pytest.raises(ConfigurationError) as info:
        _validate.seconds("timeout", value)
    assert info.value.key == "timeout"


def test_seconds_allow_zero_accepts_zero() -> None:
    """allow_zero admits 0 and returns a float."""
    assert _validate.seconds("delay", 0, allow_zero=True) == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: _validate.seconds("t", "x", type_error=True),
            "t='x': must be a number of seconds",
        ),
        (
            lambda: _validate.integer("n", 1.5, minimum=1, type_error=True),
            "n=1.5: must be an integer",
        ),
        (
            lambda: _validate.number("p", None, minimum=0, type_error=True),
            "p=None: must be a number",
        ),
        (lambda: _validate.fraction("f", [1], type_error=True), "f=[1]: must be a number"),
    ],
)
def test_type_error_mode_raises_type_error_for_the_wrong_type(call: object, message: str) -> None:
    """With type_error=True a value of the wrong type raises TypeError naming the key."""
    with pytest.raises(TypeError) as info:
        call()  # type: ignore[operator]
    assert str(info.value) == message
    assert not isinstance(info.value, ConfigurationError)


def test_type_error_mode_keeps_configuration_error_for_a_bad_range() -> None:
    """A number of the right type but out of range is still a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="must be an integer >= 1"):
        _validate.integer("n", 0, minimum=1, type_error=True)
    with pytest.raises(ConfigurationError, match=r"> 0 and <= 100"):
        _validate.number("p", 0, minimum=0, exclusive_minimum=True, maximum=100, type_error=True)


def test_integer_unit_follows_the_bounds() -> None:
    """unit is appended to the range in the message."""
    with pytest.raises(ConfigurationError, match=r"within 0\.\.10 ms \(an hour\)$"):
        _validate.integer("latency", 11, minimum=0, maximum=10, unit=" ms (an hour)")


def test_a_huge_integer_is_compared_exactly_and_clipped_in_the_error() -> None:
    """10**400 is out of range without an OverflowError, and the error carries a short summary."""
    with pytest.raises(ConfigurationError) as info:
        _validate.number("qty", 10**400, maximum=1e9)
    assert info.value.value == "<an integer of about 401 digits>"


def test_a_long_string_is_clipped_in_the_error() -> None:
    """A 500,000-character value is not echoed whole."""
    with pytest.raises(ConfigurationError) as info:
        _validate.integer("n", "x" * 500_000)
    assert info.value.value == "x" * 60 + "... (500000 characters)"
    assert len(str(info.value)) < 200


def test_clipped_returns_short_values_unchanged() -> None:
    """A short value is carried as itself, so error.value is the value given."""
    marker = object()
    assert _validate.clipped(marker) is marker
    assert _validate.clipped(-3) == -3


def test_negative_zero_becomes_zero() -> None:
    """number() returns 0.0 for -0.0."""
    assert math.copysign(1.0, _validate.number("x", -0.0)) == 1.0
