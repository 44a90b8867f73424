"""The tick: one quote update for one symbol, numbered by the exchange."""

from __future__ import annotations

import dataclasses
import math
from typing import Final

import msgspec

from strategylab.errors import ConfigurationError

__all__ = ["INT64_MAX", "INT64_MIN", "Tick", "TickBounds", "validate_tick"]

INT64_MAX: Final = 2**63 - 1
"""The largest integer a SQLite INTEGER or PostgreSQL BIGINT column holds."""
INT64_MIN: Final = -(2**63)


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TickBounds:
    """The plausible range of every field of a tick, checked before a tick is acknowledged.

    ``min_ts``/``max_ts`` are nanoseconds since the epoch (inclusive); ``max_price`` and
    ``max_size`` are inclusive upper bounds on bid/ask and on the sizes. Raises
    :class:`~strategylab.errors.ConfigurationError` naming a bad field.
    """

    min_ts: int = INT64_MIN
    max_ts: int = INT64_MAX
    max_price: float = math.inf
    max_size: float = math.inf

    def __post_init__(self) -> None:
        if not INT64_MIN <= self.min_ts <= self.max_ts <= INT64_MAX:
            raise ConfigurationError(
                "min_ts",
                (self.min_ts, self.max_ts),
                "must satisfy -2**63 <= min_ts <= max_ts < 2**63",
            )
        for key in ("max_price", "max_size"):
            value = getattr(self, key)
            if math.isnan(value) or value <= 0:
                raise ConfigurationError(key, value, "must be a number > 0")


_UNBOUNDED: Final = TickBounds()


def validate_tick(  # noqa: C901, PLR0911
    tick: Tick, previous_ts: int | None = None, *, bounds: TickBounds = _UNBOUNDED
) -> str | None:
    """Why ``tick`` is invalid, or None when it is valid (DESIGN §5: finite positive prices,
    bid ≤ ask, non-negative sizes, timestamps that do not go backwards within a symbol; and
    integers that fit a 64-bit store column, every field within ``bounds``)."""
    if not tick.symbol:
        return "empty symbol"
    if not 1 <= tick.seq <= INT64_MAX:
        return f"seq {tick.seq} outside 1..2**63-1"
    if not bounds.min_ts <= tick.ts <= bounds.max_ts:
        return f"timestamp {tick.ts} ns outside {bounds.min_ts}..{bounds.max_ts}"
    bid, ask = tick.bid, tick.ask
    if not (math.isfinite(bid) and math.isfinite(ask)):
        return f"non-finite price bid={bid!r} ask={ask!r}"
    if bid <= 0.0 or ask <= 0.0:
        return f"non-positive price bid={bid!r} ask={ask!r}"
    if bid > ask:
        return f"crossed quote bid={bid!r} > ask={ask!r}"
    if ask > bounds.max_price:
        return f"price ask={ask!r} > max_price={bounds.max_price!r}"
    if not (math.isfinite(tick.bid_size) and math.isfinite(tick.ask_size)):
        return "non-finite size"
    if tick.bid_size < 0.0 or tick.ask_size < 0.0:
        return f"negative size bid_size={tick.bid_size!r} ask_size={tick.ask_size!r}"
    if max(tick.bid_size, tick.ask_size) > bounds.max_size:
        return (
            f"size bid_size={tick.bid_size!r} ask_size={tick.ask_size!r} "
            f"> max_size={bounds.max_size!r}"
        )
    if previous_ts is not None and tick.ts < previous_ts:
        return f"timestamp went backwards: {tick.ts} < {previous_ts}"
    return None
