"""The subset of Toxiproxy's HTTP API that drives a :class:`ProxyServer`, on aiohttp.

==========================================  =====================================================
route                                       answer
==========================================  =====================================================
``GET /version``                            ``{"version": ...}``
``GET /proxies``                            ``{name: proxy, ...}``
``POST /proxies``                           create ``{name, listen, upstream, enabled}``; 201
``POST /populate``                          create or replace a list of proxies; 201
``GET /proxies/{proxy}``                    the proxy with its toxics
``POST|PATCH /proxies/{proxy}``             update ``enabled``, ``listen``, ``upstream``
``DELETE /proxies/{proxy}``                 204
``GET /proxies/{proxy}/toxics``             ``[toxic, ...]``
``POST /proxies/{proxy}/toxics``            create ``{name?, type, stream?, toxicity?, attributes}``
``GET /proxies/{proxy}/toxics/{toxic}``     the toxic
``POST|PATCH /proxies/{proxy}/toxics/{t}``  update ``toxicity`` and some ``attributes``
``DELETE /proxies/{proxy}/toxics/{toxic}``  204
``POST /reset``                             remove all toxics, enable all proxies; 204
==========================================  =====================================================

Changes need the admin token. With ``--admin-token-file PATH`` (or ``$STRATEGYLAB_ADMIN_TOKEN``;
``--admin-token T`` works too but is visible in the process list), every request that can change
something (``POST``, ``PATCH``, ``DELETE``, ``/reset`` included) must carry ``Authorization: Bearer
T``: a missing or wrong token, or a header that is not UTF-8, is a 401. With no token the API is
closed to changes (403 naming how to open it) unless ``--admin-open`` is given, which is refused
unless the API listens on a loopback address (the default, 127.0.0.1). ``GET`` stays open in every
mode: it changes nothing and shows no secret. Every refusal is logged as a security event.

Every route is an admin route and is guarded (:mod:`strategylab._http_guard`): a browser
``Origin`` not in ``--allow-origin`` or a browser ``User-Agent`` is a 403 (as Toxiproxy), a body
that is not ``application/json`` a 415, a body over ``--max-body`` bytes a 413 (from the
``Content-Length`` header when there is one), JSON nested deeper than ``--max-json-depth`` or with
a number longer than ``--max-number-digits`` a 400. Every request is all or nothing: it is
validated completely and every listener it needs is bound before anything changes, so a 400 (a bad
field, or a listen address that cannot be bound) leaves every proxy as it was (``/populate``,
``PATCH``, ``/reset`` included). A request aiohttp cannot even parse (a duplicate
``Content-Type``, ``Content-Length: -1``) is a 400 logged as one escaped WARNING line by
``strategylab.chaos.proxy_api.http``, without a traceback.

A proxy is ``{name, listen, upstream, enabled, toxics}``; a toxic is ``{name, type, stream,
toxicity, attributes}``. Names of both are 1..128 characters of ``A-Z a-z 0-9 . _ -`` (the first a
letter, digit or ``_``), so that every name can be addressed in a URL; toxic attributes are
bounded (durations at most an hour; see :mod:`strategylab.chaos._toxics`). Errors are
Toxiproxy's ``{"error": message, "status": code}``: 404 for an unknown proxy or toxic, 409 for a
duplicate name, 400 for bad input, with the field named.

Run it as its own process (:func:`run_proxy_process` over a :class:`ProxyApiConfig`)::

    strategylab proxy --port 0 [--host 127.0.0.1] [--seed N] [--config F]
        [--admin-token-file PATH | --admin-open] [--log-level LEVEL] [--data-dir D]
        [--max-body BYTES] [--max-json-depth N] [--max-number-digits N] [--allow-origin O ...]

It prints one JSON line, ``{"event":"listening","port":N}``, then serves until SIGTERM or SIGINT.
``--config`` is a JSON list of proxies as ``/populate`` takes it (a regular UTF-8 file of at most
16 MiB, within the JSON limits). Exit status: 0 after a signal; 2 for bad options or a bad
``--config`` (one line naming the file and the fault); 1 when the API's or a proxy's address
cannot be bound. Errors are one line, ``strategylab proxy: error: ...``, never a traceback. With
``--data-dir D`` it also logs to ``D/logs/proxy.log``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import random
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from strategylab._files import UnsafePathError, refuse_unsafe_dirs
from strategylab._http_guard import LIMITS_KEY, HttpLimits, loads, read_json, refusal
from strategylab._layout import DataLayout
from strategylab._listen import listen_error
from strategylab._logging import configure_logging, escape
from strategylab._validate import integer
from strategylab.errors import ConfigurationError

from ._proxy import (
    ProxyExistsError,
    ProxyNotFoundError,
    ProxyServer,
    ToxicExistsError,
    ToxicNotFoundError,
    parse_address,
    validate_records,
)
from ._toxics import Toxic, check_name, shown

__all__ = [
    "VERSION",
    "ProxyApiAccess",
    "ProxyApiConfig",
    "create_app",
    "run_proxy_process",
    "serve",
]

VERSION: Final = "2.9.0-strategylab"
"""Reported by ``GET /version``: the Toxiproxy API level this subset follows."""

_PROG: Final = "strategylab proxy"
_READ_METHODS: Final = frozenset({"GET", "HEAD"})

_log = logging.getLogger("strategylab.chaos.proxy_api")
_http_log = logging.getLogger("strategylab.chaos.proxy_api.http")
"""aiohttp's server logger for this API (its errors), instead of ``aiohttp.server``."""

_MAX_CONFIG_BYTES: Final = 16 << 20
_MAX_REASON: Final = 300


def _malformed_in_one_line(record: logging.LogRecord) -> bool:
    """Turn aiohttp's record of a request it could not parse into one WARNING line.

    A duplicate ``Content-Type``, a ``Content-Length: -1`` or a bad request line is the peer's
    fault and is answered 400 before any handler or middleware runs; aiohttp logs it at ERROR
    with a parser traceback. Keep the peer's address and the parser's reason (escaped by the
    log formatter); drop the traceback. Every other record (a handler's 500) is left alone.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "malformed HTTP request from %s answered %s: %s"
        reason = " ".join(str(exc.message).split())  # the parser's layout, on one line
        record.args = (remote, exc.code, reason[:_MAX_REASON])
        record.exc_info = None
        record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


_http_log.addFilter(_malformed_in_one_line)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyApiAccess:
    """Who may change proxies through the API.

    With ``admin_token`` every ``POST``, ``PATCH`` and ``DELETE`` needs ``Authorization: Bearer
    TOKEN``; with none they are refused (403) unless ``admin_open``. ``GET`` is always open.
    The default is closed. Contradictory values raise :class:`ConfigurationError`.
    """

    admin_token: str | None = field(default=None, repr=False)  # a secret: never in a repr
    admin_open: bool = False

    def __post_init__(self) -> None:
        if self.admin_token is not None and not self.admin_token:
            raise ConfigurationError("admin_token", "", "must not be empty (None = no token)")
        if self.admin_open and self.admin_token is not None:
            raise ConfigurationError(
                "admin_open", self.admin_open, "contradicts admin_token (open means no token)"
            )


_SERVER_KEY: Final = web.AppKey("proxy_server", ProxyServer)
_ACCESS_KEY: Final = web.AppKey("proxy_api_access", ProxyApiAccess)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (ProxyNotFoundError, ToxicNotFoundError) as exc:
        return _error(404, str(exc))
    except (ProxyExistsError, ToxicExistsError) as exc:
        return _error(409, str(exc))
    except ConfigurationError as exc:
        return _error(400, str(exc))
    except OSError as exc:
        # Binding a listen address failed (in use, not local): the request asked for it, and
        # nothing changed (ProxyServer binds before it applies).
        return _error(400, f"listen: {exc.strerror or exc}")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise


def _security_event(request: web.Request, what: str) -> None:
    # The path is the peer's text: the log formatter (strategylab._logging) escapes it.
    _log.warning(
        "security event: %s on %s %s from %s", what, request.method, request.path, request.remote
    )


def _unauthorized(request: web.Request) -> web.Response | None:
    """``None`` when ``request`` may proceed, else the 401 or 403 to answer."""
    if request.method in _READ_METHODS:
        return None
    access = request.app[_ACCESS_KEY]
    token = access.admin_token
    if token is None:
        if access.admin_open:
            return None
        _security_event(request, "change while the API is closed")
        return _error(
            403,
            "proxy API closed to changes: start it with --admin-token-file PATH (or "
            "$STRATEGYLAB_ADMIN_TOKEN), or --admin-open on a loopback address",
        )
    given = request.headers.get("Authorization", "")
    try:
        # aiohttp hands undecodable header bytes over as surrogates: not a token.
        given_bytes = given.encode()
    except UnicodeEncodeError:
        _security_event(request, "malformed (non-UTF-8) admin token")
        return _challenge(_error(401, "Authorization: not UTF-8"))
    if hmac.compare_digest(given_bytes, f"Bearer {token}".encode()):
        return None
    _security_event(request, f"{'wrong' if given else 'missing'} admin token")
    return _challenge(_error(401, "Authorization: admin token missing or wrong"))


def _challenge(response: web.Response) -> web.Response:
    response.headers["WWW-Authenticate"] = 'Bearer realm="strategylab proxy"'
    return response


@web.middleware
async def _guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    refused = refusal(request, request.app[LIMITS_KEY])
    if refused is not None:
        if refused.status == 403:  # browser-driven
            _security_event(request, f"refused {refused.field}")
        return _error(refused.status, f"{refused.field}: {refused.reason}")
    denied = _unauthorized(request)  # not `or`: an empty aiohttp response is falsy
    if denied is not None:
        return denied
    return await handler(request)


async def _body(request: web.Request) -> dict[str, object]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ConfigurationError("body", type(body).__name__, "must be a JSON object")
    return body


def _optional(body: Mapping[str, object], key: str, kind: type, *, default: object) -> object:
    if key not in body:
        return default
    value = body[key]
    valid = (
        isinstance(value, bool)
        if kind is bool
        else (isinstance(value, kind) and not isinstance(value, bool))
    )
    if not valid:
        raise ConfigurationError(key, shown(value), f"must be a {kind.__name__}")
    return value


def _string(body: Mapping[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(key, shown(value), "is required (a non-empty string)")
    return value


def _server(request: web.Request) -> ProxyServer:
    return request.app[_SERVER_KEY]


async def _version(request: web.Request) -> web.Response:  # noqa: ARG001
    return web.json_response({"version": VERSION})


async def _list_proxies(request: web.Request) -> web.Response:
    proxies = _server(request).proxies
    return web.json_response({name: proxy.to_json() for name, proxy in proxies.items()})


async def _create_proxy(request: web.Request) -> web.Response:
    body = await _body(request)
    name, listen, upstream, enabled = _proxy_config(body)
    proxy = await _server(request).create(name, listen=listen, upstream=upstream, enabled=enabled)
    return web.json_response(proxy.to_json(), status=201)


def _proxy_config(body: Mapping[str, object]) -> tuple[str, str, str, bool]:
    """``(name, listen, upstream, enabled)`` of a proxy record, every field checked."""
    listen = str(_optional(body, "listen", str, default="127.0.0.1:0"))
    upstream = _string(body, "upstream")
    parse_address("listen", listen, allow_port_zero=True)
    parse_address("upstream", upstream, allow_port_zero=False)
    return (
        check_name("name", body.get("name")),
        listen,
        upstream,
        bool(_optional(body, "enabled", bool, default=True)),
    )


async def _populate(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, list):
        raise ConfigurationError("body", type(body).__name__, "must be a JSON list of proxies")
    # All or nothing: ProxyServer validates every record and binds before it replaces any.
    proxies = await _server(request).populate(body)
    return web.json_response({"proxies": [proxy.to_json() for proxy in proxies]}, status=201)


async def _get_proxy(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    return web.json_response(proxy.to_json())


async def _update_proxy(request: web.Request) -> web.Response:
    name = request.match_info["proxy"]
    _server(request).get(name)  # a 404 before a 400
    body = await _body(request)
    listen = _optional(body, "listen", str, default=None)
    upstream = _optional(body, "upstream", str, default=None)
    enabled = _optional(body, "enabled", bool, default=None)
    proxy = await _server(request).update(
        name,
        listen=listen if isinstance(listen, str) else None,
        upstream=upstream if isinstance(upstream, str) else None,
        enabled=enabled if isinstance(enabled, bool) else None,
    )
    return web.json_response(proxy.to_json())


async def _delete_proxy(request: web.Request) -> web.Response:
    await _server(request).delete(request.match_info["proxy"])
    return web.Response(status=204)


async def _list_toxics(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    return web.json_response([toxic.to_json() for toxic in proxy.toxics])


def _attributes(body: Mapping[str, object]) -> Mapping[str, object]:
    attributes = body.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ConfigurationError("attributes", attributes, "must be a JSON object")
    return attributes


def _toxicity(body: Mapping[str, object], default: float | None) -> float | None:
    value = body.get("toxicity", default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError("toxicity", shown(value), "must be a number between 0 and 1")
    return value  # range checked by Toxic (never float() first: a huge int overflows it)


async def _create_toxic(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    body = await _body(request)
    name = _optional(body, "name", str, default=None)
    toxic = Toxic.build(
        _string(body, "type"),
        name=name if isinstance(name, str) else None,
        stream=str(_optional(body, "stream", str, default="downstream")),
        toxicity=_toxicity(body, 1.0) or 0.0,  # never None: the default is 1.0
        attributes=_attributes(body),
    )
    proxy.put_toxic(toxic)
    return web.json_response(toxic.to_json())


async def _get_toxic(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    return web.json_response(proxy.get_toxic(request.match_info["toxic"]).to_json())


async def _update_toxic(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    current = proxy.get_toxic(request.match_info["toxic"])
    body = await _body(request)
    for key in ("type", "stream", "name"):
        if key in body and body[key] != getattr(current, key):
            raise ConfigurationError(
                key, shown(body[key]), "cannot be changed; delete and re-create"
            )
    toxic = proxy.update_toxic_from(
        current.name, toxicity=_toxicity(body, None), attributes=_attributes(body)
    )
    return web.json_response(toxic.to_json())


async def _delete_toxic(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    proxy.remove_toxic(request.match_info["toxic"])
    return web.Response(status=204)


async def _reset(request: web.Request) -> web.Response:
    await _server(request).reset()
    return web.Response(status=204)


def create_app(
    server: ProxyServer, limits: HttpLimits | None = None, access: ProxyApiAccess | None = None
) -> web.Application:
    """An aiohttp application serving Toxiproxy's API over ``server`` (which the caller owns),
    guarded and bounded by ``limits`` (default :class:`HttpLimits`); ``access`` says who may
    change proxies (default :class:`ProxyApiAccess`: nobody)."""
    limits = HttpLimits() if limits is None else limits
    app = web.Application(middlewares=[_errors, _guard], client_max_size=limits.max_body)
    app[_SERVER_KEY] = server
    app[LIMITS_KEY] = limits
    app[_ACCESS_KEY] = ProxyApiAccess() if access is None else access
    app.router.add_get("/version", _version)
    app.router.add_get("/proxies", _list_proxies)
    app.router.add_post("/proxies", _create_proxy)
    app.router.add_post("/populate", _populate)
    app.router.add_post("/reset", _reset)
    app.router.add_get("/proxies/{proxy}", _get_proxy)
    app.router.add_post("/proxies/{proxy}", _update_proxy)
    app.router.add_patch("/proxies/{proxy}", _update_proxy)
    app.router.add_delete("/proxies/{proxy}", _delete_proxy)
    app.router.add_get("/proxies/{proxy}/toxics", _list_toxics)
    app.router.add_post("/proxies/{proxy}/toxics", _create_toxic)
    app.router.add_get("/proxies/{proxy}/toxics/{toxic}", _get_toxic)
    app.router.add_post("/proxies/{proxy}/toxics/{toxic}", _update_toxic)
    app.router.add_patch("/proxies/{proxy}/toxics/{toxic}", _update_toxic)
    app.router.add_delete("/proxies/{proxy}/toxics/{toxic}", _delete_toxic)
    return app


async def serve(
    server: ProxyServer,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event,
    limits: HttpLimits | None = None,
    access: ProxyApiAccess | None = None,
) -> None:
    """Serve the API over ``server`` until ``stop`` is set; ``ready(port)`` once listening.

    ``limits`` bound and guard every request (default :class:`HttpLimits`); ``access`` says who
    may change proxies (default :class:`ProxyApiAccess`: nobody, ``GET`` only).
    """
    runner = web.AppRunner(create_app(server, limits, access), access_log=None, logger=_http_log)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # the one-line cause names --host or --port, not a Python errno
            raise listen_error(host, port, exc) from exc
        bound = int(runner.addresses[0][1])
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyApiConfig:
    """The ``strategylab proxy`` process: the API's ``host`` and ``port`` (0 = a free one), the
    ``seed`` of toxicity and toxic randomness (``None`` = unseeded), the ``config`` file of proxies
    to create at start (a path, or ``None``), who may change proxies (``access``), the request
    ``limits``, and the ``data_dir`` whose ``logs/proxy.log`` gets the log (``None`` = stderr
    only). Raises :class:`ConfigurationError` naming the flag (``--port``, ``--admin-open``).
    """

    host: str = "127.0.0.1"
    port: int = 8474
    seed: int | None = None
    config: str | None = None
    access: ProxyApiAccess = field(default_factory=ProxyApiAccess)
    limits: HttpLimits = field(default_factory=HttpLimits)
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        integer("--port", self.port, minimum=0, maximum=65535)
        if self.access.admin_open and not _is_loopback(self.host):
            raise ConfigurationError(
                "--admin-open",
                self.host,
                "an API open without a token must listen on a loopback address; "
                "give --admin-token-file to listen on another",
            )


async def _amain(config: ProxyApiConfig, configs: list[dict[str, object]]) -> int:
    rng = random.Random(config.seed) if config.seed is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def ready(port: int) -> None:
        sys.stdout.write(json.dumps({"event": "listening", "port": port}) + "\n")
        sys.stdout.flush()

    async with ProxyServer(rng=rng) as server:
        try:
            await server.populate(configs)
        except ConfigurationError as exc:  # the resolver refused a listen host of the file
            raise ConfigurationError("--config", config.config, str(exc)) from None
        await serve(
            server,
            host=config.host,
            port=config.port,
            ready=ready,
            stop=stop,
            limits=config.limits,
            access=config.access,
        )
    return 0


def _load_config(path: str, limits: HttpLimits) -> list[dict[str, object]]:
    """The proxies of the ``--config`` file, every record validated.

    Raises :class:`ConfigurationError` naming the file and what is wrong with it: missing,
    unreadable, not a regular file (a FIFO would hang the start, ``/dev/zero`` never end),
    larger than 16 MiB, not UTF-8, not JSON within ``limits`` (nesting, digits), or a bad record.
    """

    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError("--config", path, reason)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise bad("no such file") from None
    except OSError as exc:
        raise bad(f"cannot be opened: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise bad("is not a regular file")
        data = b""
        while len(data) <= _MAX_CONFIG_BYTES:
            chunk = os.read(fd, _MAX_CONFIG_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise bad(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_CONFIG_BYTES:
        raise bad(f"is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        records = validate_records(loads(data, limits))
    except ConfigurationError as exc:
        raise bad(exc.reason if exc.key == "body" else str(exc)) from None
    return [
        {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        for name, listen, upstream, enabled in records
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_proxy_process(config: ProxyApiConfig, *, log_level: int = logging.WARNING) -> int:
    """Run ``config`` as the ``strategylab proxy`` process (see the module docstring).

    Returns the exit code: 0 after SIGTERM or SIGINT; 2 for a bad ``--config`` file or a planted
    file where the log belongs; 1 when the API's or a proxy's address cannot be bound.
    """
    try:
        configs = [] if config.config is None else _load_config(config.config, config.limits)
    except ConfigurationError as exc:
        return _fail(exc, 2)
    try:
        log_file = None
        if config.data_dir is not None:
            log_file = DataLayout(config.data_dir).log_file("proxy")
            refuse_unsafe_dirs(config.data_dir, log_file.parent)
        configure_logging(log_level, sys.stderr, log_file=log_file)
        return asyncio.run(_amain(config, configs))
    except (ConfigurationError, UnsafePathError) as exc:
        return _fail(exc, 2)
    except OSError as exc:  # the API's or a proxy's address cannot be bound: operational
        return _fail(exc, 1)


def _fail(exc: Exception, code: int) -> int:
    sys.stderr.write(f"{_PROG}: error: {escape(str(exc))}\n")
    return code
