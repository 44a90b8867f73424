"""The exchange's HTTP API: the guard and fault-injection middlewares, the order API
(``/api/*``) over the :class:`~._book.OrderBook`, and the admin fault API (``/admin/faults``).

The handlers live on :class:`_HttpApi`, a part of :class:`~._server.Exchange` (which owns the
state they use and registers the routes).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from strategylab._http_guard import read_json, refusal
from strategylab._logging import escape
from strategylab.errors import ConfigurationError

from ._book import STATUSES, CancelTooLateError, OrderRequestError, OrderStateError
from ._faults import FaultKind, FaultRequestError, parse_fault

if TYPE_CHECKING:
    from strategylab.clock import Clock

    from ._book import OrderBook
    from ._config import ExchangeConfig
    from ._faults import ActiveFault, FaultBoard

logger = logging.getLogger("strategylab.market.exchange")


def _fault_answer(fault: ActiveFault) -> web.Response:
    """The answer of an injected ``api_errors`` fault: its status, ``Retry-After: 1``."""
    return _json(
        {"error": "injected fault: api_errors", "status": fault.status},
        fault.status,
        headers={"Retry-After": "1"},
    )


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, field_name: str | None = None) -> web.Response:
    body: dict[str, object] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    return _json(body, status)


class _HttpApi:
    """The HTTP handlers and middlewares of :class:`~._server.Exchange`."""

    # Set by Exchange.__init__: the state this part reads and changes.
    config: ExchangeConfig
    book: OrderBook
    faults: FaultBoard
    security_events: int
    _clock: Clock

    @web.middleware
    async def _guard_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        # Every route, not only /admin/*: a web page must not place orders or read them (nor
        # open the market-data WebSocket, which browsers send cross-site with an Origin).
        limits = self.config.http_limits
        refused = refusal(request, limits)
        if refused is not None:
            if refused.status == 403:  # browser-driven
                self._security_event(request, f"refused {refused.field}")
            return _error(refused.status, f"{refused.field}: {refused.reason}", refused.field)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            field_name = "body"
            reason = f"{field_name}: larger than {limits.max_body} bytes"
            return _error(413, reason, field_name)
        except web.HTTPException:
            raise  # aiohttp's own answers (404, 405)
        except Exception as exc:
            if request.path == "/ws":
                raise  # upgraded: there is no HTTP answer left to give
            # Handlers validate before they change anything, so nothing is half-applied here.
            logger.error(  # noqa: TRY400 - one escaped line, no traceback a peer could shape
                "internal error on %s %s: %s",
                request.method,
                escape(request.path[:200]),
                escape(repr(exc)[:500]),
            )
            return _error(500, "internal error")

    @web.middleware
    async def _api_fault_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        fault = self.faults.strike(FaultKind.API_ERRORS)
        if fault is None:
            return await handler(request)
        if fault.phase == "after":
            await handler(request)
        return _fault_answer(fault)

    async def _post_order(self, request: web.Request) -> web.Response:
        fault: ActiveFault | None = None
        try:
            body = await read_json(request)
            # A counted api_errors fault strikes chosen orders by client id (see _faults).
            cid = body.get("client_order_id") if isinstance(body, dict) else None
            fault = self.faults.strike_order(cid) if isinstance(cid, str) else None
            if fault is not None and fault.phase == "before":
                return _fault_answer(fault)
            order, created = self.book.submit(body)
        except ConfigurationError as exc:
            return _fault_answer(fault) if fault is not None else _error(400, str(exc), "body")
        except OrderRequestError as exc:
            return _fault_answer(fault) if fault is not None else _error(400, str(exc), exc.field)
        return _fault_answer(fault) if fault is not None else _json(order, 201 if created else 200)

    async def _list_orders(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            return _error(400, f"status: must be one of {sorted(STATUSES)}", "status")
        return _json(self.book.orders(status))

    async def _get_order(self, request: web.Request) -> web.Response:
        order_id = request.match_info["id"]
        try:
            return _json(self.book.get(order_id))
        except KeyError:
            return _error(404, f"no order with id {order_id!r}", "id")

    async def _get_order_by_cid(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        try:
            return _json(self.book.by_client_id(cid))
        except KeyError:
            return _error(404, f"no order with client_order_id {cid!r}", "client_order_id")

    async def _cancel_order(self, request: web.Request) -> web.Response:
        order_id = request.match_info["id"]
        try:
            return _json(self.book.cancel(order_id))
        except KeyError:
            return _error(404, f"no order with id {order_id!r}", "id")
        except CancelTooLateError as exc:
            # Too late: the order filled while the cancel was in flight. The answer carries the
            # order as it stands, so a client needs no second request to learn its fill.
            return _json({"error": str(exc), "field": "id", "order": exc.order}, 409)
        except OrderStateError as exc:
            return _error(409, str(exc), "id")

    async def _fills(self, _request: web.Request) -> web.Response:
        return _json(self.book.fills())

    async def _positions(self, _request: web.Request) -> web.Response:
        return _json(self.book.positions())

    # -- admin ------------------------------------------------------------------------------

    def _security_event(self, request: web.Request, what: str) -> None:
        self.security_events += 1
        logger.warning(
            "security event: %s on %s %s from %s",
            what,
            escape(request.method),
            escape(request.path[:200]),
            request.remote,
        )

    def _refused(self, request: web.Request) -> web.Response | None:
        """``None`` when the request may use the admin API, else the 401/403 to answer."""
        token = self.config.admin_token
        if token is None:
            if self.config.admin_open:
                return None
            self._security_event(request, "admin call while the admin API is closed")
            return _error(
                403, "admin API closed: start with --admin-token (or --admin-open)", "admin_token"
            )
        given = request.headers.get("Authorization", "")
        try:
            # aiohttp hands undecodable header bytes over as surrogates: not a token.
            given_bytes = given.encode()
        except UnicodeEncodeError:
            self._security_event(request, "malformed (non-UTF-8) admin token")
            return _error(401, "Authorization: not UTF-8", "Authorization")
        if hmac.compare_digest(given_bytes, f"Bearer {token}".encode()):
            return None
        self._security_event(request, f"{'wrong' if given else 'missing'} admin token")
        return _error(401, "admin token missing or wrong", "Authorization")

    async def _post_fault(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            fault = parse_fault(await read_json(request), self._clock.monotonic())
        except ConfigurationError as exc:
            return _error(400, str(exc), "body")
        except FaultRequestError as exc:
            return _error(400, str(exc), exc.field)
        self.faults.set(fault)
        logger.warning("fault on: %s", fault)
        return _json(fault.to_json(self._clock.monotonic()), 201)

    async def _get_faults(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        return _json(self.faults.snapshot())

    async def _delete_faults(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        raw = request.query.get("kind")
        try:
            kind = None if raw is None else FaultKind(raw)
        except ValueError:
            return _error(400, f"kind: unknown fault kind {raw!r}", "kind")
        self.faults.clear(kind)
        return _json(self.faults.snapshot())
