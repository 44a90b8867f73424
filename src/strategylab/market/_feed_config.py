"""What a feed is given: the sink contracts it delivers to, its configuration, and the frozen
snapshot of its counters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Protocol

from strategylab.errors import ConfigurationError

from ._store import QuarantinedTick
from ._tick import Tick

__all__ = ["AcknowledgingSink", "FeedConfig", "FeedStatistics", "TickSink"]


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

    ``urls`` is the primary exchange endpoint followed by backups, a
    :class:`~strategylab.fault_tolerance.FailoverGroup`: a failed connection attempt or a stale
    connection moves to the next endpoint, and while a backup is in use the endpoints above it
    are probed (a WebSocket handshake) every ``probe_interval`` seconds, backing off to
    ``max_probe_interval`` while they fail; after ``failback_after`` consecutive good probes the
    feed switches back (resuming every symbol from the store's watermark). A backup must serve
    the same sequence space (a replica of the same feed): the feed refuses an endpoint that is
    behind what it already holds (:class:`EndpointBehindError`; not ready, next URL) and fails
    back only once the primary has caught up, but it cannot tell a replica whose content differs
    under the same sequence numbers.
    Times are in seconds. ``proven_after``: a connection alive this long after "subscribed" has
    proven itself and resets the reconnect backoff (so does data it delivered being stored).
    ``retry_later_floor``: the least wait after the server closes with 1012 or 1013.
    ``max_server_wait``: the cap on a ``Retry-After`` wait the server asks for.

    Fast reconnects (all off by default: one attempt at a time, the plain backoff). A *silent*
    outage is one the network caused: a stale connection, a reset (no close frame), a refused,
    reset or timed-out connection attempt; one the server chose (a close frame, an HTTP error on
    the handshake, an endpoint behind, a forgery) is not. For the first ``fast_reconnect_for``
    seconds of a silent outage:

    * ``outage_backoff_cap``: the reconnect backoff keeps its full jitter but is capped at this
      many seconds instead of ``backoff_cap``, so that the backoff grown during the outage does
      not delay the first attempt after the heal (None: off; a value outside
      ``backoff_floor..backoff_cap`` is taken as the nearer bound);
    * ``hedge_after``: a connection attempt that has not completed its WebSocket handshake after
      this many seconds is joined by another one (a partition swallows the handshake of an
      attempt made during it: only an attempt made after the heal succeeds); at most
      ``max_hedged`` are in flight, the oldest abandoned for a new one when the bound is reached
      (so each may take ``max_hedged × hedge_after`` seconds, and ``connect_timeout`` at most);
      the first to complete wins and the others are closed; an attempt that fails at once
      (refused, reset, an HTTP error) ends the hedging and the backoff decides the next (None:
      off).

    After ``fast_reconnect_for`` seconds of one outage, the plain backoff and single attempts
    apply again (a long outage is not hammered at the fast rate).

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
    probe_interval: float = 1.0
    max_probe_interval: float = 10.0
    failback_after: int = 3
    outage_backoff_cap: float | None = None
    hedge_after: float | None = None
    max_hedged: int = 8
    fast_reconnect_for: float = 30.0
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
            "probe_interval",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number > 0")
        if not (
            isinstance(self.max_probe_interval, int | float)
            and math.isfinite(self.max_probe_interval)
            and self.max_probe_interval >= self.probe_interval
        ):
            raise ConfigurationError(
                "max_probe_interval", self.max_probe_interval, "must be >= probe_interval"
            )
        if not self.backoff_cap >= self.backoff_floor:
            raise ConfigurationError("backoff_cap", self.backoff_cap, "must be >= backoff_floor")
        self._check_fast_reconnects()
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
            ("failback_after", 1),
        ):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ConfigurationError(key, value, f"must be an integer >= {least}")

    def _check_fast_reconnects(self) -> None:
        cap = self.outage_backoff_cap
        if cap is not None and not (
            isinstance(cap, int | float)
            and not isinstance(cap, bool)
            and math.isfinite(cap)
            and cap > 0
        ):
            raise ConfigurationError(
                "outage_backoff_cap", cap, "must be None or a finite number of seconds > 0"
            )
        hedge = self.hedge_after
        if hedge is not None and not (
            isinstance(hedge, int | float)
            and not isinstance(hedge, bool)
            and math.isfinite(hedge)
            and hedge > 0
        ):
            raise ConfigurationError(
                "hedge_after", hedge, "must be None or a finite number of seconds > 0"
            )
        most = self.max_hedged
        if not (isinstance(most, int) and not isinstance(most, bool) and 1 <= most <= 64):
            raise ConfigurationError("max_hedged", most, "must be an integer within 1..64")
        window = self.fast_reconnect_for
        if not (
            isinstance(window, int | float)
            and not isinstance(window, bool)
            and math.isfinite(window)
            and window >= 0
        ):
            raise ConfigurationError(
                "fast_reconnect_for", window, "must be a finite number of seconds >= 0"
            )


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
    active_url_index: int = 0
    """The position of ``url`` in ``FeedConfig.urls`` (0: the primary)."""
    failovers: int = 0
    """Switches to a backup endpoint (a failed connect, a stale connection, ``failover()``)."""
    failbacks: int = 0
    """Switches back to a higher-priority endpoint after it passed ``failback_after`` probes."""
    failed_probes: int = 0
    """Probes of a higher-priority endpoint that failed (no handshake, no answer, or behind)."""
    behind: bool = False
    """The last endpoint connected to was behind this feed's watermark and was refused, and no
    current endpoint has been subscribed to since: the feed is not ready (``health()`` False)."""
    behind_refusals: int = 0
    """Connections and probes that found an endpoint behind (see :class:`EndpointBehindError`)."""
    connect_attempts: int = 0
    """Connection attempts started (each hedged attempt counts; probes do not)."""
    hedged_attempts: int = 0
    """Of ``connect_attempts``, those started while an earlier one was still in flight."""
    abandoned_attempts: int = 0
    """Attempts closed unfinished: the oldest dropped for a new one, or another won."""
    last_frame_at: float = 0.0
    """When the last message arrived on a connection, on the feed's clock (``monotonic()``
    seconds; 0.0 before the first)."""
