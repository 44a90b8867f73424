"""A feed's state: the connection's flags, the per-symbol positions, the held ticks and the
outstanding replays, shared by the layers of :class:`~strategylab.market.Feed`.

The feed is built in layers, each a class in its own module that adds one concept on top of
the one below: this state, the sequencer (:mod:`._feed_sequence`: gaps, replays, losses, the
per-tick hot path), the frame handler (:mod:`._feed_frames`: verification, forged frames, control
answers), the session (:mod:`._feed_session`: the connection loop and the stale watchdog) and
the facade (:mod:`._feed`: the component API). Inheritance, not delegation: a call on the hot
path costs what it cost when the feed was one class."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.fault_tolerance import (
    ErrorRecoveryManager,
    ErrorReporter,
    FailoverEvent,
    FailoverGroup,
    FailoverMember,
    SwitchReason,
)

from ._feed_backoff import FeedBackoff
from ._feed_config import FeedConfig, TickSink
from ._feed_errors import EndpointBehindError, SecurityKillSwitchError, SecurityViolationError
from ._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    FrameError,
    SignatureError,
    Subscribe,
    decode_control,
    decode_frame,
    decode_heartbeat,
)
from ._tick import Tick

# One logger for the whole feed, under the name it has always had.
_log = logging.getLogger("strategylab.market._feed")
_MAX_REPORTS = 32
"""Error reports in flight at once (beyond, a report is counted as suppressed)."""
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
_PROOF_POLL = 0.05
"""Seconds between checks of the sink's acknowledgements while a connection has not yet proven
itself (only then: a proven connection costs the watchdog nothing)."""
_PAUSE_FRACTION = 0.25
"""A watchdog that wakes later than planned by more than this fraction of ``stale_after`` (and
at least :data:`_PAUSE_MIN`) was not running: it re-arms rather than judge the silence."""
_PAUSE_MIN = 0.05
_PEER_TEXT = 120
"""Characters of peer-supplied text kept (escaped) in a log line or an error message."""
_RAW_CHARS = 1000
"""Characters of a refused tick's text kept in its quarantine entry."""
_UNPOSITIONED_KEPT = 1024
"""Refused ticks without a stream position (seq outside 1..2**63-1) remembered by their text,
so that a frame resent on a resubscription does not quarantine them a second time."""


def _peer(text: object) -> str:
    """Peer-supplied text made safe for one log line: truncated, then escaped by ``repr``."""
    return repr(str(text)[:_PEER_TEXT])


class _Pending:
    """One outstanding replay for a symbol."""

    __slots__ = ("asked", "attempts", "beats", "first", "last", "request_id", "requested_at")

    def __init__(self, first: int, last: int, requested_at: float) -> None:
        self.first = first
        self.last = last
        self.asked = last  # what the current request asked for (``last`` shrinks to a clamp)
        self.request_id = 0
        self.requested_at = requested_at
        self.attempts = 1
        self.beats = 0
        """Heartbeats seen since the request: the exchange queues its frames in order, so after
        two the replay has been sent in full even if its replay-done frame was corrupted."""


class _FeedState:
    """The state every layer of the feed reads and writes."""

    def __init__(
        self,
        config: FeedConfig,
        sink: TickSink,
        *,
        manager: ErrorRecoveryManager | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        kill_switch: Callable[[SecurityKillSwitchError], Awaitable[object]] | None = None,
        on_violation: Callable[[SecurityViolationError], object] | None = None,
    ) -> None:
        """``kill_switch`` is awaited (once, in an owned task) when forged frames cross
        ``max_violations`` within ``violation_window``; without one, the crossing is reported
        to the manager as a CRITICAL SECURITY_VIOLATION. ``on_violation`` is called
        synchronously for every forged frame or forged control message, before the connection
        is dropped (a trader halts trading there); an exception from it is logged, never
        raised into the feed."""
        self._config = config
        self._kill_switch = kill_switch
        self._on_violation = on_violation
        self._violations: collections.deque[float] = collections.deque()
        self._killed = False
        self._sink = sink
        self._manager = manager
        self._clock = clock
        self._key = config.signing_key
        self._symbols = frozenset(config.symbols)
        self._backoff = FeedBackoff(
            config.backoff_floor,
            config.backoff_cap,
            proven_after=config.proven_after,
            retry_later_floor=config.retry_later_floor,
            max_server_wait=config.max_server_wait,
            outage_cap=(
                None
                if config.outage_backoff_cap is None
                else min(max(config.outage_backoff_cap, config.backoff_floor), config.backoff_cap)
            ),
            rng=rng or random.Random(),
            clock=clock,
        )
        accounted = getattr(sink, "accounted", None)
        self._accounted: Callable[[], Mapping[str, int]] | None = (
            accounted if callable(accounted) else None
        )
        # The endpoints: the primary, then backups; failback after probes of the ones above.
        self._group: FailoverGroup[str] = FailoverGroup(
            tuple(
                FailoverMember(name=url, target=url, health=functools.partial(self._probe, url))
                for url in config.urls
            ),
            name=f"{config.name}-endpoints",
            probe_interval=config.probe_interval,
            max_probe_interval=config.max_probe_interval,
            failback_after=config.failback_after,
            clock=clock,
        )
        self._group.add_listener(self._on_switch)
        self._prober: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._kill_task: asyncio.Task[None] | None = None
        # One report per (error type, feed) episode, and a quiet period after a recovery.
        self._reporter = ErrorReporter(
            manager,
            component=config.name,
            quiet=config.report_quiet,
            recovered_quiet=config.recovered_quiet,
            max_pending=_MAX_REPORTS,
            clock=clock,
        )
        self._ws: ClientConnection | None = None
        self._healthy = asyncio.Event()
        self._proven = asyncio.Event()
        self._proof_base: dict[str, int] = {}
        self._observed_from = 0.0
        self._unknown: frozenset[str] = frozenset()
        self._unknown_reported: frozenset[str] = frozenset()
        self._connect_logged: set[str] = set()
        self._connect_failures = self._pauses = 0
        # Fast reconnects (see FeedConfig): when the current outage began (None: no outage since
        # the last proven connection), and whether the last failure was a silent one in its
        # first ``fast_reconnect_for`` seconds (the next attempt is then hedged, its wait capped).
        self._outage_since: float | None = None
        self._fast, self._frame_at = False, 0.0
        self._attempts = self._hedged = self._abandoned = 0
        self._connected = self._subscribed = self._blocked = self._outage = False
        self._kick_reason: str | None = None
        self._session, self._last_seen = "", 0.0
        # The stale deadline of the current connection: ``stale_after``, raised to three of the
        # exchange's heartbeat intervals plus a margin when its "subscribed" answer advertises
        # a longer interval (see _adopt_heartbeat_interval); back to ``stale_after`` on a drop.
        self._stale_after = self._config.stale_after
        # Per-symbol state: the last accounted-for seq, the last valid ts, held ticks, replays.
        self._delivered: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self._held: dict[str, dict[int, Tick]] = {}
        self._unpositioned_seen: dict[str, None] = {}
        self._pending: dict[str, _Pending] = {}
        self._hb_last: dict[str, int] = {}
        self._hb_delivered: dict[str, int] = {}
        # Endpoints found behind this node's watermark (logged once until found current again).
        self._conn_url, self._behind, self._behind_refusals = "", False, 0
        self._behind_urls: set[str] = set()
        self._connects = 0
        self._frames = self._ticks = self._duplicates = self._gaps = self._replays = 0
        self._crc_errors = self._signature_errors = self._invalid = self._lost = 0
        self._lost_ranges = self._control_errors = self._stale = self._held_count = 0

    @property
    def name(self) -> str:
        """The component name the manager knows this feed by."""
        return self._config.name

    @property
    def url(self) -> str:
        """The endpoint in use (changes on failover and failback)."""
        return self._group.active.target

    @property
    def endpoints(self) -> FailoverGroup[str]:
        """The failover group of ``config.urls`` (primary first)."""
        return self._group

    def _on_switch(self, event: FailoverEvent) -> None:
        """Back to a better endpoint: end the connection to the backup, so the session
        reconnects to it (resuming every symbol from the store's watermark)."""
        if event.reason is SwitchReason.FAILBACK:
            self._kick("failback")

    async def _probe(self, url: str) -> bool:
        """A higher-priority endpoint's health: a WebSocket handshake within
        ``connect_timeout``, then, within ``stale_after``, what it says it has emitted (its
        ``subscribed`` answer or its first heartbeat), which must not be behind this feed's
        watermark for any symbol (see :meth:`_lagging`); the connection is then dropped."""
        cfg = self._config
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                ws = await connect(
                    url,
                    max_size=cfg.max_message_bytes,
                    compression=None,
                    ping_interval=None,
                    close_timeout=1.0,
                )
            try:
                async with asyncio.timeout(cfg.stale_after):
                    last = await self._probe_last(ws)
            finally:
                # Live ticks stream in after the subscription: a closing handshake would wait
                # behind them, and nothing on this connection is needed any more.
                ws.transport.abort()
        except (OSError, TimeoutError, websockets.WebSocketException):
            return False
        if last is None:
            return False
        lagging = self._lagging(last)
        if lagging:
            self._note_behind(url, lagging, "not switching back to it until it has caught up")
            return False
        self._behind_urls.discard(url)
        return True

    async def _probe_last(self, ws: ClientConnection) -> Mapping[str, object] | None:
        """Subscribe on a probe connection; the endpoint's last sequence per symbol from the
        first ``subscribed`` answer that carries one or the first heartbeat. None when the
        connection ends first, or on a forged frame or answer (with a signing key, text and
        control frames of another session are not taken)."""
        key = self._key
        session = secrets.token_hex(16)
        subscribe = Subscribe(symbols=list(self._config.symbols), session=session)
        await ws.send(_json_encode(subscribe).decode())
        async for message in ws:
            done, last = _probe_answer(message, key, session)
            if done:
                return last
        return None

    def _lagging(self, last: Mapping[str, object]) -> tuple[tuple[str, int, int], ...]:
        """``(symbol, its last seq, ours)`` for every configured symbol whose last sequence the
        endpoint reports (``last``, from the wire) is below what this feed has stored or handed
        on. A symbol it does not report (unknown to it) or reports as a non-integer is not
        judged here."""
        delivered = self._delivered
        out: list[tuple[str, int, int]] = []
        for symbol in self._config.symbols:
            theirs = last.get(symbol)
            ours = delivered.get(symbol, 0)
            if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs < ours:
                out.append((symbol, theirs, ours))
        return tuple(out)

    def _note_behind(self, url: str, lagging: tuple[tuple[str, int, int], ...], then: str) -> None:
        """Count an endpoint found behind; log it (WARNING) once until it is found current."""
        self._behind_refusals += 1
        if url in self._behind_urls:
            return
        self._behind_urls.add(url)
        detail = ", ".join(
            f"{symbol} its last seq {theirs} < ours {ours}" for symbol, theirs, ours in lagging
        )
        _log.warning(
            "feed %s: endpoint %s is behind this node (%s): it would only repeat what is "
            "already held; %s (logged once until it has caught up)",
            self.name,
            url,
            detail,
            then,
        )

    def _check_behind(self, last: object) -> None:
        """Raise :class:`EndpointBehindError` when the connected endpoint's ``last`` (from its
        ``subscribed`` answer or a heartbeat) is behind this feed for some symbol."""
        if not isinstance(last, dict):
            return
        lagging = self._lagging(last)
        if not lagging:
            return
        url = self._conn_url
        self._behind = True
        then = (
            "failing over to the next endpoint and retrying this one later"
            if len(self._config.urls) > 1
            else "reconnecting with backoff until it has caught up"
        )
        self._note_behind(url, lagging, then)
        raise EndpointBehindError(
            f"{url} is behind: "
            + ", ".join(f"{s} last seq {theirs} < ours {ours}" for s, theirs, ours in lagging),
            lagging,
        )

    def _kick(self, reason: str) -> None:
        self._kick_reason = reason
        if self._reader is not None:
            self._reader.cancel()

    async def _wait_recovered(self) -> None:
        """A drop is recovered when a new connection has proven itself, not merely subscribed:
        a server that accepts and closes again is still an outage."""
        async with asyncio.timeout(self._config.recovery_timeout):
            await self._proven.wait()


def _probe_answer(
    message: str | bytes, key: bytes | None, session: str
) -> tuple[bool, Mapping[str, object] | None]:
    """One message on a probe connection: ``(True, last)`` when it settles the probe (``last``
    None: a forgery, the probe fails), ``(False, None)`` to read on."""
    if not isinstance(message, str):
        return _probe_frame(message, key, session)
    if key is not None:
        return True, None  # with a key every answer is a signed frame: text is forged
    try:
        reply = _json_decode(message)
    except msgspec.DecodeError:
        return False, None
    if isinstance(reply, dict) and reply.get("type") == "subscribed":
        last = reply.get("last")
        if isinstance(last, dict):
            return True, last
    return False, None


def _probe_frame(
    message: bytes, key: bytes | None, session: str
) -> tuple[bool, Mapping[str, object] | None]:
    """A binary message on a probe connection (see :func:`_probe_answer`)."""
    try:
        frame = decode_frame(message, key)
        if frame.kind == KIND_HEARTBEAT:
            return True, decode_heartbeat(frame.payload).last
        if frame.kind == KIND_CONTROL:
            answer = decode_control(frame.payload)
            if key is not None and answer.session != session:
                return True, None
            if answer.type == "subscribed" and answer.last is not None:
                return True, answer.last
    except SignatureError:
        return True, None
    except FrameError:
        pass  # damaged in transit: wait for the next answer or heartbeat
    return False, None
