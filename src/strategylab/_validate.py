"""Field validators: one place for "a finite number of seconds > 0", "an integer within a..b".

Every configuration dataclass and request parser checks its numbers here, so that the same kind of
bad value gets the same message everywhere. The ``*_problem`` functions return the reason a value
is refused (or ``None``) for callers with their own error class (the exchange's request errors);
the others raise :class:`~strategylab.errors.ConfigurationError` naming the key and the value.

``bool`` is never a number here (``True`` is not 1 second). A huge ``int`` is compared as an
``int``, never turned into a ``float`` first (no ``OverflowError``); NaN and infinities are refused.

Bottom layer: imports only the standard library and :mod:`strategylab.errors`.
"""

from __future__ import annotations

import math

from strategylab.errors import ConfigurationError

__all__ = [
    "fraction",
    "integer",
    "integer_problem",
    "number",
    "number_problem",
    "seconds",
    "shown",
]


def shown(value: object, limit: int = 60) -> str:
    """``value`` as an error message may quote it: ``repr``, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number_problem(
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> str | None:
    """Why ``value`` is not a finite number within the bounds, or ``None`` when it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low_ok = minimum is None or (value > minimum if exclusive_minimum else value >= minimum)
    if low_ok and (maximum is None or value <= maximum):
        return None
    low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    high = "" if maximum is None else f"<= {maximum:g}"
    return "must be a finite number " + " and ".join(part for part in (low, high) if part)


def number(
    key: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """``value`` as a float; raises :class:`ConfigurationError` naming ``key`` when it is not a
    finite number within ``minimum`` (inclusive unless ``exclusive_minimum``) and ``maximum``."""
    problem = number_problem(
        value, minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum
    )
    if problem is not None:
        raise ConfigurationError(key, value, problem)
    return float(value) + 0.0  # type: ignore[arg-type]  # -0.0 becomes 0.0


def seconds(key: str, value: object, *, allow_zero: bool = False) -> float:
    """A duration in seconds: finite and > 0 (>= 0 with ``allow_zero``); raises
    :class:`ConfigurationError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(key, value, "must be a number of seconds")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(key, value, f"must be a finite number of seconds {bound}")
    return float(value) + 0.0


def integer_problem(
    value: object, *, minimum: int | None = None, maximum: int | None = None
) -> str | None:
    """Why ``value`` is not an integer within ``minimum..maximum`` (inclusive), or ``None``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return None
    if maximum is None:
        return f"must be an integer >= {minimum}"
    if minimum is None:
        return f"must be an integer <= {maximum}"
    return f"must be an integer within {minimum}..{maximum}"


def integer(
    key: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` when it is an integer within ``minimum..maximum`` (inclusive); raises
    :class:`ConfigurationError` naming ``key`` otherwise."""
    problem = integer_problem(value, minimum=minimum, maximum=maximum)
    if problem is not None:
        raise ConfigurationError(key, value, problem)
    return value  # type: ignore[return-value]


def fraction(key: str, value: object) -> float:
    """A number within 0..1 inclusive; raises :class:`ConfigurationError` naming ``key``."""
    return number(key, value, minimum=0, maximum=1)
