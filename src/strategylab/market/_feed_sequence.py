"""The feed's sequencer: per symbol, in order, gap-free and de-duplicated.

The per-frame hot path (:meth:`_FeedSequencer._on_ticks`), ticks held behind a gap and the replay
requests that fill it, heartbeat tail gaps, replay-done answers, and ranges declared lost."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection

from ._feed_errors import InvalidTickError, TickRangeLostError
from ._feed_state import (
    _RAW_CHARS,
    _UNPOSITIONED_KEPT,
    _FeedState,
    _json_encode,
    _log,
    _Pending,
)
from ._protocol import ReplayDone, ReplayRequest
from ._store import QuarantinedTick
from ._tick import INT64_MAX, INT64_MIN, Tick, TickBounds, validate_tick


class _FeedSequencer(_FeedState):
    """Sequencing on top of the feed's state."""

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
                entry = self._unpositioned(tick)
                if entry is None:
                    dups += 1
                else:
                    bad = [] if bad is None else bad
                    bad.append(entry)
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

    def _unpositioned(self, tick: Tick) -> QuarantinedTick | None:
        """The quarantine entry of a tick whose seq is no position in the stream; None for one
        already quarantined by this feed. Such a tick never moves the delivered position, so a
        resubscription that resends its frame would otherwise quarantine it again: the last
        :data:`_UNPOSITIONED_KEPT` are remembered by their text."""
        raw = repr(tick)[:_RAW_CHARS]
        seen = self._unpositioned_seen
        if raw in seen:
            return None
        seen[raw] = None
        if len(seen) > _UNPOSITIONED_KEPT:
            del seen[next(iter(seen))]
        return self._refused(tick, f"seq {tick.seq} outside 1..2**63-1", raw=raw)

    def _refused(self, tick: Tick, reason: str, *, raw: str | None = None) -> QuarantinedTick:
        """The quarantine entry of a refused tick: only values that fit the store's columns
        (the raw tick keeps the rest, as text)."""
        self._invalid += 1
        return QuarantinedTick(
            received_ns=int(self._clock.time() * 1e9),
            reason=reason,
            raw=repr(tick)[:_RAW_CHARS] if raw is None else raw,
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

    # ------------------------------------------------------------------ replays and heartbeats

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
