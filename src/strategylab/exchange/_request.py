"""Parsing the exchange's JSON request bodies: one object check and one number check.

The order book (``POST /api/orders``, ``/api/orders/lookup``) and the admin fault switch
(``POST /admin/faults``) refuse a bad body the same way: a body that is not a JSON object, an
unknown key, a missing or out-of-range number, each named by its field. Each caller passes its
own error class, any ``(field, message) -> Exception`` (``OrderRequestError``,
``FaultRequestError``), so the HTTP layer keeps telling them apart.

Values are quoted through :func:`strategylab._validate.shown` (at most 60 characters) and numbers
checked by :func:`strategylab._validate.number_problem` (``bool`` is not a number; a huge ``int``
is compared as an ``int``, never overflowing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from strategylab._validate import number_problem, shown

__all__ = ["RequestError", "request_number", "request_object"]

RequestError = Callable[[str, str], Exception]
"""Builds the caller's error from the offending field's name and what is wrong with it."""


def request_object(body: object, keys: frozenset[str], error: RequestError) -> Mapping[str, object]:
    """``body`` as a JSON object with no key outside ``keys``; raises ``error(field, message)``.

    ``field`` is ``"body"`` for a non-object, else the first unknown key (cut to 60 characters;
    ``"body"`` again when the key is not printable, so a hostile key never reaches a log line).
    """
    if not isinstance(body, Mapping):
        raise error("body", "must be a JSON object")
    unknown = sorted(str(key) for key in body if key not in keys)
    if unknown:
        key = unknown[0]
        raise error(
            key[:60] if key.isprintable() else "body",
            f"unknown field {shown(key)} (known: {', '.join(sorted(keys))})",
        )
    return body


def request_number(
    body: Mapping[str, object],
    field: str,
    error: RequestError,
    *,
    low: float,
    high: float,
    default: float | None = None,
) -> float:
    """``body[field]`` (or ``default`` when absent) as a float within ``low..high`` inclusive.

    Raises ``error(field, "is required")`` when it is absent without a default, and
    ``error(field, "must be a number within LOW..HIGH, got VALUE")`` for anything else that is
    not a finite number in range.
    """
    value = body.get(field, default)
    if value is None:
        raise error(field, "is required")
    if number_problem(value, minimum=low, maximum=high) is not None:
        raise error(field, f"must be a number within {low:g}..{high:g}, got {shown(value)}")
    return float(value) + 0.0  # type: ignore[arg-type]  # checked above; -0.0 becomes 0.0
