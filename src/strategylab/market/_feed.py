"""The resilient market-data feed: exchange WebSocket → validated, gap-free, de-duplicated ticks.

One :class:`Feed` owns one connection at a time. Per connection it subscribes from the resume
point of every symbol (the higher of what the store holds and what this feed already handed on),
then reads frames and, per frame:

* verifies the CRC and signature (:func:`decode_frame`); a bad frame is counted and dropped and the
  range it carried comes back through gap detection. A frame with a missing or wrong signature is
  a forgery: nothing it carried is used, the connection it came on is dropped (one
  :class:`SecurityViolationError`, reported per forged frame as a connection drop whose
  recovery is the reconnect), and the feed reconnects (to the next endpoint when backups are
  configured) to keep ingesting authenticated data. ``max_violations`` forged frames within
  ``violation_window`` seconds pull the kill switch (:class:`SecurityKillSwitchError`): the
  ``kill_switch`` callback when one is given, else a CRITICAL report to the manager;
* drops duplicates (``seq <= last delivered``), holds ticks that arrive after a gap and asks the
  exchange for the missing range (:class:`ReplayRequest`), delivering in order once it is filled; a
  range the exchange no longer retains is declared lost (counted, quarantined, reported): never
  skipped silently;
* validates every tick; invalid ones go to quarantine with the reason, and still advance the
  sequence (they are accounted for, not lost);
* hands the frame's good ticks to the sink in ONE await (the sink applies backpressure).

A connection with no frame (heartbeats included) for ``stale_after`` seconds is closed and
reopened. Silence is counted only while this process could observe frames: when the watchdog
itself wakes up late (the process was stopped with SIGSTOP, or its event loop was blocked), the
frames that arrived meanwhile are still buffered, unread, so the watchdog re-arms instead of
discarding them with the connection.

Reconnects back off exponentially with full jitter, the first one immediately; the backoff is reset
only by a connection that has proven itself (data delivered and acknowledged by the sink, or alive
``proven_after`` seconds), never by a bare "subscribed", and a server's request to wait (close code
1012/1013, ``Retry-After`` on a 429/503 handshake) is honoured (:class:`FeedBackoff`). A failed
connection attempt is logged once per cause until a connection succeeds; a lost connection once
per outage. Symbols the exchange does not know are logged (ERROR) and reported once
(:class:`UnknownSymbolsError`, a CONFIGURATION_ERROR) while the others are ingested. Text that
came from the peer is escaped before it reaches a log line. Errors go to the optional
:class:`ErrorRecoveryManager` from owned background tasks, never blocking reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import hmac
import logging
import math
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, StrategyLabError
from strategylab.fault_tolerance import (
    ErrorContext,
    ErrorRecoveryManager,
    ErrorReporter,
    ErrorSeverity,
    ErrorType,
    retry_after_hint,
)

from ._feed_backoff import RETRY_LATER_CODES, FeedBackoff
from ._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    KIND_TICKS,
    Frame,
    FrameError,
    ReplayDone,
    ReplayRequest,
    SignatureError,
    Subscribe,
    control_bounds_error,
    decode_control,
    decode_frame,
    decode_heartbeat,
    decode_replay_done,
    decode_ticks,
)
from ._store import QuarantinedTick
from ._tick import INT64_MAX, INT64_MIN, Tick, TickBounds, validate_tick

__all__ = [
    "AcknowledgingSink",
    "Feed",
    "FeedConfig",
    "FeedDisconnectedError",
    "FeedError",
    "FeedStatistics",
    "InvalidTickError",
    "ReplayTimeoutError",
    "SecurityKillSwitchError",
    "SecurityViolationError",
    "StaleFeedError",
    "TickRangeLostError",
    "TickSink",
    "UnknownSymbolsError",
]

_log = logging.getLogger(__name__)
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
_RAW_CHARS = 1000
"""Characters of a refused tick's text kept in its quarantine entry."""
"""Characters of peer-supplied text kept (escaped) in a log line or an error message."""


def _peer(text: object) -> str:
    """Peer-supplied text made safe for one log line: truncated, then escaped by ``repr``."""
    return repr(str(text)[:_PEER_TEXT])


# ----------------------------------------------------------------------------------- errors


class FeedError(StrategyLabError):
    """Something the feed observed and recovers from; ``error_type`` drives classification."""

    error_type: ErrorType = ErrorType.DATA_INGESTION_FAILURE


class FeedDisconnectedError(FeedError, ConnectionError):
    """The connection to the exchange failed or dropped."""

    error_type = ErrorType.WEBSOCKET_CONNECTION_DROPPED


class StaleFeedError(FeedDisconnectedError):
    """No frame, heartbeats included, for ``stale_after`` seconds: the connection is dead."""


class SecurityViolationError(FeedDisconnectedError):
    """A frame failed authentication (unsigned or a bad signature): the connection is dropped.

    Reported as the connection drop it caused (recovered by a reconnect observed proven), not as
    a SECURITY_VIOLATION, whose policy is the emergency shutdown: one forged frame must not
    silence the node. Past the threshold, :class:`SecurityKillSwitchError` is that emergency.
    """


class SecurityKillSwitchError(FeedError):
    """Too many forged frames within the window: the feed asks for the process to end."""

    error_type = ErrorType.SECURITY_VIOLATION


class ReplayTimeoutError(FeedError, TimeoutError):
    """A requested replay was not answered in time."""

    error_type = ErrorType.NETWORK_TIMEOUT


class InvalidTickError(FeedError):
    """Ticks failed validation, or a control reply was garbage; quarantined, reported."""

    error_type = ErrorType.INVALID_MARKET_DATA


class TickRangeLostError(FeedError):
    """The exchange no longer retains a missing range: an explicit, counted loss."""

    error_type = ErrorType.DATA_INGESTION_FAILURE


class UnknownSymbolsError(FeedError):
    """The exchange does not know some configured symbols; the others are ingested.

    ``symbols`` holds the unknown names. A configuration error: retrying does not fix it.
    """

    error_type = ErrorType.CONFIGURATION_ERROR

    def __init__(self, message: str, symbols: tuple[str, ...]) -> None:
        super().__init__(message)
        self.symbols = symbols


class _KickedError(Exception):
    """The feed was asked to reconnect (reload, failover)."""


# ----------------------------------------------------------------------------------- contracts


class TickSink(Protocol):
    """Where a feed delivers: the :class:`~strategylab.market._ingest.Ingestor` is one."""

    async def put(self, ticks: list[Tick]) -> None:
        """Take ``ticks`` (in sequence order per symbol); waits while the sink is full."""
        ...

    async def quarantine(self, entries: list[QuarantinedTick]) -> None:
        """Take refused input with its reason."""
        ...

    async def last_seqs(self) -> dict[str, int]:
        """The highest durably stored sequence per symbol."""
        ...


class AcknowledgingSink(TickSink, Protocol):
    """A sink that also says what it has durably dealt with (the ingestor does).

    A feed proves a connection by seeing ``accounted()`` pass the position the connection started
    from; with a sink that lacks the method, a delivery (``put`` returned) counts instead.
    """

    def accounted(self) -> Mapping[str, int]:
        """Per symbol, the highest sequence stored or quarantined (committed)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FeedConfig:
    """How a :class:`Feed` connects and when it gives up on a connection.

    ``urls`` is the primary exchange endpoint followed by backups (FAILOVER moves to the next).
    Times are in seconds. ``proven_after``: a connection alive this long after "subscribed" has
    proven itself and resets the reconnect backoff (so does data it delivered being stored).
    ``retry_later_floor``: the least wait after the server closes with 1012 or 1013.
    ``max_server_wait``: the cap on a ``Retry-After`` wait the server asks for.

    Bounds on what a peer sends (anything outside is refused before it is acknowledged): a tick's
    ``ts`` must lie within ``max_past`` seconds before and ``max_future`` seconds after this
    process's wall clock, its prices within (0, ``max_price``] and its sizes within
    [0, ``max_size``] (and its integers within a 64-bit store column); refused ticks are
    quarantined and never move the per-symbol timestamp reference. ``max_message_bytes`` caps one
    WebSocket message (refused at the frame header; it must exceed the exchange's largest frame:
    ``ticks_per_frame`` × ~70 bytes, at most ~7 MB), ``max_queue`` the messages buffered unread,
    ``max_control_bytes`` and ``max_control_depth`` a JSON control message's length (bytes) and
    nesting, ``max_control_digits`` a number's digits in one. ``max_violations`` forged frames
    (missing or bad signature) within ``violation_window`` seconds pull the kill switch. Raises
    :class:`~strategylab.errors.ConfigurationError` naming a bad field.
    """

    urls: tuple[str, ...]
    symbols: tuple[str, ...]
    signing_key: bytes | None = dataclasses.field(default=None, repr=False)
    stale_after: float = 3.0
    backoff_floor: float = 0.05
    backoff_cap: float = 5.0
    connect_timeout: float = 5.0
    replay_timeout: float = 5.0
    max_replay_attempts: int = 3
    max_held: int = 100_000
    """Ticks held behind gaps, all symbols together, before the feed resyncs (memory bound)."""
    max_put: int = 10_000
    """Most ticks handed to the sink in one ``put`` (a long replay is delivered in slices)."""
    recovery_timeout: float = 10.0
    proven_after: float = 5.0
    retry_later_floor: float = 1.0
    max_server_wait: float = 60.0
    report_quiet: float = 5.0
    """Repeats of an error type within this many seconds of the last are counted, not reported."""
    recovered_quiet: float = 60.0
    """After the manager recovered from an error type, repeats within this many seconds are
    counted, not reported: escalation then counts episodes, so a stream of noise the feed heals
    itself (corrupt frames, refused ticks) cannot escalate to an emergency shutdown."""
    max_future: float = 5.0
    max_past: float = 30 * 86_400.0
    max_price: float = 1e9
    max_size: float = 1e12
    max_message_bytes: int = 16 * 1024 * 1024
    max_queue: int = 16
    max_control_bytes: int = 64 * 1024
    max_control_depth: int = 8
    max_control_digits: int = 20
    max_violations: int = 5
    violation_window: float = 60.0
    name: str = "feed"

    def __post_init__(self) -> None:  # noqa: C901, PLR0912 - one check per field
        if not self.urls:
            raise ConfigurationError("urls", self.urls, "must be a non-empty tuple of ws:// URLs")
        for url in self.urls:
            if not url.startswith(("ws://", "wss://")):
                raise ConfigurationError("urls", url, "must start with ws:// or wss://")
        if not self.symbols or not all(self.symbols):
            raise ConfigurationError("symbols", self.symbols, "must be non-empty symbol names")
        for key in (
            "stale_after",
            "backoff_floor",
            "connect_timeout",
            "replay_timeout",
            "proven_after",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number > 0")
        if not self.backoff_cap >= self.backoff_floor:
            raise ConfigurationError("backoff_cap", self.backoff_cap, "must be >= backoff_floor")
        if self.max_replay_attempts < 1:
            raise ConfigurationError(
                "max_replay_attempts", self.max_replay_attempts, "must be >= 1"
            )
        for key in ("max_held", "max_put"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise ConfigurationError(key, getattr(self, key), "must be an integer >= 1")
        if not self.recovery_timeout > 0:
            raise ConfigurationError("recovery_timeout", self.recovery_timeout, "must be > 0")
        for key in (
            "retry_later_floor",
            "max_server_wait",
            "max_future",
            "max_past",
            "report_quiet",
            "recovered_quiet",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(key, value, "must be a finite number >= 0")
        for key in ("max_price", "max_size", "violation_window"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number > 0")
        for key, least in (
            ("max_message_bytes", 1024),
            ("max_queue", 1),
            ("max_control_bytes", 256),
            ("max_control_depth", 2),
            ("max_control_digits", 20),
            ("max_violations", 1),
        ):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ConfigurationError(key, value, f"must be an integer >= {least}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FeedStatistics:
    """A frozen snapshot of a feed's counters."""

    connected: bool
    subscribed: bool
    url: str
    frames: int
    """Binary frames received, good or bad."""
    ticks: int
    """Ticks delivered to the sink (valid, in order, new)."""
    duplicates: int
    gaps: int
    replays_requested: int
    crc_errors: int
    """Frames dropped as malformed (CRC mismatch, bad header, undecodable payload)."""
    signature_errors: int
    """Forged frames (missing or bad signature); each one dropped its connection."""
    invalid_ticks: int
    lost_ticks: int
    lost_ranges: int
    control_errors: int
    reconnects: int
    stale_timeouts: int
    reports_suppressed: int
    """Errors counted but not sent to the manager: repeats within one episode, or overflow."""
    connect_failures: int
    """Connection attempts that failed before the WebSocket handshake completed."""
    pauses: int
    """Times the stale watchdog woke late (process stopped, loop blocked) and re-armed."""
    proven: bool
    """The current connection has proven itself (data stored, or alive ``proven_after``)."""
    unknown_symbols: tuple[str, ...]
    """Configured symbols the exchange said it does not know (on the last subscription)."""
    last_seq: Mapping[str, int]
    """The last sequence accounted for (delivered, quarantined or declared lost) per symbol."""


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


# ----------------------------------------------------------------------------------- the feed


class Feed:
    """A resilient exchange feed (a :class:`~strategylab.fault_tolerance.Component`)."""

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
            rng=rng or random.Random(),
            clock=clock,
        )
        accounted = getattr(sink, "accounted", None)
        self._accounted: Callable[[], Mapping[str, int]] | None = (
            accounted if callable(accounted) else None
        )
        self._url_index = 0
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
        self._connected = False
        self._subscribed = False
        self._blocked = False
        self._outage = False
        self._kick_reason: str | None = None
        self._session = ""
        self._last_seen = 0.0
        # Per-symbol state: the last accounted-for seq, the last valid ts, held ticks, replays.
        self._delivered: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self._held: dict[str, dict[int, Tick]] = {}
        self._held_count = 0
        self._pending: dict[str, _Pending] = {}
        self._hb_last: dict[str, int] = {}
        self._hb_delivered: dict[str, int] = {}
        self._connects = 0
        self._frames = self._ticks = self._duplicates = self._gaps = self._replays = 0
        self._crc_errors = self._signature_errors = self._invalid = self._lost = 0
        self._lost_ranges = self._control_errors = self._stale = 0

    # ------------------------------------------------------------------ Component

    @property
    def name(self) -> str:
        """The component name the manager knows this feed by."""
        return self._config.name

    @property
    def url(self) -> str:
        """The endpoint in use (changes on failover)."""
        return self._config.urls[self._url_index]

    async def start(self) -> None:
        """Start connecting (in an owned task); returns at once."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._run(), name=f"{self.name}.run")

    async def stop(self) -> None:
        """Close the connection and stop every task this feed owns."""
        current = asyncio.current_task()
        await cancel_and_wait(t for t in (self._task, self._kill_task) if t is not current)
        await self._reporter.aclose()
        self._task = None

    async def aclose(self) -> None:
        """Alias of :meth:`stop`."""
        await self.stop()

    async def restart(self) -> None:
        """Stop and start again, keeping the per-symbol positions (nothing is re-delivered)."""
        await self.stop()
        await self.start()
        await self._wait_healthy_quietly()

    async def failover(self) -> bool:
        """Switch to the next configured endpoint; False when there is only one."""
        if len(self._config.urls) < 2:
            return False
        self._url_index = (self._url_index + 1) % len(self._config.urls)
        self._kick("failover")
        await self._wait_healthy_quietly()
        return True

    async def reload(self) -> bool:
        """Drop held ticks and outstanding replays and resync from the exchange (reconnect)."""
        self._kick("reload")
        await self._wait_healthy_quietly()
        return True

    async def health(self) -> bool:
        """Connected, subscribed, a frame seen within ``stale_after`` (or blocked on the sink)."""
        if not (self._connected and self._subscribed):
            return False
        if self._blocked:
            return True
        since = max(self._last_seen, self._observed_from)
        return self._clock.monotonic() - since < self._config.stale_after

    async def wait_healthy(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until connected and subscribed; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._healthy.wait()

    def statistics(self) -> FeedStatistics:
        """A frozen snapshot of the counters."""
        reports = self._reporter.statistics()
        return FeedStatistics(
            connected=self._connected,
            subscribed=self._subscribed,
            url=self.url,
            frames=self._frames,
            ticks=self._ticks,
            duplicates=self._duplicates,
            gaps=self._gaps,
            replays_requested=self._replays,
            crc_errors=self._crc_errors,
            signature_errors=self._signature_errors,
            invalid_ticks=self._invalid,
            lost_ticks=self._lost,
            lost_ranges=self._lost_ranges,
            control_errors=self._control_errors,
            reconnects=max(0, self._connects - 1),
            stale_timeouts=self._stale,
            reports_suppressed=reports.suppressed + reports.dropped,
            connect_failures=self._connect_failures,
            pauses=self._pauses,
            proven=self._backoff.proven,
            unknown_symbols=tuple(s for s in self._config.symbols if s in self._unknown),
            last_seq=dict(self._delivered),
        )

    # ------------------------------------------------------------------ connection loop

    def _kick(self, reason: str) -> None:
        self._kick_reason = reason
        if self._reader is not None:
            self._reader.cancel()

    async def _wait_healthy_quietly(self) -> None:
        with contextlib.suppress(TimeoutError):
            await self.wait_healthy(self._config.recovery_timeout)

    async def _run(self) -> None:
        while True:
            url = self.url
            self._connects += 1
            try:
                error = await self._connect_once(url)
            finally:
                ws = self._ws
                if ws is not None:
                    self._check_proven()  # data stored just before the close still counts
                self._on_disconnect()
            close_code = ws.close_code if ws is not None else None
            retry_after = None if error is None else retry_after_hint(error, clock=self._clock)
            delay = self._backoff.next_delay(close_code=close_code, retry_after=retry_after)
            if isinstance(error, SecurityViolationError):
                # Reported when the frame arrived; the next connection goes to a backup if any.
                self._outage = True
                if len(self._config.urls) > 1:
                    self._url_index = (self._url_index + 1) % len(self._config.urls)
                    delay = 0.0
            elif error is not None:
                if ws is None:
                    self._connect_failures += 1
                    self._log_connect_failure(url, error, delay)
                elif not self._outage:
                    self._log_drop(url, ws, error, delay)
                if not self._outage:
                    self._outage = True
                    self._reporter.report(error, operation=self._wait_recovered, always=True)
            if delay > 0:
                await self._clock.asleep(delay)

    async def _connect_once(self, url: str) -> Exception | None:
        """One connection from attempt to end; the error that ended it (None when kicked)."""
        try:
            await self._connection(url)
        except _KickedError:
            return None
        except FeedError as exc:
            return exc
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            error = FeedDisconnectedError(f"{url}: {type(exc).__name__}: {_peer(exc)}")
            error.__cause__ = exc
            return error
        except Exception as exc:
            # Bad input must never kill the feed: log it, report it, reconnect.
            _log.exception("feed %s: unexpected error; reconnecting", self.name)
            error = FeedDisconnectedError(f"{url}: unexpected {type(exc).__name__}: {_peer(exc)}")
            error.__cause__ = exc
            return error
        return FeedDisconnectedError(f"{url}: the exchange closed the connection")

    def _log_connect_failure(self, url: str, error: Exception, delay: float) -> None:
        """Once per cause until a connection succeeds: a refused or failed attempt, and why."""
        key, cause = _connect_failure(error, self._config.connect_timeout)
        if key in self._connect_logged:
            return
        self._connect_logged.add(key)
        _log.warning(
            "feed %s: cannot connect to %s: %s; retrying in %.2fs with backoff "
            "(logged once per cause until connected)",
            self.name,
            url,
            cause,
            delay,
        )

    def _log_drop(self, url: str, ws: ClientConnection, error: Exception, delay: float) -> None:
        """Once per outage: why an established connection ended."""
        code = ws.close_code
        if isinstance(error, StaleFeedError | ReplayTimeoutError) or code is None:
            cause = str(error)
        else:
            cause = f"closed with code {code} reason {_peer(ws.close_reason or '')}"
            if code in RETRY_LATER_CODES:
                cause += " (the server asks the client to wait)"
        _log.warning(
            "feed %s: connection to %s lost: %s; reconnecting in %.2fs "
            "(logged once until a connection proves itself)",
            self.name,
            url,
            cause,
            delay,
        )

    def _check_proven(self) -> None:
        """Has the current connection proven itself? Then the backoff starts over."""
        backoff = self._backoff
        if backoff.proven or not self._subscribed:
            return
        if backoff.alive(self._last_seen) or (self._stored_progress() and backoff.stored()):
            self._outage = False
            self._proven.set()

    def _stored_progress(self) -> bool:
        """Whether the sink has dealt with data this connection delivered."""
        done = self._delivered if self._accounted is None else self._accounted()
        return any(done.get(s, 0) > n for s, n in self._proof_base.items())

    def _on_disconnect(self) -> None:
        self._connected = self._subscribed = self._blocked = False
        self._healthy.clear()
        self._proven.clear()
        self._ws = None
        self._reader = None
        # Held ticks and pending replays are per connection: the resubscription resends them.
        self._held.clear()
        self._held_count = 0
        self._pending.clear()
        self._hb_last.clear()

    async def _wait_recovered(self) -> None:
        """A drop is recovered when a new connection has proven itself, not merely subscribed:
        a server that accepts and closes again is still an outage."""
        async with asyncio.timeout(self._config.recovery_timeout):
            await self._proven.wait()

    async def _connection(self, url: str) -> None:
        cfg = self._config
        async with asyncio.timeout(cfg.connect_timeout):
            # A dead link cannot finish a closing handshake: cap the wait for one, so that leaving
            # a connection never delays the reconnect by websockets' default 10 s.
            ws = await connect(
                url,
                max_size=cfg.max_message_bytes,
                max_queue=cfg.max_queue,
                compression=None,
                ping_interval=None,
                close_timeout=min(cfg.stale_after, 1.0),
            )
        async with ws:
            self._ws = ws
            self._connected = True
            self._connect_logged.clear()  # a new episode of failed attempts starts after this
            stored = await self._sink.last_seqs()
            delivered = self._delivered
            for symbol in cfg.symbols:
                delivered[symbol] = max(delivered.get(symbol, 0), stored.get(symbol, 0))
            from_seq = {s: delivered[s] + 1 for s in cfg.symbols}
            self._proof_base = {s: delivered[s] for s in cfg.symbols}
            self._unknown = frozenset()
            self._last_seen = self._observed_from = self._clock.monotonic()
            self._kick_reason = None
            # A fresh token per connection: a signed answer is only taken on the connection it
            # was made for (see _protocol).
            session = self._session = secrets.token_hex(16)
            reader = self._reader = asyncio.create_task(self._read(ws), name=f"{self.name}.read")
            subscribe = Subscribe(symbols=list(cfg.symbols), from_seq=from_seq, session=session)
            await ws.send(_json_encode(subscribe).decode())
            try:
                await self._watch(reader)
            except StaleFeedError:
                # A dead connection cannot complete a closing handshake: ``async with ws`` would
                # wait websockets' close_timeout (10 s) before the reconnect. Abort it instead.
                ws.transport.abort()
                raise
            finally:
                reader.cancel()
                await asyncio.wait({reader})

    async def _watch(self, reader: asyncio.Task[None]) -> None:
        """Wait on the reader; close on a stale connection or an unanswered replay.

        Silence is measured from the later of the last frame and the last time the watchdog woke
        up late: a late wake-up means this process was not running (SIGSTOP, a blocked loop),
        and what the peer sent meanwhile is buffered, unread; judging it stale would discard it.
        """
        clock = self._clock
        late = max(self._config.stale_after * _PAUSE_FRACTION, _PAUSE_MIN)
        while True:
            now = clock.monotonic()
            if not self._backoff.proven:
                self._check_proven()
            deadline = self._deadline(now)
            if self._subscribed and not self._backoff.proven:
                deadline = min(deadline, now + _PROOF_POLL)
            wait = max(deadline - now, 0.001)
            await asyncio.wait({reader}, timeout=wait)
            if reader.done():
                if reader.cancelled():
                    raise _KickedError(self._kick_reason or "cancelled")
                reader.result()  # raises what ended the reader
                return
            woke = clock.monotonic()
            if woke - (now + wait) > late:
                self._pauses += 1
                self._observed_from = woke

    def _deadline(self, now: float) -> float:
        """When the watchdog must look again; raises if the connection is stale or a replay
        went unanswered."""
        cfg = self._config
        since = max(self._last_seen, self._observed_from)
        deadline = since + cfg.stale_after
        if self._blocked:
            deadline = now + cfg.stale_after
        elif now >= deadline:
            self._stale += 1
            raise StaleFeedError(
                f"{self.url}: no frame for {now - since:.2f}s (stale_after={cfg.stale_after}s)"
            )
        for symbol, pending in self._pending.items():
            due = max(pending.requested_at, self._observed_from) + cfg.replay_timeout
            if now >= due:
                raise ReplayTimeoutError(
                    f"replay of {symbol} {pending.first}..{pending.last} unanswered "
                    f"after {cfg.replay_timeout}s"
                )
            deadline = min(deadline, due)
        return deadline

    async def _read(self, ws: ClientConnection) -> None:
        key = self._key
        clock = self._clock
        async for message in ws:
            self._last_seen = clock.monotonic()
            if isinstance(message, str):
                if key is not None:
                    # With a key every answer comes as a signed frame: text is a forgery.
                    raise self._on_forged(
                        SignatureError("unsigned control text message while a signing key is set")
                    )
                await self._on_control(ws, message)
                continue
            self._frames += 1
            try:
                frame = decode_frame(message, key)
                kind = frame.kind
                if kind == KIND_TICKS:
                    ticks = decode_ticks(frame.payload)
                else:
                    await self._on_other_frame(ws, frame)
                    continue
            except SignatureError as exc:
                raise self._on_forged(exc) from exc
            except FrameError as exc:
                self._crc_errors += 1
                self._reporter.report(exc)
                continue
            if not self._subscribed:
                self._on_subscribed()
            await self._on_ticks(ws, ticks)

    async def _on_other_frame(self, ws: ClientConnection, frame: Frame) -> None:
        """A verified frame that carries no ticks: heartbeat, replay done or control answer.
        Raises :class:`FrameError` for an unknown kind or a bad payload, :class:`SignatureError`
        for an answer of another session."""
        kind = frame.kind
        if kind == KIND_HEARTBEAT:
            await self._on_heartbeat(ws, decode_heartbeat(frame.payload).last)
        elif kind == KIND_REPLAY_DONE:
            done = decode_replay_done(frame.payload)
            self._check_session(done.session, "replay-done")
            await self._on_done_frame(ws, done)
        elif kind == KIND_CONTROL:
            reply = decode_control(frame.payload)
            self._check_session(reply.session, "control")
            fields = msgspec.structs.asdict(reply)
            answer = {k: v for k, v in fields.items() if v is not None}
            await self._on_reply(ws, answer, repr(answer))
        else:
            raise FrameError(f"unknown frame kind {kind!r}")

    def _check_session(self, session: str, what: str) -> None:
        """With a key, a signed answer must carry this connection's session token: one captured
        on another connection and replayed here is a forgery (raises :class:`SignatureError`)."""
        if self._key is not None and not hmac.compare_digest(
            session.encode("utf-8", "surrogatepass"), self._session.encode()
        ):
            raise SignatureError(f"signed {what} frame of another session (replayed)")

    def _on_forged(self, exc: SignatureError) -> SecurityViolationError:
        """Record a forged frame, pull the kill switch past the threshold; the error that drops
        the connection (nothing else from a connection that carried a forgery is trusted)."""
        self._signature_errors += 1
        cfg = self._config
        now = self._clock.monotonic()
        times = self._violations
        times.append(now)
        while now - times[0] > cfg.violation_window:
            times.popleft()
        error = SecurityViolationError(
            f"{self.url}: forged frame ({exc}); connection dropped "
            f"({len(times)} of {cfg.max_violations} within {cfg.violation_window}s)"
        )
        _log.warning("feed %s: %s; reconnecting", self.name, error)
        if self._on_violation is not None:
            try:
                self._on_violation(error)
            except Exception:
                _log.exception("feed %s: the on_violation callback failed", self.name)
        # Every violation is recorded (never folded into a quiet period): the count matters.
        self._reporter.report(error, operation=self._wait_recovered, always=True)
        if len(times) >= cfg.max_violations and not self._killed:
            self._killed = True
            self._pull_kill_switch(
                SecurityKillSwitchError(
                    f"{len(times)} forged frames within {cfg.violation_window}s "
                    f"(max_violations={cfg.max_violations}): kill switch"
                )
            )
        return error

    def _pull_kill_switch(self, error: SecurityKillSwitchError) -> None:
        _log.error("feed %s: %s", self.name, error)
        # Owned, but not a report: the kill switch is never dropped for the reports' cap.
        self._kill_task = asyncio.create_task(self._kill(error), name=f"{self.name}.kill-switch")

    async def _kill(self, error: SecurityKillSwitchError) -> None:
        try:
            if self._kill_switch is not None:
                await self._kill_switch(error)
            elif self._manager is not None:
                context = ErrorContext.from_exception(
                    error,
                    component=self.name,
                    error_type=ErrorType.SECURITY_VIOLATION,
                    severity=ErrorSeverity.CRITICAL,
                    capture_state=False,
                    clock=self._clock,
                )
                await self._manager.handle(context)
        except Exception:
            _log.exception("feed %s: the kill switch failed", self.name)

    def _on_subscribed(self) -> None:
        # Not a reset of the backoff or of the outage: a server that answers "subscribed" and
        # closes has proven nothing (see _check_proven).
        self._subscribed = True
        self._backoff.healthy()
        self._healthy.set()

    # ------------------------------------------------------------------ the hot path

    async def _on_ticks(self, ws: ClientConnection, ticks: list[Tick]) -> None:  # noqa: C901, PLR0912, PLR0915 - the hot loop, inlined
        delivered = self._delivered
        last_ts = self._last_ts
        out: list[Tick] = []
        append = out.append
        bad: list[QuarantinedTick] | None = None
        gaps: list[str] | None = None
        symbol = ""
        last = -1
        prev_ts = -1
        dups = 0
        bounds = self._tick_bounds()
        min_ts, max_ts = bounds.min_ts, bounds.max_ts
        max_price, max_size = bounds.max_price, bounds.max_size
        for tick in ticks:
            if tick.symbol != symbol:
                if last >= 0:
                    delivered[symbol] = last
                    last_ts[symbol] = prev_ts
                symbol = tick.symbol
                if symbol not in self._symbols:
                    self._control_errors += 1
                    last = -1
                    symbol = ""
                    continue
                last = delivered.get(symbol, 0)
                prev_ts = last_ts.get(symbol, -1)
            elif last < 0:
                continue
            seq = tick.seq
            if not 0 < seq <= INT64_MAX:
                # Not a position in the stream at all: quarantined, no position moves.
                bad = [] if bad is None else bad
                bad.append(self._refused(tick, f"seq {seq} outside 1..2**63-1"))
                continue
            if seq != last + 1:
                if seq <= last:
                    dups += 1
                else:
                    if symbol not in self._held:
                        self._held[symbol] = {}
                    held = self._held[symbol]
                    if seq not in held:
                        held[seq] = tick
                        self._held_count += 1
                    if symbol not in self._pending:
                        if gaps is None:
                            gaps = []
                        gaps.append(symbol)
                continue
            ts = tick.ts
            if (
                0.0 < tick.bid <= tick.ask <= max_price
                and 0.0 <= tick.bid_size <= max_size
                and 0.0 <= tick.ask_size <= max_size
                and min_ts <= ts <= max_ts
                and ts >= prev_ts
            ):
                prev_ts = tick.ts
                append(tick)
            else:
                if bad is None:
                    bad = []
                entry = self._refuse(tick, prev_ts, bounds)
                if entry is None:
                    prev_ts = tick.ts
                    append(tick)
                else:
                    bad.append(entry)
            last = seq
        if last >= 0:
            delivered[symbol] = last
            last_ts[symbol] = prev_ts
        self._duplicates += dups
        if self._held:
            bad = self._drain_held(out, bad)
        # Deliver before anything else can fail (a send on a dead socket): positions have moved.
        await self._deliver(out, bad)
        if self._pending:
            for pending_symbol, pending in list(self._pending.items()):
                if delivered.get(pending_symbol, 0) >= pending.last:
                    del self._pending[pending_symbol]  # filled, whether or not "done" arrives
                    await self._request_hole(ws, pending_symbol, count_gap=False)
        if gaps is not None:
            for gap_symbol in dict.fromkeys(gaps):
                await self._request_hole(ws, gap_symbol, count_gap=True)
        if self._held_count > self._config.max_held:
            self._kick(f"{self._held_count} ticks held behind gaps > max_held")

    def _tick_bounds(self) -> TickBounds:
        """The plausible range of a tick received now (the timestamp window moves with the
        wall clock of this process)."""
        cfg = self._config
        now = self._clock.time()
        return TickBounds(
            min_ts=max(INT64_MIN, min(INT64_MAX, int((now - cfg.max_past) * 1e9))),
            max_ts=max(INT64_MIN, min(INT64_MAX, int((now + cfg.max_future) * 1e9))),
            max_price=cfg.max_price,
            max_size=cfg.max_size,
        )

    def _refuse(self, tick: Tick, prev_ts: int, bounds: TickBounds) -> QuarantinedTick | None:
        reason = validate_tick(tick, prev_ts if prev_ts >= 0 else None, bounds=bounds)
        if reason is None:
            return None
        return self._refused(tick, reason)

    def _refused(self, tick: Tick, reason: str) -> QuarantinedTick:
        """The quarantine entry of a refused tick: only values that fit the store's columns
        (the raw tick keeps the rest, as text)."""
        self._invalid += 1
        return QuarantinedTick(
            received_ns=int(self._clock.time() * 1e9),
            reason=reason,
            raw=repr(tick)[:_RAW_CHARS],
            symbol=tick.symbol,
            seq=tick.seq if 0 < tick.seq <= INT64_MAX else None,
        )

    def _drain_held(
        self, out: list[Tick], bad: list[QuarantinedTick] | None
    ) -> list[QuarantinedTick] | None:
        """Move held ticks that now follow on from the delivered position into ``out``."""
        delivered = self._delivered
        bounds = self._tick_bounds()
        for symbol in list(self._held):
            held = self._held[symbol]
            last = delivered.get(symbol, 0)
            for seq in [s for s in held if s <= last]:
                del held[seq]
                self._held_count -= 1
                self._duplicates += 1
            prev_ts = self._last_ts.get(symbol, -1)
            while (tick := held.pop(last + 1, None)) is not None:
                self._held_count -= 1
                entry = self._refuse(tick, prev_ts, bounds)
                if entry is None:
                    prev_ts = tick.ts
                    out.append(tick)
                else:
                    if bad is None:
                        bad = []
                    bad.append(entry)
                last += 1
            delivered[symbol] = last
            self._last_ts[symbol] = prev_ts
            if not held:
                del self._held[symbol]
        return bad

    async def _deliver(self, out: list[Tick], bad: list[QuarantinedTick] | None) -> None:
        """Hand over a frame's outcome; if that is interrupted, move the positions back so that
        the resubscription delivers the same ticks again (nothing falls between the chairs)."""
        try:
            if bad:
                await self._sink.quarantine(bad)
                self._reporter.report(
                    InvalidTickError(
                        f"{len(bad)} invalid tick(s) quarantined; first: {bad[0].reason}"
                    )
                )
            step = self._config.max_put
            for start in range(0, len(out), step):
                piece = out if len(out) <= step else out[start : start + step]
                self._blocked = True
                try:
                    await self._sink.put(piece)
                finally:
                    self._blocked = False
                    self._last_seen = self._clock.monotonic()
                self._ticks += len(piece)
        except BaseException:
            self._rewind(out, bad)
            raise

    def _rewind(self, out: list[Tick], bad: list[QuarantinedTick] | None) -> None:
        first: dict[str, int] = {}
        for tick in out:
            first.setdefault(tick.symbol, tick.seq)
        for entry in bad or ():
            if entry.symbol is not None and entry.seq is not None:
                seq = first.get(entry.symbol)
                first[entry.symbol] = entry.seq if seq is None else min(seq, entry.seq)
        for symbol, seq in first.items():
            self._delivered[symbol] = min(self._delivered.get(symbol, 0), seq - 1)
            self._last_ts.pop(symbol, None)

    async def _request_hole(self, ws: ClientConnection, symbol: str, *, count_gap: bool) -> None:
        """Ask for the range between the delivered position and the first held tick."""
        held = self._held.get(symbol)
        if not held or symbol in self._pending:
            return
        first = self._delivered.get(symbol, 0) + 1
        last = min(held) - 1
        if last < first:
            return
        if count_gap:
            self._gaps += 1
        await self._send_replay(ws, symbol, first, last)

    async def _send_replay(self, ws: ClientConnection, symbol: str, first: int, last: int) -> None:
        pending = self._pending.get(symbol)
        if pending is None:
            self._pending[symbol] = _Pending(first, last, self._clock.monotonic())
        else:
            pending.attempts += 1
            pending.first, pending.last = first, last
            pending.requested_at = self._clock.monotonic()
            pending.beats = 0
        pending = self._pending[symbol]
        self._replays += 1
        pending.request_id = self._replays  # unique per feed: a late answer is told apart
        pending.asked = last
        request = ReplayRequest(
            symbol=symbol, from_seq=first, to_seq=last, request_id=self._replays
        )
        await ws.send(_json_encode(request).decode())

    # ------------------------------------------------------------------ control and heartbeats

    async def _on_heartbeat(self, ws: ClientConnection, last_by_symbol: dict[str, int]) -> None:
        """A tail gap is a symbol the exchange was ahead on at the PREVIOUS heartbeat too, with no
        progress since: ticks in flight at one heartbeat do not trigger a replay."""
        delivered = self._delivered
        for symbol, pending in list(self._pending.items()):
            pending.beats += 1
            if pending.beats >= 2:
                await self._on_replay_done(ws, symbol, pending.last)
        for symbol, hb_last in self._hb_last.items():
            now_delivered = delivered.get(symbol, 0)
            if (
                hb_last > now_delivered
                and self._hb_delivered.get(symbol) == now_delivered
                and symbol not in self._pending
                and symbol not in self._held
            ):
                self._gaps += 1
                await self._send_replay(ws, symbol, now_delivered + 1, hb_last)
        self._hb_last = {s: n for s, n in last_by_symbol.items() if s in self._symbols}
        self._hb_delivered = {s: delivered.get(s, 0) for s in self._hb_last}

    async def _on_done_frame(self, ws: ClientConnection, done: ReplayDone) -> None:
        """A replay-done frame. One echoing an earlier request than the symbol's current one is
        late and changes nothing; one answering the current request below what it asked means
        the exchange never emitted more: what is held beyond is quarantined, not chased. (An
        exchange that echoes no ``request_id`` is taken at its word, without the clamp check.)"""
        symbol, to_seq = done.symbol, done.to_seq
        pending = self._pending.get(symbol)
        if pending is None:
            return
        if done.request_id:
            if done.request_id != pending.request_id:
                return
            if to_seq < pending.asked:
                await self._refuse_beyond(symbol, to_seq)
        await self._on_replay_done(ws, symbol, to_seq)

    async def _on_replay_done(self, ws: ClientConnection, symbol: str, to_seq: int) -> None:
        pending = self._pending.get(symbol)
        if pending is None:
            return
        # The exchange clamps a replay to what it has emitted; later ticks arrive live.
        pending.last = min(pending.last, to_seq)
        if self._delivered.get(symbol, 0) < pending.last:
            # Some of the replay did not arrive intact (a corrupted frame): ask again, then give up.
            if pending.attempts < self._config.max_replay_attempts:
                first = self._delivered.get(symbol, 0) + 1
                await self._send_replay(ws, symbol, first, pending.last)
                return
            # Only the exchange can say a range is gone; resubscribing asks it for everything
            # after the delivered position (and an unretained part comes back as an error).
            self._kick(f"replay of {symbol} incomplete after {pending.attempts} attempts")
            return
        del self._pending[symbol]
        await self._after_fill(ws)

    async def _refuse_beyond(self, symbol: str, emitted: int) -> None:
        """The exchange says it emitted ``symbol`` only up to ``emitted``, yet ticks beyond the
        hole are held: it never sent those as part of this stream. Quarantine them (without
        moving the delivered position) instead of asking for the hole again and again."""
        held = self._held.get(symbol)
        if not held:
            return
        beyond = sorted(seq for seq in held if seq > emitted + 1)
        if not beyond:
            return
        refused = [
            self._refused(held.pop(seq), f"seq beyond the exchange's last emitted {emitted}")
            for seq in beyond
        ]
        self._held_count -= len(refused)
        if not held:
            del self._held[symbol]
        await self._sink.quarantine(refused)
        self._reporter.report(
            InvalidTickError(f"{len(refused)} {symbol} tick(s) {refused[0].reason}")
        )

    async def _after_fill(self, ws: ClientConnection) -> None:
        if not self._held:
            return
        out: list[Tick] = []
        bad = self._drain_held(out, None)
        await self._deliver(out, bad)
        for symbol in list(self._held):
            await self._request_hole(ws, symbol, count_gap=False)

    async def _declare_lost(self, symbol: str, first: int, last: int, reason: str) -> None:
        if last < first:
            return
        self._lost += last - first + 1
        self._lost_ranges += 1
        self._delivered[symbol] = max(self._delivered.get(symbol, 0), last)
        what = f"{symbol} seq {first}..{last} ({last - first + 1} ticks) lost: {reason}"
        _log.error("feed %s: %s", self.name, what)
        await self._sink.quarantine(
            [
                QuarantinedTick(
                    received_ns=int(self._clock.time() * 1e9),
                    reason=f"lost range {first}..{last}: {reason}",
                    raw="",
                    symbol=symbol,
                    seq=first,
                )
            ]
        )
        self._reporter.report(TickRangeLostError(what))

    async def _on_control(self, ws: ClientConnection, message: str) -> None:
        cfg = self._config
        refused = control_bounds_error(
            message,
            max_bytes=cfg.max_control_bytes,
            max_depth=cfg.max_control_depth,
            max_digits=cfg.max_control_digits,
        )
        if refused is not None:
            self._control_errors += 1
            self._reporter.report(InvalidTickError(f"control message refused: {refused}"))
            return
        try:
            reply = _json_decode(message)
        except msgspec.DecodeError:
            reply = None
        if not isinstance(reply, dict):
            self._control_errors += 1
            self._reporter.report(
                InvalidTickError(f"undecodable control message: {message[:200]!r}")
            )
            return
        await self._on_reply(ws, reply, message)

    async def _on_reply(self, ws: ClientConnection, reply: dict[str, object], message: str) -> None:
        """Act on one decoded control answer (from JSON text, or a verified control frame)."""
        kind = reply.get("type")
        if kind == "subscribed":
            self._on_subscribed()
        elif kind == "error" and "unknown" in reply:
            self._on_unknown_symbols(reply.get("unknown"))
        elif kind == "error":
            await self._on_exchange_error(ws, reply)
        else:
            self._control_errors += 1
            self._reporter.report(
                InvalidTickError(f"unexpected control message: {message[:200]!r}")
            )

    def _on_unknown_symbols(self, names: object) -> None:
        """The exchange subscribed the symbols it knows and names the others: log and report
        them once per distinct set, and keep ingesting the rest."""
        listed = names if isinstance(names, list) else []
        unknown = frozenset(s for s in listed if isinstance(s, str) and s in self._symbols)
        if not unknown:
            self._control_errors += 1
            self._reporter.report(
                InvalidTickError(f"unknown-symbols error naming none of ours: {names!r:.200}")
            )
            return
        self._unknown = unknown
        if unknown == self._unknown_reported:
            return
        self._unknown_reported = unknown
        ordered = tuple(s for s in self._config.symbols if s in unknown)
        known = [s for s in self._config.symbols if s not in unknown]
        rest = f"ingesting {', '.join(known)}" if known else "no configured symbol is known"
        what = f"the exchange does not know symbol(s) {', '.join(map(repr, ordered))}; {rest}"
        _log.error("feed %s: %s", self.name, what)
        self._reporter.report(UnknownSymbolsError(what, ordered))

    async def _on_exchange_error(self, ws: ClientConnection, reply: dict[str, object]) -> None:
        """An error naming a range is a loss of that range (the exchange then replays the rest);
        any other error is counted and reported."""
        reason = _peer(reply.get("reason", ""))
        symbol, first, last = reply.get("symbol"), reply.get("from_seq"), reply.get("to_seq")
        if not (
            isinstance(symbol, str)
            and symbol in self._symbols
            and isinstance(first, int)
            and isinstance(last, int)
            and not isinstance(first, bool)
            and not isinstance(last, bool)
            and 1 <= first <= last <= INT64_MAX
        ):
            self._control_errors += 1
            self._reporter.report(InvalidTickError(f"exchange error: {reason} ({reply!r:.200})"))
            return
        first = max(first, self._delivered.get(symbol, 0) + 1)
        await self._declare_lost(symbol, first, last, f"exchange: {reason}")
        await self._after_fill(ws)


def _connect_failure(error: BaseException, connect_timeout: float) -> tuple[str, str]:
    """``(key, cause)`` of a failed connection attempt: one key per kind of cause, and a line
    that says why, with anything the peer supplied escaped."""
    cause = error.__cause__ if error.__cause__ is not None else error
    if isinstance(cause, InvalidStatus):
        response = cause.response
        retry = response.headers.get("Retry-After")
        text = f"handshake rejected: HTTP {response.status_code} {_peer(response.reason_phrase)}"
        if retry is not None:
            text += f", Retry-After {_peer(retry)}"
        return f"http {response.status_code}", text
    if isinstance(cause, socket.gaierror):
        return "dns", f"DNS lookup failed: {cause.strerror or _peer(cause)}"
    if isinstance(cause, TimeoutError):
        return "timeout", f"no handshake within connect_timeout={connect_timeout}s"
    if isinstance(cause, OSError) and cause.errno is not None:
        name = errno.errorcode.get(cause.errno, str(cause.errno))
        return f"errno {name}", f"{cause.strerror or 'error'} ({name})"
    return type(cause).__name__, f"{type(cause).__name__}: {_peer(cause)}"


def last_seqs_of(ticks: Sequence[Tick]) -> dict[str, int]:
    """The highest sequence per symbol in ``ticks`` (in order per symbol)."""
    return {t.symbol: t.seq for t in ticks}
