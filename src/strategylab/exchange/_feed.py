"""The exchange's market data: tick generation and pacing, the fan-out of every batch to the
subscribers, heartbeats, and the ``GET /ws`` WebSocket with its control messages.

Market data (``GET /ws``, frames of :mod:`._protocol`): a feed sends ``Subscribe``; the exchange
answers ``{"type": "subscribed", ...}``, replays retained history from ``from_seq`` (inclusive) per
symbol, then streams live frames, each symbol in sequence order without gaps or duplicates on one
connection. A live batch is encoded once and the same bytes go to every subscriber (a subscriber
of a subset of the symbols gets a filtered frame, encoded once per distinct subset). Every batch
is logged to ``data_dir/emitted.log`` before it is sent to anyone.

Pacing: with ``tick_rate > 0`` the generator never waits for a subscriber; one whose bounded outbox
overflows is disconnected with a reason (it reconnects and replays). With ``tick_rate == 0`` the
generator runs as fast as the slowest subscriber takes frames, and waits while nobody subscribes.

The methods live on :class:`_MarketData`, a part of :class:`~._server.Exchange` (which owns the
state they use); they are one class at run time, so a tick costs no extra indirection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from strategylab.market import (
    CONTROL_DECODER,
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    KIND_TICKS,
    ControlReply,
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
)

from ._faults import FaultKind
from ._subscriber import _CLOSE_GRACE, _History, _Replay, _Subscriber

if TYPE_CHECKING:
    from strategylab.clock import Clock
    from strategylab.fault_tolerance import ErrorReporter
    from strategylab.market import EmittedLog

    from ._book import OrderBook
    from ._config import ExchangeConfig
    from ._faults import FaultBoard
    from ._gen import TickGenerator

logger = logging.getLogger("strategylab.market.exchange")

_FAST_YIELD_EVERY: Final = 16  # frames between yields to the loop in as-fast-as-possible mode
_MAX_SESSION: Final = 64  # characters of a subscriber's session token
_control_json_encoder = msgspec.json.Encoder()


def _control_json(reply: ControlReply) -> str:
    """A control answer as the JSON text an unsigned exchange sends (no ``session``)."""
    return _control_json_encoder.encode(msgspec.structs.replace(reply, session="")).decode()


def _range_error(reason: str, symbol: str, from_seq: int, to_seq: int) -> ControlReply:
    return ControlReply("error", reason=reason, symbol=symbol, from_seq=from_seq, to_seq=to_seq)


class _MarketData:
    """Generation, fan-out, heartbeats and the WebSocket of :class:`~._server.Exchange`."""

    # Set by Exchange.__init__ (and start/stop): the state this part reads and changes.
    config: ExchangeConfig
    book: OrderBook
    faults: FaultBoard
    frames_generated: int
    subscribers_dropped: int
    _clock: Clock
    _reporter: ErrorReporter
    _gen: TickGenerator
    _history: dict[str, _History]
    _subs: set[_Subscriber]
    _live: list[_Subscriber]
    _idle: set[_Subscriber]
    _has_live: asyncio.Event
    _log: EmittedLog | None
    _failed: BaseException | None
    _wrong_key: bytes
    _on_drop: Callable[[str, str], None] | None

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
        self._answer(
            sub,
            ControlReply(
                "subscribed",
                symbols=wanted,
                last=dict(last),
                heartbeat_interval=self.config.heartbeat_interval,
            ),
        )
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
