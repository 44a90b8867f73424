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

A proxy is ``{name, listen, upstream, enabled, toxics}``; a toxic is ``{name, type, stream,
toxicity, attributes}``. Errors are Toxiproxy's ``{"error": message, "status": code}``: 404 for an
unknown proxy or toxic, 409 for a duplicate name, 400 for bad input, with the field named.

Run it as its own process::

    python -m strategylab.chaos._proxy_api --port 0 [--host 127.0.0.1] [--seed N] [--config F]

It prints one JSON line, ``{"event":"listening","port":N}``, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web

from strategylab.errors import ConfigurationError

from ._proxy import (
    ProxyExistsError,
    ProxyNotFoundError,
    ProxyServer,
    ToxicExistsError,
    ToxicNotFoundError,
)
from ._toxics import Toxic

__all__ = ["VERSION", "create_app", "main", "serve"]

VERSION: Final = "2.9.0-strategylab"
"""Reported by ``GET /version``: the Toxiproxy API level this subset follows."""

_SERVER_KEY: Final = web.AppKey("proxy_server", ProxyServer)

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
        # Binding the listen address failed (in use, not local): the request asked for it.
        return _error(400, f"listen: {exc.strerror or exc}")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError("body", "<request body>", f"invalid JSON: {exc}") from None
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
        raise ConfigurationError(key, value, f"must be a {kind.__name__}")
    return value


def _string(body: Mapping[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(key, value, "is required (a non-empty string)")
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
    proxy = await _server(request).create(
        _string(body, "name"),
        listen=str(_optional(body, "listen", str, default="127.0.0.1:0")),
        upstream=_string(body, "upstream"),
        enabled=bool(_optional(body, "enabled", bool, default=True)),
    )
    return web.json_response(proxy.to_json(), status=201)


async def _populate(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError("body", "<request body>", f"invalid JSON: {exc}") from None
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise ConfigurationError("body", type(body).__name__, "must be a JSON list of proxies")
    proxies = await _server(request).populate(body)
    return web.json_response({"proxies": [proxy.to_json() for proxy in proxies]}, status=201)


async def _get_proxy(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    return web.json_response(proxy.to_json())


async def _update_proxy(request: web.Request) -> web.Response:
    proxy = _server(request).get(request.match_info["proxy"])
    body = await _body(request)
    listen = _optional(body, "listen", str, default=None)
    upstream = _optional(body, "upstream", str, default=None)
    enabled = _optional(body, "enabled", bool, default=None)
    await proxy.update(
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
        raise ConfigurationError("toxicity", value, "must be a number between 0 and 1")
    return float(value)


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
            raise ConfigurationError(key, body[key], "cannot be changed; delete and re-create")
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


def create_app(server: ProxyServer) -> web.Application:
    """An aiohttp application serving Toxiproxy's API over ``server`` (which the caller owns)."""
    app = web.Application(middlewares=[_errors])
    app[_SERVER_KEY] = server
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
) -> None:
    """Serve the API over ``server`` until ``stop`` is set; ``ready(port)`` once listening."""
    runner = web.AppRunner(create_app(server), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _amain(args: argparse.Namespace, configs: list[dict[str, object]]) -> int:
    rng = random.Random(args.seed) if args.seed is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def ready(port: int) -> None:
        sys.stdout.write(json.dumps({"event": "listening", "port": port}) + "\n")
        sys.stdout.flush()

    async with ProxyServer(rng=rng) as server:
        await server.populate(configs)
        await serve(server, host=args.host, port=args.port, ready=ready, stop=stop)
    return 0


def _load_config(path: str) -> list[dict[str, object]]:
    configs = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise ConfigurationError("config", path, "must hold a JSON list of proxies")
    return configs


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="strategylab proxy",
        description="A TCP fault proxy with a subset of Toxiproxy's HTTP API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="API port; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=None, help="seed toxicity and toxic randomness")
    parser.add_argument("--config", default=None, help="JSON list of proxies to create at start")
    args = parser.parse_args(argv)
    try:
        configs = [] if args.config is None else _load_config(args.config)
        return asyncio.run(_amain(args, configs))
    except (ConfigurationError, OSError, json.JSONDecodeError) as exc:
        sys.stderr.write(f"proxy api: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
