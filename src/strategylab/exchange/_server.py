"""The exchange simulator: WebSocket market data and an HTTP order API on one aiohttp server.

Run it as its own process (``strategylab exchange --port 0``, through :func:`run_exchange_process`;
it prints one JSON line ``{"event": "listening", "port": N, "pid": P}`` and logs to
``data_dir/logs/exchange.log``) or in-process through :class:`Exchange`.

Its parts, one concept a module: the options (:mod:`._config`), the market data over WebSocket
(:mod:`._feed`, subscribers in :mod:`._subscriber`), the HTTP order and admin API (:mod:`._http`),
the process entry (:mod:`._process`); :class:`Exchange` here wires them into one component.

Time: the injected ``clock`` stamps ticks and orders, expires faults and paces the generator (tick
rate) and the heartbeats, so that a tick's timestamp and its place in the schedule agree and a test
on :class:`~strategylab.testing.FakeClock` drives both by moving the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from strategylab._http_guard import LIMITS_KEY
from strategylab._listen import listen_error
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.fault_tolerance import ErrorReporter
from strategylab.market import EmittedLog, parse_signing_key

from ._book import OrderBook
from ._config import ExchangeConfig
from ._faults import FaultBoard
from ._feed import _MarketData
from ._gen import TickGenerator
from ._http import _HttpApi, _json
from ._subscriber import _CLOSE_GRACE, _History, _Subscriber

if TYPE_CHECKING:
    from strategylab.fault_tolerance import ErrorRecoveryManager

__all__ = [
    "Exchange",
    "ExchangeConfig",
    "parse_signing_key",
]


class Exchange(_MarketData, _HttpApi):
    """The exchange simulator as a :class:`~strategylab.fault_tolerance.Component`.

    ``await start()`` binds the server and starts generating; ``port`` is then the bound port.
    Errors of its own (the emitted log failing, the generator crashing) go to ``manager``.
    ``on_drop(peer, reason)`` is called when a slow subscriber is disconnected.
    """

    def __init__(
        self,
        config: ExchangeConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        manager: ErrorRecoveryManager | None = None,
        on_drop: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_drop = on_drop
        self._clock = clock
        self._manager = manager
        # One report per error, inline (a generator failure is reported once, then re-raised).
        self._reporter = ErrorReporter(
            manager, component=self.name, quiet=0.0, recovered_quiet=0.0, clock=self._clock
        )
        self._gen = TickGenerator(config.symbols, config.seed)
        self._history = {s: _History(config.retention) for s in config.symbols}
        self.faults = FaultBoard(clock=clock, seed=config.seed)
        self.book = OrderBook(config.symbols, clock=clock, faults=self.faults)
        self._subs: set[_Subscriber] = set()
        self._live: list[_Subscriber] = []  # subscribed: receive live frames
        self._idle: set[_Subscriber] = set()  # subscribed to no known symbol: heartbeats only
        self._has_live = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._log: EmittedLog | None = None
        self._port = 0
        self._failed: BaseException | None = None
        self.security_events = 0
        self.subscribers_dropped = 0
        self.frames_generated = 0
        self._wrong_key = b"not-the-key:" + (config.signing_key or b"")

    # -- Component --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The component name: ``exchange``."""
        return "exchange"

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """The HTTP base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.config.host}:{self._port}"

    @property
    def ws_url(self) -> str:
        """The market-data WebSocket URL."""
        return f"ws://{self.config.host}:{self._port}/ws"

    @property
    def ticks_emitted(self) -> int:
        """Ticks generated (and logged) so far."""
        return self._gen.total

    def last_seqs(self) -> dict[str, int]:
        """The last emitted sequence per symbol."""
        return self._gen.last_seq

    async def start(self) -> None:
        """Open the emitted log, bind the server, start generating and heartbeats."""
        if self._runner is not None:
            return
        self._log = EmittedLog(self.config.log_path)
        limits = self.config.http_limits
        app = web.Application(
            middlewares=[self._guard_middleware, self._api_fault_middleware],
            client_max_size=limits.max_body,
        )
        app[LIMITS_KEY] = limits
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_post("/api/orders", self._post_order)
        app.router.add_get("/api/orders", self._list_orders)
        app.router.add_post("/api/orders/lookup", self.book.lookup_route)
        app.router.add_get("/api/orders/by-client-id/{cid}", self._get_order_by_cid)
        app.router.add_get("/api/orders/{id}", self._get_order)
        app.router.add_delete("/api/orders/{id}", self._cancel_order)
        app.router.add_get("/api/fills", self._fills)
        app.router.add_get("/api/positions", self._positions)
        app.router.add_get("/api/status", self._status)
        app.router.add_post("/admin/faults", self._post_fault)
        app.router.add_get("/admin/faults", self._get_faults)
        app.router.add_delete("/admin/faults", self._delete_faults)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CLOSE_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._log.close()
            # One line naming --host or --port, not a Python errno (the errno is kept).
            raise listen_error(self.config.host, self.config.port, exc) from exc
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._failed = None
        self._tasks = [
            asyncio.create_task(self._generate(), name="exchange-generator"),
            asyncio.create_task(self._heartbeats(), name="exchange-heartbeats"),
        ]

    async def stop(self) -> None:
        """Stop generating, close every connection, flush and close the emitted log."""
        runner, self._runner = self._runner, None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        for sub in list(self._subs):
            sub.kick(WSCloseCode.GOING_AWAY, "exchange shutting down")
        if runner is not None:
            await runner.cleanup()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def health(self) -> bool:
        """True while the server is bound and the generator runs (or finished ``max_ticks``)."""
        if self._runner is None or self._failed is not None or not self._tasks:
            return False
        generator = self._tasks[0]
        return not generator.done() or (not generator.cancelled() and generator.exception() is None)

    # -- status -----------------------------------------------------------------------------

    async def _status(self, _request: web.Request) -> web.Response:
        return _json(self.status())

    def status(self) -> dict[str, object]:
        """What ``GET /api/status`` answers."""
        return {
            "last_seq": self._gen.last_seq,
            "ticks_emitted": self._gen.total,
            "frames_generated": self.frames_generated,
            "subscribers": len(self._live),
            "connections": len(self._subs),
            "subscribers_dropped": self.subscribers_dropped,
            "faults": self.faults.snapshot(),
            "strikes": {kind.value: n for kind, n in self.faults.strikes.items()},
            "races": dict(self.book.races),
            "security_events": self.security_events,
            "generating": bool(self._tasks) and not self._tasks[0].done(),
        }
