"""The feed's errors: what it observed and recovers from, each with the ``error_type`` that
drives its classification by the recovery manager."""

from __future__ import annotations

from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorType

__all__ = [
    "EndpointBehindError",
    "FeedDisconnectedError",
    "FeedError",
    "InvalidTickError",
    "ReplayTimeoutError",
    "SecurityKillSwitchError",
    "SecurityViolationError",
    "StaleFeedError",
    "TickRangeLostError",
    "UnknownSymbolsError",
]


class FeedError(StrategyLabError):
    """Something the feed observed and recovers from; ``error_type`` drives classification."""

    error_type: ErrorType = ErrorType.DATA_INGESTION_FAILURE


class FeedDisconnectedError(FeedError, ConnectionError):
    """The connection to the exchange failed or dropped."""

    error_type = ErrorType.WEBSOCKET_CONNECTION_DROPPED


class StaleFeedError(FeedDisconnectedError):
    """No frame, heartbeats included, for ``stale_after`` seconds: the connection is dead."""


class EndpointBehindError(FeedDisconnectedError):
    """The exchange endpoint says it has emitted less than this node already holds.

    Its last sequence for a symbol (from the ``subscribed`` answer or a heartbeat) is below the
    feed's watermark (stored or handed on): everything it would send is a duplicate, or the
    stream of another exchange under the same numbers. The connection is dropped and the
    endpoint treated as failed (the next one is used; this one is retried later). ``lagging``
    holds ``(symbol, its last seq, ours)`` per symbol behind. Reported as a connection drop.
    """

    def __init__(self, message: str, lagging: tuple[tuple[str, int, int], ...]) -> None:
        super().__init__(message)
        self.lagging = lagging


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
