"""The feed's frame handler: a verified frame that carries no ticks (heartbeat, replay done,
control answer), the session check of signed answers, forged frames and the kill switch, and
the control messages of an unsigned exchange."""

from __future__ import annotations

import asyncio
import hmac
import math

import msgspec
from websockets.asyncio.client import ClientConnection

from strategylab.fault_tolerance import ErrorContext, ErrorSeverity, ErrorType

from ._feed_errors import (
    InvalidTickError,
    SecurityKillSwitchError,
    SecurityViolationError,
    UnknownSymbolsError,
)
from ._feed_sequence import _FeedSequencer
from ._feed_state import _json_decode, _log, _peer
from ._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    Frame,
    FrameError,
    SignatureError,
    control_bounds_error,
    decode_control,
    decode_heartbeat,
    decode_replay_done,
)
from ._tick import INT64_MAX

MAX_ADVERTISED_HEARTBEAT = 5.0
"""Seconds: the longest heartbeat interval an exchange's "subscribed" answer is believed (so its
stale deadline is at most 3 × 5 + 0.05 s)."""
HEARTBEAT_MARGIN = 0.05
"""Seconds added to three advertised heartbeat intervals before a silent connection is stale."""


class _FeedFrames(_FeedSequencer):
    """Frame and control handling on top of the sequencer."""

    async def _on_other_frame(self, ws: ClientConnection, frame: Frame) -> None:
        """A verified frame that carries no ticks: heartbeat, replay done or control answer.
        Raises :class:`FrameError` for an unknown kind or a bad payload, :class:`SignatureError`
        for an answer of another session."""
        kind = frame.kind
        if kind == KIND_HEARTBEAT:
            last = decode_heartbeat(frame.payload).last
            self._check_behind(last)
            await self._on_heartbeat(ws, last)
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

    def _adopt_heartbeat_interval(self, advertised: object) -> None:
        """Stale detection adapted to the exchange's heartbeats: a connection is stale after
        ``max(stale_after, 3 × interval + HEARTBEAT_MARGIN)`` seconds without a frame, so that an
        exchange beating less often than the node's default expects (an older one at 1 s) is not
        taken for a silent one between two heartbeats and reconnected forever. An interval that
        is not a finite number > 0 is ignored; one above :data:`MAX_ADVERTISED_HEARTBEAT` (5 s)
        is taken as that, so a peer cannot switch stale detection off."""
        interval = advertised
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            return
        if not math.isfinite(interval) or interval <= 0:
            return
        interval = min(float(interval), MAX_ADVERTISED_HEARTBEAT)
        self._stale_after = max(self._config.stale_after, 3 * interval + HEARTBEAT_MARGIN)

    def _on_subscribed(self) -> None:
        # Not a reset of the backoff or of the outage: a server that answers "subscribed" and
        # closes has proven nothing (see _check_proven).
        self._behind = False
        self._behind_urls.discard(self._conn_url)
        # A new episode of failed attempts starts after a subscription (not after a handshake
        # with an endpoint that then proved to be behind).
        self._connect_logged.clear()
        self._subscribed = True
        self._backoff.healthy()
        self._healthy.set()

    # ------------------------------------------------------------------ control answers

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
            self._check_behind(reply.get("last"))
            self._adopt_heartbeat_interval(reply.get("heartbeat_interval"))
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
