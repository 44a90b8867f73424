"""The exchange simulator: WebSocket market data and an HTTP order API on one aiohttp server.

Run it as its own process (``strategylab exchange --port 0``, through :func:`run_exchange_process`;
it prints one JSON line ``{"event": "listening", "port": N, "pid": P}`` and logs to
``data_dir/logs/exchange.log``) or in-process through :class:`Exchange`.

Market data (``GET /ws``, frames of :mod:`._protocol`): a feed sends ``Subscribe``; the exchange
answers ``{"type": "subscribed", ...}``, replays retained history from ``from_seq`` (inclusive) per
symbol, then streams live frames, each symbol in sequence order without gaps or duplicates on one
connection. A live batch is encoded once and the same bytes go to every subscriber (a subscriber
of a subset of the symbols gets a filtered frame, encoded once per distinct subset). Every batch
is logged to ``data_dir/emitted.log`` before it is sent to anyone.

Pacing: with ``tick_rate > 0`` the generator never waits for a subscriber; one whose bounded outbox
overflows is disconnected with a reason (it reconnects and replays). With ``tick_rate == 0`` the
generator runs as fast as the slowest subscriber takes frames, and waits while nobody subscribes.

Time: the injected ``clock`` stamps ticks and orders, expires faults and paces the generator (tick
rate) and the heartbeats, so that a tick's timestamp and its place in the schedule agree and a test
on :class:`~strategylab.testing.FakeClock` drives both by moving the clock.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from strategylab._files import UnsafePathError, refuse_unsafe_dirs
from strategylab._http_guard import LIMITS_KEY, HttpLimits, read_json, refusal
from strategylab._layout import DataLayout
from strategylab._logging import configure_logging, escape
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import ErrorReporter
from strategylab.market import (
    CONTROL_DECODER,
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    KIND_TICKS,
    ControlReply,
    EmittedLog,
    Heartbeat,
    ReplayDone,
    ReplayRequest,
    Subscribe,
    Tick,
    encode_control,
    encode_frame,
    encode_heartbeat,
    encode_replay_done,
    encode_ticks,
    parse_signing_key,
)

from ._book import STATUSES, OrderBook, OrderRequestError, OrderStateError
from ._faults import FaultBoard, FaultKind, FaultRequestError, parse_fault
from ._gen import TickGenerator

if TYPE_CHECKING:
    from strategylab.fault_tolerance import ErrorRecoveryManager

__all__ = [
    "Exchange",
    "ExchangeConfig",
    "parse_signing_key",
    "run_exchange",
    "run_exchange_process",
]

logger = logging.getLogger("strategylab.market.exchange")

_PROG: Final = "strategylab exchange"
_CLOSE_GRACE: Final = 2.0  # seconds a kicked subscriber gets before its transport is aborted
_FAST_YIELD_EVERY: Final = 16  # frames between yields to the loop in as-fast-as-possible mode
_MAX_SESSION: Final = 64  # characters of a subscriber's session token
_control_json_encoder = msgspec.json.Encoder()


def _control_json(reply: ControlReply) -> str:
    """A control answer as the JSON text an unsigned exchange sends (no ``session``)."""
    return _control_json_encoder.encode(msgspec.structs.replace(reply, session="")).decode()


def _range_error(reason: str, symbol: str, from_seq: int, to_seq: int) -> ControlReply:
    return ControlReply("error", reason=reason, symbol=symbol, from_seq=from_seq, to_seq=to_seq)


DEFAULT_SYMBOLS: Final = ("AAPL", "MSFT", "GOOG", "AMZN", "TSLA")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeConfig:
    """Options of the exchange simulator; validated on construction (errors name the option).

    ``tick_rate`` is ticks per second over all symbols; 0 means as fast as the slowest subscriber
    takes them. ``max_ticks`` stops generation after that many ticks (replays and heartbeats go
    on). ``retention`` ticks per symbol are kept for replay. ``send_queue`` bounds each
    subscriber's outbox in frames. ``/admin/*`` needs ``admin_token`` as a bearer token; with no
    token it is closed (403) unless ``admin_open``. ``http_limits`` bound every HTTP request
    (413 body, 400 JSON depth and number digits) and name the browser origins allowed (none by
    default: a browser ``Origin`` or ``User-Agent`` is a 403 and a body not declared JSON a 415
    on every route, the order API and the market-data WebSocket included).
    """

    host: str = "127.0.0.1"
    port: int = 0
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    tick_rate: float = 1000.0
    ticks_per_frame: int = 100
    heartbeat_interval: float = 1.0
    retention: int = 100_000
    signing_key: bytes | None = field(default=None, repr=False)  # a secret: never in a repr
    seed: int = 0
    data_dir: Path = field(default_factory=lambda: Path("exchange-data"))
    max_ticks: int | None = None
    admin_token: str | None = field(default=None, repr=False)  # a secret: never in a repr
    send_queue: int = 1024
    admin_open: bool = False
    http_limits: HttpLimits = field(default_factory=HttpLimits)

    def __post_init__(self) -> None:  # noqa: C901, PLR0912
        def bad(key: str, reason: str) -> ConfigurationError:
            return ConfigurationError(key, getattr(self, key), reason)

        # Accept a str path too (callers pass ``tmp_path / "x"`` or a CLI string).
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if not self.host:
            raise bad("host", "must not be empty")
        if not 0 <= self.port <= 65535:
            raise bad("port", "must be within 0..65535 (0 = ephemeral)")
        if not self.symbols or any(not isinstance(s, str) or not s for s in self.symbols):
            raise bad("symbols", "must be one or more non-empty names")
        if len(set(self.symbols)) != len(self.symbols):
            raise bad("symbols", "must not repeat a symbol")
        if not math.isfinite(self.tick_rate) or self.tick_rate < 0:
            raise bad("tick_rate", "must be a finite number >= 0 (0 = as fast as possible)")
        if not 1 <= self.ticks_per_frame <= 100_000:
            raise bad("ticks_per_frame", "must be within 1..100000")
        if not math.isfinite(self.heartbeat_interval) or self.heartbeat_interval <= 0:
            raise bad("heartbeat_interval", "must be a finite number of seconds > 0")
        if self.retention < 1:
            raise bad("retention", "must be >= 1")
        if self.signing_key is not None and not self.signing_key:
            raise bad("signing_key", "must not be empty (None = unsigned)")
        if self.max_ticks is not None and self.max_ticks < 0:
            raise bad("max_ticks", "must be >= 0 (None = unlimited)")
        if self.admin_token is not None and not self.admin_token:
            raise bad("admin_token", "must not be empty (None = no admin auth)")
        if self.admin_open and self.admin_token is not None:
            raise bad("admin_open", "contradicts admin_token (open means no token)")
        if self.send_queue < 2:
            raise bad("send_queue", "must be >= 2 frames")

    @property
    def log_path(self) -> Path:
        """Where the emitted log is written."""
        return DataLayout(self.data_dir).emitted_log


class _History:
    """The last ``retention`` ticks of one symbol; trimmed in amortised O(1)."""

    __slots__ = ("base", "retention", "ticks")

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.ticks: list[Tick] = []
        self.base = 1  # seq of ticks[0]

    @property
    def last(self) -> int:
        return self.base + len(self.ticks) - 1

    @property
    def first(self) -> int:
        """The first sequence still retained (``last + 1`` when none is)."""
        return max(self.base, self.last - self.retention + 1)

    def append(self, tick: Tick) -> None:
        self.ticks.append(tick)
        if len(self.ticks) > 2 * self.retention:
            drop = len(self.ticks) - self.retention
            del self.ticks[:drop]
            self.base += drop

    def range(self, from_seq: int, to_seq: int) -> list[Tick]:
        """Retained ticks ``from_seq..to_seq`` (the caller clamps to ``first..last``)."""
        return self.ticks[from_seq - self.base : to_seq - self.base + 1]


@dataclass(frozen=True, slots=True)
class _Replay:
    ticks: list[Tick]
    done: ReplayDone | None
    session: str = ""


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


_Item = bytes | str | _Replay | _Close


class _Subscriber:
    """One WebSocket connection: its subscription and its bounded outbox, drained by a sender."""

    __slots__ = (
        "abort_handle",
        "kicked",
        "outbox",
        "peer",
        "room",
        "session",
        "symbols",
        "transport",
        "wake",
    )

    def __init__(self, peer: str, transport: asyncio.BaseTransport | None) -> None:
        self.peer = peer
        self.transport = transport
        self.symbols: frozenset[str] | None = None  # None: every symbol
        self.outbox: deque[_Item] = deque()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.kicked: str | None = None
        self.abort_handle: asyncio.TimerHandle | None = None
        self.session = ""  # the feed's token for this connection, echoed in signed answers

    def push(self, item: _Item) -> None:
        if self.kicked is None:
            self.outbox.append(item)
            self.wake.set()

    def kick(self, code: int, reason: str) -> None:
        """Drop everything queued and close with ``reason``; abort if the peer does not drain."""
        if self.kicked is not None:
            return
        self.kicked = reason
        self.outbox.clear()
        self.outbox.append(_Close(code, reason))
        self.wake.set()
        self.room.set()
        transport = self.transport
        if transport is not None:
            loop = asyncio.get_running_loop()
            self.abort_handle = loop.call_later(_CLOSE_GRACE, _abort, transport)


def _abort(transport: asyncio.BaseTransport) -> None:
    if not transport.is_closing() and isinstance(transport, asyncio.WriteTransport):
        transport.abort()


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


class Exchange:
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
        self.book = OrderBook(config.symbols, clock=clock)
        self.faults = FaultBoard(clock=clock, seed=config.seed)
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
        except OSError:
            await runner.cleanup()
            self._log.close()
            raise
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

    async def _report(self, exc: BaseException) -> None:
        logger.error("exchange error: %r", exc)
        await self._reporter.areport(exc)

    # -- generation -------------------------------------------------------------------------

    async def _generate(self) -> None:
        try:
            await self._generate_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed = exc
            await self._report(exc)
            raise

    async def _generate_loop(self) -> None:
        cfg, clock = self.config, self._clock
        rate, per_frame, limit = cfg.tick_rate, cfg.ticks_per_frame, cfg.max_ticks
        started, paced = clock.monotonic(), 0
        frames = 0
        while limit is None or self._gen.total < limit:
            remaining = per_frame if limit is None else min(per_frame, limit - self._gen.total)
            if rate > 0:
                now = clock.monotonic()
                due = int((now - started) * rate) - paced
                if due <= 0:
                    await clock.asleep(max(started + (paced + 1) / rate - now, 0.002))
                    continue
                if due > rate:  # fell more than a second behind: do not burst, re-anchor
                    started, paced, due = now, 0, per_frame
                n = min(due, remaining)
                paced += n
                self._emit(n)
                await asyncio.sleep(0)  # a yield to the subscribers, not a wait: no clock
            else:
                await self._wait_for_room()
                self._emit(remaining)
                frames += 1
                if frames % _FAST_YIELD_EVERY == 0:
                    await asyncio.sleep(0)

    async def _wait_for_room(self) -> None:
        """As-fast-as-possible mode: wait for a subscriber, then for the slowest to have room."""
        limit = self.config.send_queue
        while True:
            if not self._live:
                self._has_live.clear()
                await self._has_live.wait()
                continue
            full = next((s for s in self._live if len(s.outbox) >= limit), None)
            if full is None:
                return
            full.room.clear()
            await full.room.wait()

    def _emit(self, n: int) -> None:
        """Generate, log, retain, match and fan out one batch: synchronous, so that a subscriber
        joining never sees half a batch."""
        faults = self.faults
        batch = self._gen.generate(
            n, int(self._clock.time() * 1e9), faults.rate(FaultKind.INVALID_TICKS)
        )
        ticks = batch.ticks
        payload = encode_ticks(ticks)
        log = self._log
        if log is None:
            raise RuntimeError("exchange is not started: no emitted log")
        log.append_payload(payload)
        history = self._history
        for tick in ticks:
            history[tick.symbol].append(tick)
        self.book.on_ticks(batch.clean)
        self.frames_generated += 1
        live = self._live
        if not live:
            return
        frame = self._wire(KIND_TICKS, payload)
        filtered: dict[frozenset[str], bytes] = {}
        limit = self.config.send_queue
        fast = self.config.tick_rate == 0
        for sub in list(live):
            wanted = sub.symbols
            if wanted is None:
                data = frame
            else:
                data = filtered.get(wanted) or b""
                if not data:
                    subset = [t for t in ticks if t.symbol in wanted]
                    if not subset:
                        continue
                    data = filtered[wanted] = self._wire(KIND_TICKS, encode_ticks(subset))
            if not fast and len(sub.outbox) >= limit:
                self._drop(sub, f"slow subscriber: {len(sub.outbox)} frames queued")
                continue
            sub.push(data)

    def _wire(self, kind: bytes, payload: bytes) -> bytes:
        """A frame as it goes on the wire, with the signing and corruption faults applied."""
        faults = self.faults
        key = self.config.signing_key
        if faults.strike(FaultKind.BAD_SIGNATURES) is not None:
            key = self._wrong_key
        frame = encode_frame(kind, payload, key)
        if faults.strike(FaultKind.CORRUPT_FRAMES) is not None:
            frame = faults.corrupt(frame)
        return frame

    def _drop(self, sub: _Subscriber, reason: str) -> None:
        logger.warning("dropping subscriber %s: %s", sub.peer, reason)
        self.subscribers_dropped += 1
        self._unsubscribe(sub)
        sub.kick(WSCloseCode.TRY_AGAIN_LATER, reason)
        if self._on_drop is not None:
            self._on_drop(sub.peer, reason)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        if sub in self._live:
            self._live.remove(sub)
        self._idle.discard(sub)
        sub.room.set()

    async def _heartbeats(self) -> None:
        while True:
            await self._clock.asleep(self.config.heartbeat_interval)
            if not self._live and not self._idle:
                continue
            beat = Heartbeat(ts=int(self._clock.time() * 1e9), last=self._gen.last_seq)
            frame = self._wire(KIND_HEARTBEAT, encode_heartbeat(beat))
            for sub in (*self._live, *self._idle):
                sub.push(frame)

    # -- WebSocket --------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        # compress=False: permessage-deflate would cost more CPU than the whole generator.
        ws = web.WebSocketResponse(compress=False, timeout=_CLOSE_GRACE, max_msg_size=1 << 20)
        await ws.prepare(request)
        sub = _Subscriber(str(request.remote), request.transport)
        self._subs.add(sub)
        sender = asyncio.create_task(self._send_loop(sub, ws), name=f"exchange-send-{sub.peer}")
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._control(sub, msg.data)
                else:
                    self._answer(sub, ControlReply("error", reason="expected a JSON text message"))
        finally:
            self._unsubscribe(sub)
            self._subs.discard(sub)
            if sub.abort_handle is not None:
                sub.abort_handle.cancel()
            sender.cancel()
            await asyncio.wait([sender])
        if not sender.cancelled() and (exc := sender.exception()) is not None:
            logger.info("subscriber %s: send failed: %r", sub.peer, exc)
        return ws

    async def _send_loop(self, sub: _Subscriber, ws: web.WebSocketResponse) -> None:
        outbox, low = sub.outbox, self.config.send_queue // 2
        while True:
            if not outbox:
                sub.wake.clear()
                await sub.wake.wait()
                continue
            item = outbox.popleft()
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            elif isinstance(item, str):
                await ws.send_str(item)
            elif isinstance(item, _Replay):
                await self._send_replay(ws, item)
            else:
                await ws.close(code=item.code, message=item.reason.encode()[:120])
                return
            if len(outbox) <= low:
                sub.room.set()

    async def _send_replay(self, ws: web.WebSocketResponse, replay: _Replay) -> None:
        ticks, step = replay.ticks, self.config.ticks_per_frame
        for i in range(0, len(ticks), step):
            await ws.send_bytes(self._wire(KIND_TICKS, encode_ticks(ticks[i : i + step])))
        if replay.done is not None:
            done = replay.done
            if self.config.signing_key is not None:
                done = msgspec.structs.replace(done, session=replay.session)
            await ws.send_bytes(self._wire(KIND_REPLAY_DONE, encode_replay_done(done)))

    def _control(self, sub: _Subscriber, text: str) -> None:
        try:
            message = CONTROL_DECODER.decode(text)
        except msgspec.DecodeError as exc:
            self._answer(sub, ControlReply("error", reason=f"bad control message: {exc}"))
            return
        if isinstance(message, Subscribe):
            self._subscribe(sub, message)
        else:
            self._replay(sub, message)

    def _subscribe(self, sub: _Subscriber, message: Subscribe) -> None:
        """Subscribe the known symbols; name the unknown ones in an error first (one bad symbol
        never blocks the others). With none known the subscriber gets heartbeats only."""
        known = self._history
        if not self._take_session(sub, message.session):
            return
        requested = list(dict.fromkeys((*message.symbols, *message.from_seq)))
        unknown = [s for s in requested if s not in known]
        wanted = [s for s in message.symbols if s in known]
        if not message.symbols:
            wanted = list(self.config.symbols)
        stray = [s for s in message.from_seq if s in known and s not in wanted]
        if stray:
            reason = "from_seq for a symbol not subscribed"
            self._answer(sub, ControlReply("error", reason=reason, symbol=stray[0]))
            return
        if unknown:
            self._answer(sub, ControlReply("error", reason="unknown symbols", unknown=unknown))
        last = self._gen.last_seq
        self._answer(sub, ControlReply("subscribed", symbols=wanted, last=dict(last)))
        if not wanted:
            self._idle.add(sub)
            return
        sub.symbols = None if set(wanted) == set(self.config.symbols) else frozenset(wanted)
        for symbol, from_seq in message.from_seq.items():
            if symbol not in known:
                continue
            to_seq = last[symbol]
            if from_seq <= to_seq:
                ticks = self._retained(sub, symbol, max(from_seq, 1), to_seq)
                if ticks:
                    sub.push(_Replay(ticks, None, sub.session))
        # From here on every batch reaches this subscriber, after the replay queued above.
        self._live.append(sub)
        self._has_live.set()

    def _take_session(self, sub: _Subscriber, session: str) -> bool:
        """Record the subscriber's session token (echoed in signed answers); refuse a second
        subscribe on one connection, or a long token."""
        if sub in self._live or sub in self._idle:
            self._answer(sub, ControlReply("error", reason="already subscribed"))
            return False
        if len(session) > _MAX_SESSION:
            reason = f"session token longer than {_MAX_SESSION} characters"
            self._answer(sub, ControlReply("error", reason=reason))
            return False
        sub.session = session
        return True

    def _replay(self, sub: _Subscriber, message: ReplayRequest) -> None:
        symbol, from_seq, to_seq = message.symbol, message.from_seq, message.to_seq
        history = self._history.get(symbol)
        if history is None or from_seq < 1 or to_seq < from_seq:
            reason = "unknown symbol" if history is None else "empty or invalid range"
            self._answer(sub, _range_error(reason, symbol, from_seq, to_seq))
            return
        to_seq = min(to_seq, history.last)
        ticks = self._retained(sub, symbol, from_seq, to_seq) if from_seq <= to_seq else []
        done = ReplayDone(symbol=symbol, to_seq=to_seq, request_id=message.request_id)
        sub.push(_Replay(ticks, done, sub.session))

    def _retained(self, sub: _Subscriber, symbol: str, from_seq: int, to_seq: int) -> list[Tick]:
        """Ticks ``from_seq..to_seq``; the part no longer retained is reported as an error."""
        history = self._history[symbol]
        first = history.first
        if from_seq < first:
            gone_to = min(to_seq, first - 1)
            self._answer(sub, _range_error("no longer retained", symbol, from_seq, gone_to))
            from_seq = gone_to + 1
        return history.range(from_seq, to_seq) if from_seq <= to_seq else []

    def _answer(self, sub: _Subscriber, reply: ControlReply) -> None:
        """Queue a control answer: JSON text without a signing key; with one, a signed control
        frame bound to the subscriber's session (see :mod:`._protocol`)."""
        if self.config.signing_key is None:
            sub.push(_control_json(reply))
            return
        bound = msgspec.structs.replace(reply, session=sub.session)
        sub.push(self._wire(KIND_CONTROL, encode_control(bound)))

    # -- HTTP API ---------------------------------------------------------------------------

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
        return _json(
            {"error": "injected fault: api_errors", "status": fault.status},
            fault.status,
            headers={"Retry-After": "1"},
        )

    async def _post_order(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
            order, created = self.book.submit(body)
        except ConfigurationError as exc:
            return _error(400, str(exc), "body")
        except OrderRequestError as exc:
            return _error(400, str(exc), exc.field)
        return _json(order, 201 if created else 200)

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
        except OrderStateError as exc:
            return _error(409, str(exc), "id")

    async def _fills(self, _request: web.Request) -> web.Response:
        return _json(self.book.fills())

    async def _positions(self, _request: web.Request) -> web.Response:
        return _json(self.book.positions())

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
            "security_events": self.security_events,
            "generating": bool(self._tasks) and not self._tasks[0].done(),
        }

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


async def run_exchange(
    config: ExchangeConfig,
    *,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock = SYSTEM_CLOCK,
    manager: ErrorRecoveryManager | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, then shut down cleanly.

    ``ready(port)`` is called once the server is bound. Signal handlers are installed only when
    running in the main thread.
    """
    exchange = Exchange(config, clock=clock, manager=manager)
    await exchange.start()
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, done.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                break  # not the main thread: the caller owns ``stop``
        if ready is not None:
            ready(exchange.port)
        await done.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await exchange.stop()


def print_listening(port: int) -> None:
    """The one line a parent process reads to learn the port."""
    sys.stdout.write(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


def run_exchange_process(config: ExchangeConfig, *, log_level: int = logging.WARNING) -> int:
    """Run ``config`` as the ``strategylab exchange`` process: log to stderr and to
    ``data_dir/logs/exchange.log``, print the ``listening`` line, serve until SIGTERM or SIGINT.

    Returns the exit code: 0 after a clean shutdown, 1 for an operational failure (the port
    taken), 2 for a symlink or other file planted in the data directory. Errors are one line.
    """
    try:
        log_file = DataLayout(config.data_dir).log_file("exchange")
        refuse_unsafe_dirs(config.data_dir, log_file.parent)  # before the log is created there
        configure_logging(log_level, sys.stderr, log_file=log_file)
        asyncio.run(run_exchange(config, ready=print_listening))
    except UnsafePathError as exc:
        # A symlink planted in the data directory: a usage problem, as for the node.
        sys.stderr.write(f"{_PROG}: error: {escape(str(exc))}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"{_PROG}: error: {escape(str(exc))}\n")
        return 1
    return 0
