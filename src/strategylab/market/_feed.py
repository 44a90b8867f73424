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

An endpoint that is BEHIND is not used: its last sequence for a symbol (from its ``subscribed``
answer, or a heartbeat) is below what this feed has stored or handed on, so everything it sends
would be dropped as a duplicate (a replica that is lagging, or an exchange restarted from 1). The
feed logs it once per endpoint (WARNING: the URL, each symbol, its last seq and ours), drops the
connection (:class:`EndpointBehindError`, reported as a connection drop), reports itself not
ready (``health()`` False, ``FeedStatistics.behind``) until an endpoint is current again, and
fails over to the next endpoint; the behind one is retried later like any failed one. A probe
before a failback checks the same (see :meth:`_FeedState._probe`): the feed switches back only
to a primary that has caught up. A backup must serve the same sequence space (a replica of the
same feed): the feed refuses one that is behind, and cannot tell a replica whose content differs.

Reconnects back off exponentially with full jitter, the first one immediately; the backoff is reset
only by a connection that has proven itself (data delivered and acknowledged by the sink, or alive
``proven_after`` seconds), never by a bare "subscribed", and a server's request to wait (close code
1012/1013, ``Retry-After`` on a 429/503 handshake) is honoured (:class:`FeedBackoff`). In the
first ``fast_reconnect_for`` seconds of a *silent* outage (a stale connection, a reset, an attempt
refused or timed out: the network's doing, not the server's), the backoff is capped lower
(``outage_backoff_cap``) and an attempt whose handshake hangs (a partition swallowed it) is
joined by another every ``hedge_after`` seconds, at most ``max_hedged`` in flight, the first to
complete winning: recovery then follows the heal by about one hedge interval instead of a
connect timeout plus a grown backoff (see :class:`FeedConfig`; both off unless configured, on in
the node's defaults). A failed
connection attempt is logged once per cause until a connection succeeds; a lost connection once
per outage. Symbols the exchange does not know are logged (ERROR) and reported once
(:class:`UnknownSymbolsError`, a CONFIGURATION_ERROR) while the others are ingested. Text that
came from the peer is escaped before it reaches a log line. Errors go to the optional
:class:`ErrorRecoveryManager` from owned background tasks, never blocking reads.

The feed is built in layers, one concept per module (see :mod:`._feed_state`); this module is
the facade: :class:`Feed` and its component API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

from strategylab._tasks import cancel_and_wait

from ._feed_config import AcknowledgingSink, FeedConfig, FeedStatistics, TickSink
from ._feed_errors import (
    EndpointBehindError,
    FeedDisconnectedError,
    FeedError,
    InvalidTickError,
    ReplayTimeoutError,
    SecurityKillSwitchError,
    SecurityViolationError,
    StaleFeedError,
    TickRangeLostError,
    UnknownSymbolsError,
)
from ._feed_session import _FeedSession
from ._tick import Tick

__all__ = [
    "AcknowledgingSink",
    "EndpointBehindError",
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


# ----------------------------------------------------------------------------------- the feed


class Feed(_FeedSession):
    """A resilient exchange feed (a :class:`~strategylab.fault_tolerance.Component`).

    Construction: see :class:`~strategylab.market._feed_state._FeedState` (``config``, ``sink``,
    ``manager``, ``clock``, ``rng``, ``kill_switch``, ``on_violation``)."""

    # ------------------------------------------------------------------ Component

    async def start(self) -> None:
        """Start connecting (in an owned task); returns at once (nothing while parked)."""
        if self._parked or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._run(), name=f"{self.name}.run")
        if len(self._config.urls) > 1 and (self._prober is None or self._prober.done()):
            self._prober = asyncio.create_task(self._group.run(), name=f"{self.name}.failback")

    async def stop(self) -> None:
        """Close the connection and stop every task this feed owns."""
        current = asyncio.current_task()
        await cancel_and_wait(
            t for t in (self._task, self._prober, self._kill_task) if t is not current
        )
        await self._reporter.aclose()
        self._task = self._prober = None

    async def aclose(self) -> None:
        """Alias of :meth:`stop`."""
        await self.stop()

    async def restart(self) -> None:
        """Stop and start again, keeping the per-symbol positions (nothing is re-delivered)."""
        await self.stop()
        await self.start()
        await self._wait_healthy_quietly()

    async def failover(self) -> bool:
        """Switch to the next configured endpoint; False when there is only one.

        While on a backup the endpoints above it are probed, and the feed switches back to
        the best one after ``failback_after`` good probes (see :class:`FeedConfig`)."""
        if len(self._config.urls) < 2:
            return False
        self._group.rotate()
        self._kick("failover")
        await self._wait_healthy_quietly()
        return True

    async def reload(self) -> bool:
        """Drop held ticks and outstanding replays and resync from the exchange (reconnect)."""
        self._kick("reload")
        await self._wait_healthy_quietly()
        return True

    async def health(self) -> bool:
        """Connected, subscribed, a frame seen within ``stale_after`` (or blocked on the sink),
        and not waiting for an endpoint that is behind (``FeedStatistics.behind``); True while
        parked (no symbols: nothing to ingest)."""
        if self._parked:
            return True
        if self._behind or not (self._connected and self._subscribed):
            return False
        if self._blocked:
            return True
        since = max(self._last_seen, self._observed_from)
        return self._clock.monotonic() - since < self._stale_after

    async def wait_healthy(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until connected and subscribed; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._healthy.wait()

    def statistics(self) -> FeedStatistics:
        """A frozen snapshot of the counters."""
        reports = self._reporter.statistics()
        endpoints = self._group.statistics()
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
            active_url_index=endpoints.active_index,
            failovers=endpoints.failovers,
            failbacks=endpoints.failbacks,
            failed_probes=endpoints.failed_probes,
            behind=self._behind,
            behind_refusals=self._behind_refusals,
            connect_attempts=self._attempts,
            hedged_attempts=self._hedged,
            abandoned_attempts=self._abandoned,
            last_frame_at=self._frame_at,
        )

    # ------------------------------------------------------------------ the symbol set (issue 14)
    # A cluster node's symbols change with its leases (strategylab.node._cluster).

    _parked: bool = False
    """True while the symbol set is empty: not connected, start() does nothing, healthy."""

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols subscribed now (() while parked by :meth:`resubscribe`)."""
        return () if self._parked else self._config.symbols

    async def resubscribe(self, symbols: Sequence[str]) -> dict[str, int]:
        """Change the symbol set: stop the connection, take ``symbols`` (an empty set parks the
        feed: no connection, :meth:`start` does nothing, :meth:`health` True), and start again
        if it was running. A removed symbol's position is forgotten, so that a later re-add
        resumes from the store's watermark, never from what this feed once handed on. Returns
        the removed symbols' last sequence handed to the sink (what a caller waits to see
        stored before it gives them up)."""
        running = self._task is not None
        await self.stop()
        new = tuple(dict.fromkeys(symbols))
        old = self.symbols
        removed = {s: self._delivered.get(s, 0) for s in old if s not in new}
        for symbol in removed:
            for per_symbol in (self._delivered, self._last_ts, self._unpositioned_seen):
                per_symbol.pop(symbol, None)
        self._parked = not new
        if new:
            self._config = dataclasses.replace(self._config, symbols=new)
            self._symbols = frozenset(new)
        if running:
            await self.start()
        return removed

    # ------------------------------------------------------------------ connection loop

    async def _wait_healthy_quietly(self) -> None:
        with contextlib.suppress(TimeoutError):
            await self.wait_healthy(self._config.recovery_timeout)


def last_seqs_of(ticks: Sequence[Tick]) -> dict[str, int]:
    """The highest sequence per symbol in ``ticks`` (in order per symbol)."""
    return {t.symbol: t.seq for t in ticks}
