"""Guards for the HTTP control surfaces (the exchange's admin API, the proxy API).

Two concerns, shared by both aiohttp apps:

* **Bounded input.** Every size a peer controls has a limit (:class:`HttpLimits`): the body
  (``client_max_size``, and a 413 from the ``Content-Length`` header before any byte of the body
  is read), the JSON nesting depth and the digits of a number (:func:`loads`, a 400 naming
  ``body``). Python's own limits (a :class:`RecursionError` at ~1,000 levels, a 4,300-digit
  ``int``) would otherwise surface as a 500.
* **No browser-driven admin.** :func:`refusal` answers why a request must not reach an admin
  route: a browser ``Origin`` not explicitly allowed (403), a browser ``User-Agent`` as Toxiproxy
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
    "HttpLimits",
    "Refusal",
    "loads",
    "read_json",
    "refusal",
    "too_large",
]

BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose body an admin route reads as JSON."""

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
    ``Infinity``, a number longer than ``max_digits`` characters or nesting deeper than
    ``max_depth``. The decoder never recurses past ``max_depth`` + 1 levels' worth of work: a
    deeper document is refused by Python's recursion guard, caught here.
    """
    digits = limits.max_digits

    def number(text: str, kind: type[float | int]) -> float | int:
        if len(text.lstrip("-")) > digits:
            raise _bad_body(f"a number has more than {digits} digits")
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad_body(f"number {text[:20]} is out of range")
        return value

    def constant(text: str) -> object:
        raise _bad_body(f"{text} is not JSON")

    try:
        text = raw.decode("utf-8")
        value: object = json.loads(
            text,
            parse_int=lambda t: number(t, int),
            parse_float=lambda t: number(t, float),
            parse_constant=constant,
        )
    except UnicodeDecodeError as exc:
        raise _bad_body(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise _bad_body(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise _bad_body(f"nesting deeper than {limits.max_depth} levels") from None
    if _depth(value) > limits.max_depth:
        raise _bad_body(f"nesting deeper than {limits.max_depth} levels")
    return value


def _depth(value: object) -> int:
    """Nesting depth of decoded JSON, iteratively (a scalar is 0)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


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
    """Why ``request`` must not reach an admin route, or ``None`` when it may."""
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
