"""The tick: one quote update for one symbol, numbered by the exchange."""

from __future__ import annotations

import math

import msgspec

__all__ = ["Tick", "validate_tick"]


class Tick(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One top-of-book quote. ``seq`` counts from 1 per symbol with no gaps; ``ts`` is exchange
    time in integer nanoseconds since the epoch.

    Encoded on the wire and in the exchange's log as an array
    ``[symbol, seq, ts, bid, ask, bid_size, ask_size]``.
    """

    symbol: str
    seq: int
    ts: int
    bid: float
    ask: float
    bid_size: float
    ask_size: float


def validate_tick(tick: Tick, previous_ts: int | None = None) -> str | None:  # noqa: PLR0911
    """Why ``tick`` is invalid, or None when it is valid (DESIGN §5: finite positive prices,
    bid ≤ ask, non-negative sizes, timestamps that do not go backwards within a symbol)."""
    if not tick.symbol:
        return "empty symbol"
    if tick.seq < 1:
        return f"seq {tick.seq} < 1"
    bid, ask = tick.bid, tick.ask
    if not (math.isfinite(bid) and math.isfinite(ask)):
        return f"non-finite price bid={bid!r} ask={ask!r}"
    if bid <= 0.0 or ask <= 0.0:
        return f"non-positive price bid={bid!r} ask={ask!r}"
    if bid > ask:
        return f"crossed quote bid={bid!r} > ask={ask!r}"
    if not (math.isfinite(tick.bid_size) and math.isfinite(tick.ask_size)):
        return "non-finite size"
    if tick.bid_size < 0.0 or tick.ask_size < 0.0:
        return f"negative size bid_size={tick.bid_size!r} ask_size={tick.ask_size!r}"
    if previous_ts is not None and tick.ts < previous_ts:
        return f"timestamp went backwards: {tick.ts} < {previous_ts}"
    return None
