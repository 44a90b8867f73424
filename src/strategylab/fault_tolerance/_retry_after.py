"""Retry-After: the wait that a server or a circuit breaker asks for, read from its exception.

:class:`~strategylab.fault_tolerance.RetryPolicy` asks :func:`retry_after_hint` after every
retryable failure (never on the success path). A hint *replaces* the computed backoff for the next
sleep, as Polly v8's ``DelayGenerator`` does: the wait is exact, without jitter and not capped by
``max_delay``; the policy's deadline and test mode still apply, and an infinite wait means that a
retry cannot succeed.

Sources, tried on the exception and then along its ``__cause__`` chain (an error translated at a
boundary with ``raise OurError(...) from exc`` keeps the server's answer):

- an attribute ``retry_after`` holding seconds (an ``int``, a ``float`` or a
  :class:`datetime.timedelta`), as :class:`~strategylab.errors.CircuitOpenError` carries;
- an HTTP 429 (Too Many Requests) or 503 (Service Unavailable) error whose status is
  ``exc.status`` (aiohttp), ``exc.status_code``, ``exc.response.status_code`` (httpx, requests)
  or ``exc.response.status``, and whose headers (``exc.headers`` or ``exc.response.headers``, any
  mapping, looked up case-insensitively) carry ``Retry-After`` as delay-seconds or an HTTP-date
  (RFC 9110 §10.2.3).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re

from strategylab.clock import SYSTEM_CLOCK, Clock

__all__ = ["parse_retry_after", "retry_after_hint"]

_HTTP_RETRY_AFTER_STATUSES = frozenset({429, 503})
_MAX_CAUSES = 8
"""How far down the ``__cause__`` chain a hint is looked for (a chain may be long or cyclic)."""
_DELAY_SECONDS = re.compile(r"[0-9]+")
_MAX_DIGITS = 400
"""Digits past which delay-seconds exceed the largest float (about 1.8e308)."""


def parse_retry_after(value: str | bytes, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value (RFC 9110 §10.2.3).

    ``value`` is delay-seconds (ASCII digits: ``"120"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), which is read relative to ``now`` (seconds since the
    epoch, as ``clock.time()`` gives); a date in the past means 0. Anything else (empty, negative,
    fractional, a malformed date) is no hint: ``None``. A number of seconds too large for a float
    gives ``math.inf``.
    """
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if _DELAY_SECONDS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            # Longer than any float (and than int() converts by default): an absurd wait.
            return math.inf
        try:
            return float(int(digits))
        except OverflowError:
            return math.inf
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 5322's "-0000" (no zone information) parses naive; HTTP dates are always GMT.
        when = when.replace(tzinfo=dt.UTC)
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, ValueError, OSError):
        return None


def retry_after_hint(exc: BaseException, /, *, clock: Clock = SYSTEM_CLOCK) -> float | None:
    """The seconds ``exc`` (or an exception in its ``__cause__`` chain) asks the caller to wait.

    ``RetryPolicy``'s default ``retry_after`` extractor (the policy passes its own ``clock``,
    whose ``time()`` an HTTP-date is measured against). ``None`` means no hint: the policy uses
    its backoff. ``math.inf`` (a forced-open breaker's ``retry_after``, or an absurd header) means
    a retry cannot succeed. See the module docstring for the sources.
    """
    current: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if current is None:
            break
        hint = _own_hint(current, clock)
        if hint is not None:
            return hint
        current = current.__cause__
    return None


def _own_hint(exc: BaseException, clock: Clock) -> float | None:
    hint = _seconds(_attribute(exc, "retry_after"), clock)
    if hint is not None:
        return hint
    response = _attribute(exc, "response")
    if _status(exc, response) not in _HTTP_RETRY_AFTER_STATUSES:
        return None
    for headers in (_attribute(exc, "headers"), _attribute(response, "headers")):
        header = _header(headers, "Retry-After")
        if header is not None:
            return parse_retry_after(header, now=clock.time())
    return None


def _attribute(obj: object, name: str) -> object:
    # Some libraries' properties raise (httpx's ``request`` on an error that has none): a hint
    # that cannot be read is no hint, never a new failure on the retry path.
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _seconds(value: object, clock: Clock) -> float | None:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, str | bytes):
        return parse_retry_after(value, now=clock.time())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    # NaN and negative waits are nonsense, not a hint.
    return seconds if seconds >= 0 else None


def _status(exc: BaseException, response: object) -> int | None:
    for obj, name in (
        (exc, "status"),
        (exc, "status_code"),
        (response, "status_code"),
        (response, "status"),
    ):
        value = _attribute(obj, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    return None


def _header(headers: object, name: str) -> str | bytes | None:
    if headers is None:
        return None
    # Case-insensitive mappings (aiohttp's CIMultiDict, httpx.Headers, requests'
    # CaseInsensitiveDict, email.message.Message) answer get() directly; others are scanned.
    get = _attribute(headers, "get")
    if callable(get):
        try:
            value = get(name)
        except Exception:
            value = None
        if isinstance(value, str | bytes):
            return value
    items = _attribute(headers, "items")
    if not callable(items):
        return None
    wanted = name.lower()
    try:
        for key, value in items():
            text = key.decode("latin-1") if isinstance(key, bytes) else key
            if isinstance(text, str) and text.lower() == wanted and isinstance(value, str | bytes):
                return value
    except Exception:
        return None
    return None
