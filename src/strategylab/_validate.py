"""Field validators: one place for "a finite number of seconds > 0", "an integer within a..b".

Every configuration dataclass and request parser checks its numbers here, so that the same kind of
bad value gets the same message everywhere. The ``*_problem`` functions return the reason a value
is refused (or ``None``) for callers with their own error class (the exchange's request errors);
the others raise :class:`~strategylab.errors.ConfigurationError` naming the key and the value.

With ``type_error=True`` a value of the wrong *type* (a string where a number belongs) raises
``TypeError`` instead, naming the key the same way, for the primitives whose callers are promised
a ``TypeError`` for a type mistake (the circuit breaker's constructor, like Python's own); a
value of the right type but out of range is still a :class:`ConfigurationError`.

``bool`` is never a number here (``True`` is not 1 second). A huge ``int`` is compared as an
``int``, never turned into a ``float`` first (no ``OverflowError``); NaN and infinities are refused.
An error carries the rejected value through :func:`clipped`, so a peer's 500,000-character string
is not echoed whole.

These run once, at construction or when a request is parsed, never per guarded call.

Bottom layer: imports only the standard library and :mod:`strategylab.errors`.
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

from strategylab.errors import ConfigurationError

__all__ = [
    "byte_size",
    "clipped",
    "fraction",
    "integer",
    "integer_problem",
    "number",
    "number_problem",
    "one_line_problem",
    "seconds",
    "shown",
]

_LIMIT = 60


def shown(value: object, limit: int = _LIMIT) -> str:
    """``value`` as an error message may quote it: ``repr``, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clipped(value: object) -> object:
    """``value`` itself for an error to carry, or a short description when it is too long to echo.

    A string, bytes, list or dict whose ``repr`` is over 60 characters becomes its first 60
    characters and its length; an integer over 64 bits becomes its approximate digit count.
    Everything else is returned unchanged, so ``error.value`` is the value given.
    """
    if isinstance(value, str) and len(value) > _LIMIT:
        return f"{value[:_LIMIT]}... ({len(value)} characters)"
    if isinstance(value, bytes | list | dict) and len(repr(value)) > _LIMIT:
        return f"{repr(value)[:_LIMIT]}... ({len(value)} items)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    return value


def _refuse(key: str, value: object, problem: str, *, wrong_type: bool) -> NoReturn:
    if wrong_type:
        raise TypeError(f"{key}={clipped(value)!r}: {problem}")
    raise ConfigurationError(key, clipped(value), problem)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


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
    type_error: bool = False,
) -> float:
    """``value`` as a float; raises :class:`ConfigurationError` naming ``key`` when it is not a
    finite number within ``minimum`` (inclusive unless ``exclusive_minimum``) and ``maximum``
    (``TypeError`` for a non-number with ``type_error``)."""
    problem = number_problem(
        value, minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum
    )
    if problem is not None:
        _refuse(key, value, problem, wrong_type=type_error and not _is_number(value))
    return float(value) + 0.0  # type: ignore[arg-type]  # -0.0 becomes 0.0


def seconds(
    key: str, value: object, *, allow_zero: bool = False, type_error: bool = False
) -> float:
    """A duration in seconds: finite and > 0 (>= 0 with ``allow_zero``); raises
    :class:`ConfigurationError` naming ``key`` (``TypeError`` for a non-number with
    ``type_error``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(key, value, "must be a number of seconds", wrong_type=type_error)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        _refuse(key, value, f"must be a finite number of seconds {bound}", wrong_type=False)
    return float(value) + 0.0


def integer_problem(
    value: object, *, minimum: int | None = None, maximum: int | None = None, unit: str = ""
) -> str | None:
    """Why ``value`` is not an integer within ``minimum..maximum`` (inclusive), or ``None``.

    ``unit`` follows the bounds in the message (``" ms"`` gives "within 0..3600000 ms").
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return None
    if maximum is None:
        return f"must be an integer >= {minimum}{unit}"
    if minimum is None:
        return f"must be an integer <= {maximum}{unit}"
    return f"must be an integer within {minimum}..{maximum}{unit}"


def integer(
    key: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    unit: str = "",
    type_error: bool = False,
) -> int:
    """``value`` when it is an integer within ``minimum..maximum`` (inclusive); raises
    :class:`ConfigurationError` naming ``key`` otherwise (``TypeError`` for a non-integer with
    ``type_error``)."""
    problem = integer_problem(value, minimum=minimum, maximum=maximum, unit=unit)
    if problem is not None:
        wrong_type = isinstance(value, bool) or not isinstance(value, int)
        _refuse(key, value, problem, wrong_type=type_error and wrong_type)
    return value  # type: ignore[return-value]


def fraction(key: str, value: object, *, type_error: bool = False) -> float:
    """A number within 0..1 inclusive; raises :class:`ConfigurationError` naming ``key``
    (``TypeError`` for a non-number with ``type_error``)."""
    return number(key, value, minimum=0, maximum=1, type_error=type_error)


def one_line_problem(value: str) -> str | None:
    """Why ``value`` is not one line of printable text, or ``None`` when it is.

    The rule is :meth:`str.isprintable`: no control character (``\\n``, ``\\r``, ESC, BEL, ...),
    no line or paragraph separator, no format character. A kill reason follows it in
    ``strategylab kill --reason`` and in the status service's ``POST /admin/kill``, so that one
    reason is refused the same way by both and a log line or terminal is never steered by it.
    """
    if value.isprintable():
        return None
    return "must be one line of printable text (no control characters)"


_BYTE_SIZE = re.compile(r"\s*(\d+)\s*(?:([kKmMgGtT])(i?)([bB]?))?\s*")
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def byte_size(key: str, value: object, *, maximum: int) -> int:
    """Bytes in ``value``: an int, or a string of a whole number with an optional unit, 1 to
    ``maximum``. Units, case-insensitive: ``K``, ``M``, ``G``, ``T`` and ``KiB`` ... ``TiB``
    are binary (x 1024, 1024^2, ...: Docker's ``--memory 512m``, IEC 80000-13); ``kB``, ``MB``,
    ``GB``, ``TB`` are decimal (x 1000, 1000^2, ...: SI). ``512M`` and ``512MiB`` are
    536,870,912; ``512MB`` is 512,000,000.

    Raises :class:`ConfigurationError` naming ``key`` for another form, 0, or more than
    ``maximum`` (a digit string far past it is refused before ``int()``).
    """
    given = value
    if isinstance(value, str):
        match = _BYTE_SIZE.fullmatch(value)
        if match is None:
            raise ConfigurationError(
                key,
                clipped(value),
                "must be bytes: a whole number, optionally with K, M, G, T "
                "(x 1024), KiB..TiB (x 1024) or kB..TB (x 1000), e.g. 512M",
            )
        digits, letter, binary, byte = match.groups()
        if len(digits.lstrip("0")) > len(str(maximum)) + 1:
            raise ConfigurationError(key, clipped(value), _at_most(maximum))
        size = int(digits)
        if letter is not None:
            if binary and not byte:
                raise ConfigurationError(key, clipped(value), "a binary unit ends in iB (MiB)")
            base = 1000 if (byte and not binary) else 1024
            size *= base ** _POWERS[letter.lower()]
        value = size
    size = integer(key, value, minimum=1)
    if size > maximum:
        raise ConfigurationError(key, clipped(given), _at_most(maximum))
    return size


def _at_most(maximum: int) -> str:
    """``must be at most 1024T (1 PiB, 1125899906842624 bytes)`` and the like."""
    for letter, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        unit = 1024**power
        if maximum >= unit and maximum % unit == 0:
            human = f"{maximum // unit}{letter}"
            if maximum == 1 << 50:
                human += " (1 PiB"
                return f"must be at most {human}, {maximum} bytes)"
            return f"must be at most {human} ({maximum} bytes)"
    return f"must be at most {maximum} bytes"
