"""The feed's session: one connection at a time, from the attempt to its end.

The reconnect loop (backoff, once-per-cause logging, reports), the subscription from the
resume point, the reader, and the watchdog that closes a stale connection or an unanswered
replay and tells a silent peer from a process that was not running."""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from strategylab.fault_tolerance import FailoverMember, retry_after_hint

from ._feed_backoff import RETRY_LATER_CODES
from ._feed_errors import (
    EndpointBehindError,
    FeedDisconnectedError,
    FeedError,
    ReplayTimeoutError,
    SecurityViolationError,
    StaleFeedError,
    _KickedError,
)
from ._feed_frames import _FeedFrames
from ._feed_state import _PAUSE_FRACTION, _PAUSE_MIN, _PROOF_POLL, _json_encode, _log, _peer
from ._protocol import KIND_TICKS, FrameError, SignatureError, Subscribe, decode_frame, decode_ticks

_CLOSE_ABNORMAL = 1006
"""The close code of a connection that ended without a close frame (RFC 6455 §7.1.5)."""


class _FeedSession(_FeedFrames):
    """The connection loop on top of the frame handler."""

    async def _run(self) -> None:
        endpoints = self._group
        while True:
            member = endpoints.active
            url = member.target
            self._connects += 1
            try:
                error = await self._connect_once(url)
            finally:
                ws = self._ws
                if ws is not None:
                    self._check_proven()  # data stored just before the close still counts
                subscribed = self._subscribed
                self._on_disconnect()
            delay = self._ended(member, ws, error, subscribed=subscribed)
            if delay > 0:
                await self._clock.asleep(delay)

    def _ended(
        self,
        member: FailoverMember[str],
        ws: ClientConnection | None,
        error: Exception | None,
        *,
        subscribed: bool = False,
    ) -> float:
        """Account for a connection that ended; the seconds to wait before the next one."""
        url = member.target
        close_code = ws.close_code if ws is not None else None
        retry_after = None if error is None else retry_after_hint(error, clock=self._clock)
        self._fast = self._fast_reconnect(ws, error, subscribed=subscribed)
        delay = self._backoff.next_delay(
            close_code=close_code, retry_after=retry_after, fast=self._fast
        )
        if isinstance(error, SecurityViolationError):
            # Reported when the frame arrived; the next connection goes to a backup if any.
            self._outage = True
            if len(self._config.urls) > 1:
                self._group.report_failure(member)
                delay = 0.0
        elif error is not None:
            if ws is None or isinstance(error, StaleFeedError | EndpointBehindError):
                # Unreachable, silent or behind: the next attempt goes to the next endpoint
                # (no-op with one URL); the group probes this one and switches back once healthy
                # (and no longer behind).
                self._group.report_failure(member)
            if ws is None:
                self._connect_failures += 1
                self._log_connect_failure(url, error, delay)
            elif isinstance(error, EndpointBehindError):
                pass  # logged once per endpoint when it was found behind
            elif not self._outage:
                self._log_drop(url, ws, error, delay)
            if not self._outage:
                self._outage = True
                self._reporter.report(error, operation=self._wait_recovered, always=True)
        return delay

    def _fast_reconnect(
        self, ws: ClientConnection | None, error: Exception | None, *, subscribed: bool
    ) -> bool:
        """Whether the next attempt is a fast one (hedged, its wait under the outage cap): the
        connection ended silently, within ``fast_reconnect_for`` seconds of the outage's start.

        Only the loss of a connection that had proven itself starts such an outage: at start-up,
        and against a server that has never held a connection long enough to prove one, the
        plain backoff applies (no hedging of a server that may be overloaded). Within an outage,
        a connection that was answered "subscribed" and then dropped without a close frame,
        before it proved itself, is the server's pattern rather than the network's: the plain
        backoff too (a server that subscribes and resets every time is never stormed); a stale
        one, a refused, reset or hung attempt stay fast."""
        if error is None:
            return False  # kicked (failover, reload, failback): not an outage
        now = self._clock.monotonic()
        if self._outage_since is None:
            if not self._backoff.proven:
                return False
            self._outage_since = now
        if now - self._outage_since >= self._config.fast_reconnect_for:
            return False
        if subscribed and not self._backoff.proven and not isinstance(error, StaleFeedError):
            return False
        return _silent(ws, error)

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
            self._outage_since = None
            self._fast = False
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
        self._stale_after = self._config.stale_after

    async def _dial(self, url: str) -> ClientConnection:
        """One connection attempt: TCP and the WebSocket handshake within ``connect_timeout``."""
        cfg = self._config
        self._attempts += 1
        async with asyncio.timeout(cfg.connect_timeout):
            # A dead link cannot finish a closing handshake: cap the wait for one, so that leaving
            # a connection never delays the reconnect by websockets' default 10 s.
            return await connect(
                url,
                max_size=cfg.max_message_bytes,
                max_queue=cfg.max_queue,
                compression=None,
                ping_interval=None,
                close_timeout=min(cfg.stale_after, 1.0),
            )

    async def _open(self, url: str) -> ClientConnection:
        """A handshaken connection to ``url``: one attempt, or hedged ones in a fast reconnect."""
        hedge = self._config.hedge_after
        if hedge is None or not self._fast:
            return await self._dial(url)
        return await self._open_hedged(url, hedge)

    def _in_fast_window(self) -> bool:
        since = self._outage_since
        return (
            since is not None and self._clock.monotonic() - since < self._config.fast_reconnect_for
        )

    async def _open_hedged(self, url: str, hedge: float) -> ClientConnection:
        """Attempts ``hedge`` seconds apart (on the feed's clock) while none has completed its
        handshake, at most ``max_hedged`` in flight (the oldest abandoned for a new one); the
        first to complete wins and the others are closed. Raises the error of the last attempt
        when every one has failed, and at once the answer of a server that refused the
        handshake (an HTTP status: the backoff and its ``Retry-After`` decide the next)."""
        flight: list[asyncio.Task[ClientConnection]] = []
        dropped: list[asyncio.Task[ClientConnection]] = []
        timer: asyncio.Task[None] | None = None
        error: BaseException | None = None
        try:
            while True:
                if timer is not None and timer.done():
                    timer = None
                if timer is None and (not flight or self._in_fast_window()):
                    self._launch(url, flight, dropped)
                    timer = asyncio.create_task(
                        self._clock.asleep(hedge), name=f"{self.name}.hedge"
                    )
                waiting: set[asyncio.Future[Any]] = {*flight}
                if timer is not None:
                    waiting.add(timer)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in [t for t in flight if t.done()]:
                    flight.remove(task)
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    if isinstance(exc, InvalidStatus):
                        raise exc
                    error = exc
                if not flight and error is not None:
                    raise error
        finally:
            if timer is not None:
                timer.cancel()
            self._abandoned += len(flight)
            await _close_attempts([*flight, *dropped])

    def _launch(
        self,
        url: str,
        flight: list[asyncio.Task[ClientConnection]],
        dropped: list[asyncio.Task[ClientConnection]],
    ) -> None:
        """Start one more attempt, abandoning the oldest when ``max_hedged`` are in flight."""
        if len(flight) >= self._config.max_hedged:
            oldest = flight.pop(0)
            oldest.cancel()
            dropped.append(oldest)
            self._abandoned += 1
        if flight:
            self._hedged += 1
        flight.append(asyncio.create_task(self._dial(url), name=f"{self.name}.connect"))

    async def _connection(self, url: str) -> None:
        cfg = self._config
        ws = await self._open(url)
        async with ws:
            self._ws = ws
            self._conn_url = url
            self._connected = True
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
            if self._group.active.target != url:
                self._kick("failback")  # switched back while this connection was being made
            subscribe = Subscribe(symbols=list(cfg.symbols), from_seq=from_seq, session=session)
            await ws.send(_json_encode(subscribe).decode())
            try:
                await self._watch(reader)
            except (StaleFeedError, EndpointBehindError, asyncio.CancelledError):
                # A dead connection cannot complete a closing handshake: ``async with ws`` would
                # wait websockets' close_timeout before the reconnect. Nor is one waited for when
                # the feed is stopped (a kill, a shutdown): under a backlog the peer's close
                # frame sits behind megabytes of unread frames, so the handshake would take the
                # whole close_timeout. Abort the transport instead.
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
        stale_after = self._stale_after
        deadline = since + stale_after
        if self._blocked:
            deadline = now + stale_after
        elif now >= deadline:
            self._stale += 1
            raise StaleFeedError(
                f"{self.url}: no frame for {now - since:.2f}s (stale after {stale_after:g}s)"
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
            self._last_seen = self._frame_at = clock.monotonic()
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
            # Frames already buffered by the connection come out of `async for` without a
            # suspension: yield once per frame, so that a backlog never holds the event loop
            # (the status service, health probes, the writer) for tens of milliseconds.
            await asyncio.sleep(0)


def _silent(ws: ClientConnection | None, error: Exception) -> bool:
    """Whether the network, not the server, ended the connection: a stale one, one reset or
    dropped without a close frame, or an attempt that was refused, reset or timed out. A close
    frame, an HTTP answer to the handshake, an endpoint behind, a forgery or an unanswered
    replay is the server's doing (or says nothing of the network): the plain backoff applies."""
    if isinstance(error, StaleFeedError):
        return True
    if isinstance(error, SecurityViolationError | EndpointBehindError | ReplayTimeoutError):
        return False
    if ws is None:
        return not isinstance(error.__cause__, InvalidStatus)
    return ws.close_code in (None, _CLOSE_ABNORMAL)


async def _close_attempts(tasks: list[asyncio.Task[ClientConnection]]) -> None:
    """Cancel connection attempts and wait for them; close any that completed meanwhile."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is None:
            task.result().transport.abort()


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
