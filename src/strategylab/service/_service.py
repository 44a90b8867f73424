"""The :class:`StatusService`: an aiohttp server over a :class:`StatusSource`.

Routes (only ``GET``/``HEAD`` on the read routes, only ``POST`` on the admin routes; anything
else is 405):

- ``GET /health/live``, ``GET /health/ready``: 200 when the probe is ok, else 503; the body is
  :meth:`ProbeResult.to_dict` (``ok``, ``state``, ``failing``, ``degraded``, ``reasons``);
- ``GET /metrics``: the Prometheus text exposition format from one snapshot (see :mod:`._metrics`);
- ``GET /status``: JSON from one snapshot and the last 20 audit records (see :mod:`._status`);
- ``GET /events``: ``text/event-stream``; every :meth:`StatusService.publish` ed event, ``price``
  events (``{"t": wall seconds, "prices": {symbol: price}}``) every ``chart_interval`` seconds
  while the chart is enabled, a ``status`` event (the ``/status`` body) every
  ``status_interval`` seconds, and a ``: keep-alive`` comment every ``keepalive`` seconds, all
  timed on the injected clock and only while a client is connected. Each stream's kernel send
  buffer is capped (``send_buffer`` bytes, ``SO_SNDBUF``); a client whose bounded queue is full,
  or whose write has been blocked for ``write_timeout`` seconds (on the injected clock), is
  dropped (see :mod:`._events`). A client that goes away before or while its headers are sent is
  no error (logged at debug);
- admin, each needing ``Authorization: Bearer <admin_token>`` (compared with
  :func:`hmac.compare_digest`; at least 16 characters): ``POST /admin/kill`` (``{"reason": "..."}``,
  1..500 characters of one line of printable text, the rule ``strategylab kill --reason`` applies;
  202), ``POST /admin/breakers/{name}`` (``{"state": "open" | "closed" | "reset"}``), ``POST
  /admin/features/{name}/shed``, ``POST /admin/features/{name}/restore``, ``POST /admin/reload``,
  and with a chaos agent (``chaos=``, the node's ``--chaos-agent``; else 404) ``POST
  /admin/chaos/ballast`` (``{"bytes": N}``, 0 releases), and in a cluster (``cluster=``, the
  node's ``--cluster NAME --redis URL``; else 404; issue 14) ``POST /admin/cluster-kill``
  (``{"reason": "..."}`` as ``/admin/kill``; 202: every node of the cluster halts its trading) and
  ``POST /admin/cluster-kill/clear`` (409 when none is in force or the token did not pull it; 502
  when Redis cannot be reached). Without a configured token: 403 and nothing
  runs; a missing or wrong token: 401 with ``WWW-Authenticate: Bearer``; 10 such failures within 60
  s from one peer address: 429 with ``Retry-After`` for every admin request from it, the right token
  included, until the oldest failure is 60 s old (see :mod:`._auth`); a body over 16 KiB: 413; bad
  JSON or a bad field: 400 ``{"error": ..., "field": ...}`` naming it; an :class:`AdminActionError`
  from the source: its status and ``{"error": message}``; success: ``{"ok": true, "action",
  "target", "result"}``. Every admin call, accepted or refused, is logged (logger
  ``strategylab.service``; the token never is; a limited peer's 429s only at debug);
- ``GET /`` and ``GET /static/{app.js,app.css}``: the dashboard, shipped in the package.

Listening on an address that is not loopback (``0.0.0.0``, ``::``, a public address) logs one
WARNING at start: the status and admin routes are reachable from other machines.

Every response carries ``Content-Security-Policy: default-src 'self'`` (no inline script),
``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy:
no-referrer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from strategylab import _http_guard, _validate
from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, StrategyLabError

from ._auth import MIN_ADMIN_TOKEN, FailureLimiter, retry_after_header
from ._events import EventClient, EventHub
from ._metrics import ServiceFigures, SnapshotCollector
from ._source import AdminActionError, ChaosAgent, ClusterKillAgent, StatusSource
from ._status import AUDIT_LIMIT, jsonable, status_body

__all__ = ["MAX_ADMIN_BODY", "MAX_REASON", "StatusService"]

_log = logging.getLogger("strategylab.service")

MAX_ADMIN_BODY: Final = 16 * 1024
"""Bytes an admin request body may have (413 above)."""
MAX_REASON: Final = 500
"""Characters a kill reason may have."""
_SWEEPS_PER_TIMEOUT: Final = 4
"""Blocked writes are looked for ``write_timeout / 4`` apart: a stuck client goes within 1.25x."""
_MAX_NAME: Final = 200
_BREAKER_STATES: Final = ("open", "closed", "reset")
MAX_BALLAST: Final = 1 << 40
"""The largest chaos ballast an admin call may ask for, in bytes (1 TiB)."""
_STATIC: Final = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_LIMITS: Final = _http_guard.HttpLimits(max_body=MAX_ADMIN_BODY)


class _BadFieldError(StrategyLabError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def _json(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":"), allow_nan=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _load_static() -> dict[str, bytes]:
    files = importlib.resources.files("strategylab.service") / "static"
    return {name: (files / name).read_bytes() for name in _STATIC}


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


class StatusService:
    """Health probes, metrics, status, events, admin actions and the dashboard of one node.

    ``source`` is the node (:class:`StatusSource`). ``host``/``port`` where to listen (port 0: a
    free one; :attr:`url` gives it after :meth:`start`). ``admin_token`` enables the admin routes
    (None: they answer 403). ``clock`` times the periodic events. ``event_queue`` (>= 1) bounds
    each ``/events`` client's queue; ``chart_interval`` (seconds > 0) is the period of ``price``
    events, ``status_interval`` of ``status`` events and ``keepalive`` of keep-alive comments.
    ``send_buffer`` (bytes, 4096..16 MiB) caps each ``/events`` connection's kernel send buffer
    (``SO_SNDBUF``; Linux doubles the figure for its bookkeeping) and ``write_timeout`` (seconds
    > 0, on ``clock``) is how long one write to a stream may stay blocked before the client is
    dropped. ``auth_failures`` failed authentications within ``auth_window`` seconds from one
    peer address make it wait (429) for the rest of the window. ``chaos`` is the node's opt-in
    :class:`ChaosAgent` behind ``POST /admin/chaos/ballast`` (None: that route answers 404);
    ``cluster`` the node's :class:`ClusterKillAgent` behind ``POST /admin/cluster-kill`` and
    ``POST /admin/cluster-kill/clear`` (None: they answer 404).
    Raises :class:`~strategylab.errors.ConfigurationError` naming a bad argument (an
    ``admin_token`` under :data:`MIN_ADMIN_TOKEN` characters included).
    """

    def __init__(
        self,
        source: StatusSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_token: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        event_queue: int = 256,
        chart_interval: float = 0.5,
        status_interval: float = 1.0,
        keepalive: float = 15.0,
        send_buffer: int = 64 * 1024,
        write_timeout: float = 5.0,
        auth_failures: int = 10,
        auth_window: float = 60.0,
        chaos: ChaosAgent | None = None,
        cluster: ClusterKillAgent | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ConfigurationError("host", host, "must be a non-empty str")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError("port", port, "must be an int within 0..65535")
        if admin_token is not None and (not isinstance(admin_token, str) or not admin_token):
            raise ConfigurationError("admin_token", "<hidden>", "must be a non-empty str or None")
        if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN:
            raise ConfigurationError(
                "admin_token",
                "<hidden>",
                f"has {len(admin_token)} character{'' if len(admin_token) == 1 else 's'}; "
                f"at least {MIN_ADMIN_TOKEN} are required",
            )
        if not isinstance(clock, Clock):
            raise ConfigurationError("clock", clock, "must implement strategylab.clock.Clock")
        if isinstance(event_queue, bool) or not isinstance(event_queue, int) or event_queue < 1:
            raise ConfigurationError("event_queue", event_queue, "must be an int >= 1")
        for key, value in (
            ("chart_interval", chart_interval),
            ("status_interval", status_interval),
            ("keepalive", keepalive),
            ("write_timeout", write_timeout),
            ("auth_window", auth_window),
        ):
            _validate.seconds(key, value)
        _validate.integer("send_buffer", send_buffer, minimum=4096, maximum=16 * 1024 * 1024)
        _validate.integer("auth_failures", auth_failures, minimum=1)
        self._source = source
        self._chaos = chaos
        self._cluster = cluster
        self._host = host
        self._port = port
        self._token = admin_token.encode() if admin_token is not None else None
        self._clock = clock
        self._chart_interval = float(chart_interval)
        self._status_interval = float(status_interval)
        self._keepalive = float(keepalive)
        self._send_buffer = send_buffer
        self._write_timeout = float(write_timeout)
        self._limiter = FailureLimiter(clock, limit=auth_failures, window=float(auth_window))
        self._hub = EventHub(event_queue)
        self._chart_enabled = True
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(source.snapshot, self._figures))
        self._static: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self._bound: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._closed = False

    # ------------------------------------------------------------------ public face

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` with the bound port; ``RuntimeError`` before :meth:`start`."""
        if self._bound is None:
            raise RuntimeError("the status service is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound}"

    @property
    def chart_enabled(self) -> bool:
        """The live price chart is on: ``price`` events flow and ``/status`` says ``on``."""
        return self._chart_enabled

    @chart_enabled.setter
    def chart_enabled(self, value: bool) -> None:
        self._chart_enabled = bool(value)

    @property
    def event_clients(self) -> int:
        """``/events`` clients connected now."""
        return self._hub.clients

    @property
    def dropped_clients(self) -> int:
        """``/events`` clients dropped (a full queue or a blocked write) since start."""
        return self._hub.dropped

    async def start(self) -> None:
        """Bind and serve. ``OSError`` (with the original ``errno``) when the address cannot be
        listened on, e.g. the port is taken; ``RuntimeError`` when started twice or closed."""
        if self._runner is not None or self._closed:
            raise RuntimeError("the status service was started already")
        self._static = _load_static()
        runner = web.AppRunner(
            self._app(), access_log=None, shutdown_timeout=1.0, handle_signals=False
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = exc.strerror or str(exc) or type(exc).__name__
            error = OSError(f"status service: cannot listen on {self._host}:{self._port}: {reason}")
            error.errno = exc.errno
            raise error from exc
        self._runner = runner
        self._bound = int(runner.addresses[0][1])
        if not all(_loopback(address) for address in runner.addresses):
            _log.warning(
                "status service: listening on %s: the status and admin routes are reachable "
                "from other machines%s (listen on 127.0.0.1 or put a firewall in front)",
                self.url,
                "" if self._token is not None else " (admin routes are off: no token)",
            )
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._tasks = [
            asyncio.create_task(
                self._every(self._chart_interval, self._price), name="status:price"
            ),
            asyncio.create_task(
                self._every(self._status_interval, self._status_event), name="status:status"
            ),
            asyncio.create_task(self._every(self._keepalive, self._ping), name="status:keepalive"),
            asyncio.create_task(
                self._every(self._write_timeout / _SWEEPS_PER_TIMEOUT, self._sweep),
                name="status:sweep",
            ),
        ]

    def publish(self, kind: str, data: Mapping[str, Any]) -> None:
        """Fan one event (``kind`` matching ``[a-z][a-z0-9_]*``, ``data`` a JSON-ready mapping)
        out to every ``/events`` client. Never blocks and never raises: a bad event is logged and
        skipped; a call from another thread is handed to the service's loop."""
        try:
            if self._closed:
                return
            if self._thread is not None and threading.get_ident() != self._thread:
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self.publish, kind, data)
                return
            self._hub.publish(kind, data)
        except Exception as exc:
            _log.warning("events: %s event not published: %s", str(kind)[:40], exc)

    async def aclose(self) -> None:
        """Stop the periodic events, end every ``/events`` stream and stop serving (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        self._hub.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ periodic events

    def _figures(self) -> ServiceFigures:
        return ServiceFigures(self._chart_enabled, self._hub.clients, self._hub.dropped)

    async def _every(self, period: float, action: Callable[[], None]) -> None:
        clock = self._clock
        while True:
            await clock.asleep(period)
            if self._hub.clients:
                try:
                    action()
                except Exception:
                    _log.exception("status service: periodic event failed")

    def _price(self) -> None:
        if self._chart_enabled:
            prices = self._source.snapshot().last_price
            self._hub.publish("price", {"t": self._clock.time(), "prices": prices})

    def _status_event(self) -> None:
        self._hub.publish("status", self._status_body())

    def _ping(self) -> None:
        self._hub.broadcast(b": keep-alive\n\n")

    def _sweep(self) -> None:
        self._hub.expire(self._clock.monotonic(), self._write_timeout)

    def _status_body(self) -> dict[str, Any]:
        snapshot = self._source.snapshot()
        audit = self._source.recent_audit(AUDIT_LIMIT)
        return status_body(
            snapshot,
            audit,
            now=self._clock.monotonic(),
            wall=self._clock.time(),
            chart_enabled=self._chart_enabled,
            clients=self._hub.clients,
            dropped_clients=self._hub.dropped,
        )

    # ------------------------------------------------------------------ the app

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_ADMIN_BODY, middlewares=[_errors])
        app[_http_guard.LIMITS_KEY] = _LIMITS
        app.on_response_prepare.append(_security_headers)
        get = app.router.add_get
        get("/", self._index)
        get("/static/{name}", self._asset)
        get("/health/live", self._live)
        get("/health/ready", self._ready)
        get("/metrics", self._metrics)
        get("/status", self._status)
        get("/events", self._events)
        post = app.router.add_post
        post("/admin/kill", self._kill)
        post("/admin/breakers/{name}", self._breaker)
        post("/admin/features/{name}/shed", self._shed)
        post("/admin/features/{name}/restore", self._restore)
        post("/admin/reload", self._reload)
        post("/admin/chaos/ballast", self._ballast)
        post("/admin/cluster-kill", self._cluster_kill)
        post("/admin/cluster-kill/clear", self._cluster_clear)
        return app

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._static["index.html"], content_type="text/html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in self._static:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(body=self._static[name], content_type=_STATIC[name])

    async def _live(self, _request: web.Request) -> web.Response:
        result = self._source.liveness()
        return _json(result.to_dict(), 200 if result.ok else 503)

    async def _ready(self, _request: web.Request) -> web.Response:
        result = self._source.readiness()
        return _json(result.to_dict(), 200 if result.ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, _request: web.Request) -> web.Response:
        return _json(self._status_body())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._closed:
            raise web.HTTPServiceUnavailable(text="closing")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        transport = request.transport
        if transport is None or transport.is_closing():
            _log.debug("events: the client of %s left before its headers", request.remote)
            return response
        self._cap_send_buffer(transport)
        try:
            await response.prepare(request)
        except (ConnectionError, RuntimeError) as exc:
            # The client went away before or while its headers were sent: nothing is wrong here.
            _log.debug(
                "events: the client of %s left while its headers were sent: %s", request.remote, exc
            )
            return response
        client = self._hub.connect(transport)
        try:
            # The reconnect delay a browser waits after a drop, and a first byte so that the
            # client knows the stream is open.
            await self._write(client, response, b"retry: 2000\n: connected\n\n")
            while (chunk := await client.take()) is not None:
                await self._write(client, response, chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client went away or was dropped (aborted): nothing to send it
        finally:
            self._hub.disconnect(client)
        if not client.dropped:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        return response

    def _cap_send_buffer(self, transport: asyncio.BaseTransport) -> None:
        """Cap the kernel send buffer, so that a client that reads nothing holds kilobytes of
        this host's memory, not the megabytes autotuning would give it."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        except OSError as exc:  # a socket that went away meanwhile, or a platform that refuses
            _log.debug("events: SO_SNDBUF not set: %s", exc)

    async def _write(self, client: EventClient, response: web.StreamResponse, chunk: bytes) -> None:
        """One write, marked in progress so that a write blocked too long drops the client."""
        with client.writing(self._clock.monotonic()):
            await response.write(chunk)

    # ------------------------------------------------------------------ admin

    async def _kill(self, request: web.Request) -> web.Response:
        async def run(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            reason = _reason(body)
            return await self._source.kill(reason), reason

        return await self._admin(request, "kill", None, run, body_required=True, status=202)

    # The cluster kill switch (issue 14): the same token check and reason rule as /admin/kill.

    def _cluster_agent(self) -> ClusterKillAgent:
        if self._cluster is None:
            raise AdminActionError(
                404, "not in a cluster: start the node with --cluster NAME --redis URL"
            )
        return self._cluster

    async def _cluster_kill(self, request: web.Request) -> web.Response:
        async def run(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            reason = _reason(body)
            return await self._cluster_agent().cluster_kill(reason), reason

        return await self._admin(request, "cluster_kill", None, run, body_required=True, status=202)

    async def _cluster_clear(self, request: web.Request) -> web.Response:
        async def run(_body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            return await self._cluster_agent().cluster_clear(), ""

        return await self._admin(request, "cluster_clear", None, run)

    async def _breaker(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            state = body.get("state")
            if state is None:
                raise _BadFieldError("state", "required")
            if state not in _BREAKER_STATES:
                raise _BadFieldError("state", f"must be one of {', '.join(_BREAKER_STATES)}")
            return await self._source.force_breaker(name, state), state

        return await self._admin(request, "breaker", name, run, body_required=True)

    async def _shed(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(_body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            return await self._source.shed(name), ""

        return await self._admin(request, "shed", name, run)

    async def _restore(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(_body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            return await self._source.restore(name), ""

        return await self._admin(request, "restore", name, run)

    async def _reload(self, request: web.Request) -> web.Response:
        async def run(_body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            return await self._source.reload_config(), ""

        return await self._admin(request, "reload", None, run)

    async def _ballast(self, request: web.Request) -> web.Response:
        async def run(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
            nbytes = body.get("bytes")
            if nbytes is None:
                raise _BadFieldError("bytes", "required")
            if isinstance(nbytes, bool) or not isinstance(nbytes, int):
                raise _BadFieldError("bytes", "must be an integer number of bytes")
            if not 0 <= nbytes <= MAX_BALLAST:
                raise _BadFieldError("bytes", f"must be within 0..{MAX_BALLAST}")
            if self._chaos is None:
                raise AdminActionError(
                    404, "the chaos agent is off: start the node with --chaos-agent"
                )
            return await self._chaos.set_ballast(nbytes), str(nbytes)

        return await self._admin(request, "ballast", None, run, body_required=True)

    def _authorized(self, request: web.Request, peer: str) -> web.Response | None:
        """None when the request may run an admin action, else the refusal to answer.

        A peer limited for failed authentications gets 429 before its token is looked at, so a
        right token is refused too while the limit lasts (see :mod:`._auth` for why)."""
        if self._token is None:
            return _json({"error": "admin routes are disabled: no admin token is configured"}, 403)
        wait = self._limiter.retry_after(peer)
        if wait is not None:
            return _json(
                {
                    "error": f"too many failed authentications from {peer}: try again later",
                    "retry_after": int(retry_after_header(wait)),
                },
                429,
                {"Retry-After": retry_after_header(wait)},
            )
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="strategylab"'}
        if scheme.lower() != "bearer" or not given.strip():
            refusal = _json({"error": "Authorization: Bearer <token> is required"}, 401, challenge)
        elif not hmac.compare_digest(given.strip().encode(), self._token):
            challenge = {"WWW-Authenticate": 'Bearer realm="strategylab", error="invalid_token"'}
            refusal = _json({"error": "the admin token is not valid"}, 401, challenge)
        else:
            return None
        if self._limiter.failed(peer):
            _log.warning(
                "admin: %d failed authentications from %s within %gs: its admin calls are "
                "refused (429) until the window has passed",
                self._limiter.limit,
                peer,
                self._limiter.window,
            )
        return refusal

    async def _admin(
        self,
        request: web.Request,
        action: str,
        target: str | None,
        run: Callable[[Mapping[str, Any]], Awaitable[tuple[Mapping[str, Any], str]]],
        *,
        body_required: bool = False,
        status: int = 200,
    ) -> web.Response:
        peer = request.remote or "?"
        shown = "" if target is None else f" {target[:_MAX_NAME]!r}"
        refused = self._authorized(request, peer)
        if refused is not None:
            # A limited peer's requests are not logged one by one: it could fill the log.
            log = _log.debug if refused.status == 429 else _log.warning
            log("admin %s%s from %s refused: %d", action, shown, peer, refused.status)
            return refused
        try:
            _check_name(target)
            body = await self._body(request, required=body_required)
            result, detail = await run(body)
        except _BadFieldError as exc:
            _log.warning("admin %s%s from %s refused: 400 %s", action, shown, peer, exc)
            return _json({"error": str(exc), "field": exc.field}, 400)
        except web.HTTPRequestEntityTooLarge:
            _log.warning("admin %s%s from %s refused: 413", action, shown, peer)
            return _json(
                {"error": f"body larger than {MAX_ADMIN_BODY} bytes", "field": "body"}, 413
            )
        except AdminActionError as exc:
            _log.warning(
                "admin %s%s from %s refused by the node: %d %r",
                action,
                shown,
                peer,
                exc.status,
                exc.message,
            )
            return _json({"error": exc.message}, exc.status)
        _log.warning(
            "admin %s%s from %s accepted%s", action, shown, peer, f": {detail!r}" if detail else ""
        )
        return _json(
            {"ok": True, "action": action, "target": target, "result": jsonable(result)}, status
        )

    async def _body(self, request: web.Request, *, required: bool) -> Mapping[str, Any]:
        if _http_guard.too_large(request, _LIMITS) is not None:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_ADMIN_BODY, actual_size=request.content_length or 0
            )
        raw = await request.read()
        if not raw.strip():
            if required:
                raise _BadFieldError("body", "a JSON object is required")
            return {}
        try:
            value = _http_guard.loads(raw, _LIMITS)
        except ConfigurationError as exc:
            raise _BadFieldError("body", exc.reason) from None
        if not isinstance(value, dict):
            raise _BadFieldError("body", "must be a JSON object")
        return value


def _check_name(target: str | None) -> None:
    if target is not None and (not target or len(target) > _MAX_NAME):
        raise _BadFieldError("name", f"must be 1..{_MAX_NAME} characters")


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unexpected exception becomes a 500 JSON body and one logged line, not a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ConnectionError as exc:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client went away mid-answer: not an error of the service, and nobody to tell.
            _log.debug(
                "status service: %s %s: the client left: %s", request.method, request.path, exc
            )
            return _json({"error": "the client left"}, 500)
        _log.exception("status service: %s %s failed", request.method, request.path)
        return _json({"error": f"internal error: {type(exc).__name__}"}, 500)
    except Exception as exc:
        _log.exception("status service: %s %s failed", request.method, request.path)
        return _json({"error": f"internal error: {type(exc).__name__}"}, 500)


def _loopback(address: object) -> bool:
    """The bound socket address (``(host, port, ...)``) is on a loopback interface."""
    host = address[0] if isinstance(address, tuple) and address else address
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _reason(body: Mapping[str, Any]) -> str:
    """A kill's ``reason`` field: a non-empty line of at most MAX_REASON characters;
    :class:`_BadFieldError` naming ``reason`` otherwise."""
    reason = body.get("reason")
    if reason is None:
        raise _BadFieldError("reason", "required")
    if not isinstance(reason, str) or not reason.strip():
        raise _BadFieldError("reason", "must be a non-empty string")
    if len(reason) > MAX_REASON:
        raise _BadFieldError("reason", f"must be at most {MAX_REASON} characters")
    problem = _validate.one_line_problem(reason)
    if problem is not None:
        raise _BadFieldError("reason", problem)
    return reason
