"""Guards for the HTTP surfaces (the exchange's order and admin APIs, the proxy API).

Two concerns, shared by both aiohttp apps:

* **Bounded input.** Every size a peer controls has a limit (:class:`HttpLimits`): the body
  (``client_max_size``, and a 413 from the ``Content-Length`` header before any byte of the body
  is read), the JSON nesting depth and the digits of a number (:func:`loads`, a 400 naming
  ``body``). Python's own limits (a :class:`RecursionError` at ~1,000 levels, a 4,300-digit
  ``int``) would otherwise surface as a 500. :func:`loads` also refuses what JSON allows but no
  handler can use safely: a key given twice (which one wins differs between parsers, so a
  validator and the code after it could see different values) and a lone UTF-16 surrogate
  (``"\\ud800"``: a string that cannot be encoded again, so answering or logging it fails later).
* **No browser-driven requests.** :func:`refusal` answers why a request must not reach a route:
  a browser ``Origin`` not explicitly allowed (403), a browser ``User-Agent`` as Toxiproxy
  refuses it (403), or a body that is not ``application/json`` (415, which also shuts out the
  "simple" cross-site ``text/plain`` and form POSTs that need no CORS preflight).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from strategylab.errors import ConfigurationError

__all__ = [
    "BODY_METHODS",
    "LIMITS_KEY",
    "LIMIT_FLAGS",
    "HttpLimits",
    "Refusal",
    "loads",
    "read_json",
    "refusal",
    "too_large",
]

BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose body a guarded route reads as JSON."""

_BROWSER_AGENT: Final = "mozilla/"
_CROSS_SITE: Final = frozenset({"cross-site", "same-site"})


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """Limits on what an HTTP peer sends.

    ``max_body`` bytes per request body (also aiohttp's ``client_max_size``); ``max_depth``
    levels of JSON nesting (``{"a": [1]}`` is 2); ``max_digits`` characters in one JSON number;
    ``allowed_origins`` the browser origins (``"https://host:port"``) that may call admin routes
    (none by default). Invalid values raise :class:`ConfigurationError` naming the field.
    """

    max_body: int = 1 << 20
    max_depth: int = 32
    max_digits: int = 64
    allowed_origins: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins", frozenset(self.allowed_origins))
        if not 1 <= self.max_body <= 1 << 30:
            raise ConfigurationError("max_body", self.max_body, "must be within 1..2**30 bytes")
        if not 1 <= self.max_depth <= 512:
            raise ConfigurationError("max_depth", self.max_depth, "must be within 1..512 levels")
        if not 1 <= self.max_digits <= 4000:
            raise ConfigurationError("max_digits", self.max_digits, "must be within 1..4000")
        for origin in self.allowed_origins:
            if not origin or origin == "null" or "://" not in origin:
                raise ConfigurationError(
                    "allowed_origins", origin, "must be a 'scheme://host[:port]' origin"
                )


LIMITS_KEY: Final = web.AppKey("http_limits", HttpLimits)
LIMIT_FLAGS: Final = {
    "max_depth": "--max-json-depth",
    "max_digits": "--max-number-digits",
    "allowed_origins": "--allow-origin",
}
"""The command-line options of :class:`HttpLimits` fields spelled otherwise (exchange, proxy)."""
"""Where an app keeps its :class:`HttpLimits` for :func:`read_json`."""


async def read_json(request: web.Request) -> object:
    """The request body decoded by :func:`loads` within the app's limits (:data:`LIMITS_KEY`,
    default :class:`HttpLimits`). A body over ``client_max_size`` raises aiohttp's
    ``HTTPRequestEntityTooLarge`` (413); bad JSON raises :class:`ConfigurationError`."""
    limits = request.app.get(LIMITS_KEY) or HttpLimits()
    return loads(await request.read(), limits)


def _bad_body(reason: str) -> ConfigurationError:
    return ConfigurationError("body", "<request body>", reason)


def loads(raw: bytes, limits: HttpLimits) -> object:
    """Decode a JSON body within ``limits``.

    Raises :class:`ConfigurationError` (field ``body``) for invalid UTF-8 or JSON, ``NaN`` or
    ``Infinity``, a number longer than ``max_digits`` characters, nesting deeper than
    ``max_depth``, a key repeated in one object or a lone surrogate in a string or key (the
    message names where). The decoder never recurses past ``max_depth`` + 1 levels' worth of
    work: a deeper document is refused by Python's recursion guard, caught here.
    """
    digits = limits.max_digits
    try:
        text = raw.decode("utf-8")
        value: object = json.loads(
            text,
            parse_int=lambda t: _number(t, int, digits),
            parse_float=lambda t: _number(t, float, digits),
            parse_constant=_constant,
            object_pairs_hook=_unique,
        )
    except UnicodeDecodeError as exc:
        raise _bad_body(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise _bad_body(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise _bad_body(f"nesting deeper than {limits.max_depth} levels") from None
    _check(value, limits.max_depth)
    return value


def _number(text: str, kind: type[float | int], digits: int) -> float | int:
    if len(text.lstrip("-")) > digits:
        raise _bad_body(f"a number has more than {digits} digits")
    value = kind(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad_body(f"number {text[:20]} is out of range")
    return value


def _constant(text: str) -> object:
    raise _bad_body(f"{text} is not JSON")


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object's pairs as a dict; a key given twice is refused (parsers differ on which wins,
    so a check and the code after it could read different values)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _bad_body(f"key {_shown(key)} is repeated")
            seen.add(key)
    return value


def _shown(text: str) -> str:
    """``text`` as a message may quote it: ``repr`` (escapes controls), at most 60 characters."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_Trail = tuple["_Trail", str | int] | None


def _where(trail: _Trail) -> str:
    """A JSON path such as ``$.orders[3].id`` (keys shortened and escaped) for a message."""
    parts: list[str] = []
    while trail is not None:
        trail, step = trail
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            key = step if step.isascii() and step.isprintable() else repr(step)
            parts.append("." + (key if len(key) <= 40 else key[:37] + "..."))
    return "$" + "".join(reversed(parts))


def _check(value: object, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` and any lone surrogate, iteratively; the path
    of an offending string is built only when there is one."""
    stack: list[tuple[object, int, _Trail]] = [(value, 0, None)]
    while stack:
        item, level, trail = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                raise _bad_body(f"lone surrogate in the string at {_where(trail)}")
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    raise _bad_body(f"lone surrogate in a key of {_where(trail)}")
                stack.append((child, level + 1, (trail, key)))
        elif isinstance(item, list):
            stack.extend((child, level + 1, (trail, i)) for i, child in enumerate(item))
        else:
            continue
        if level + 1 > max_depth:
            raise _bad_body(f"nesting deeper than {max_depth} levels")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: an HTTP ``status``, the header named in ``field``, a reason."""

    status: int
    field: str
    reason: str


def too_large(request: web.Request, limits: HttpLimits) -> Refusal | None:
    """A 413 when the declared ``Content-Length`` exceeds ``max_body`` (refused at the header;
    a chunked body is cut off by aiohttp's ``client_max_size`` while it is read)."""
    length = request.content_length
    if length is not None and length > limits.max_body:
        return Refusal(413, "Content-Length", f"body of {length} bytes > {limits.max_body}")
    return None


def refusal(request: web.Request, limits: HttpLimits) -> Refusal | None:
    """Why ``request`` must not reach a guarded route, or ``None`` when it may."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in limits.allowed_origins
    if origin is not None and not allowed:
        return Refusal(403, "Origin", f"origin {origin[:100]!r} is not allowed")
    if not allowed:
        agent = request.headers.get("User-Agent", "")
        if agent.lower().startswith(_BROWSER_AGENT):
            return Refusal(403, "User-Agent", "browser requests are not allowed")
        if request.headers.get("Sec-Fetch-Site", "").lower() in _CROSS_SITE:
            return Refusal(403, "Sec-Fetch-Site", "cross-site requests are not allowed")
    # A body-less POST (``/reset``) needs no content type; a body must be declared JSON.
    if (
        request.method in BODY_METHODS
        and request.body_exists
        and request.content_type != "application/json"
    ):
        kind = request.headers.get("Content-Type", "none")[:100]
        return Refusal(415, "Content-Type", f"must be application/json, not {kind!r}")
    return too_large(request, limits)
