"""The exchange's tick generator: seeded random-walk quotes, dealt round-robin over the symbols.

Plain Python on purpose: one multiplicative random-walk step and one ``Tick`` per tick measures
about 1,000,000 ticks/s on the target machine (numpy buys nothing at these batch sizes once the
ticks must exist as Python objects, and it is not a dependency of the package).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from strategylab.market import Tick

__all__ = ["Batch", "TickGenerator"]

_STEP = 0.0004  # relative mid-price step range per tick (uniform in ±_STEP/2)
_SPREAD = 0.0001  # relative half-spread scale
_MIN_PRICE = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """One generated batch: ``ticks`` as emitted, and ``clean``, the same ticks before any
    ``invalid_ticks`` fault spoiled some (the order book matches only against true quotes)."""

    ticks: list[Tick]
    clean: list[Tick]


class TickGenerator:
    """Deterministic for a given ``seed`` and sequence of batch sizes."""

    def __init__(self, symbols: tuple[str, ...], seed: int) -> None:
        self.symbols = symbols
        self._rng = random.Random(seed)
        self._mid = [100.0 * (1.0 + 0.5 * self._rng.random()) for _ in symbols]
        self._seq = [0] * len(symbols)
        self._next = 0
        self._last_ts = 0

    @property
    def last_seq(self) -> dict[str, int]:
        """The last generated sequence per symbol (0 before the first)."""
        return dict(zip(self.symbols, self._seq, strict=True))

    @property
    def total(self) -> int:
        """Ticks generated so far."""
        return sum(self._seq)

    def generate(self, n: int, now_ns: int, invalid_rate: float = 0.0) -> Batch:
        """The next ``n`` ticks; a fraction ``invalid_rate`` of them are emitted spoiled (NaN bid,
        negative bid, or bid > ask) while keeping their sequence numbers."""
        symbols, mid, seq = self.symbols, self._mid, self._seq
        count = len(symbols)
        rnd = self._rng.random
        s = self._next
        # Exchange time: 1 ns apart within a batch, never behind the previous batch.
        ts = max(now_ns, self._last_ts + 1)
        ticks: list[Tick] = []
        append = ticks.append
        for _ in range(n):
            m = mid[s] * (1.0 + (rnd() - 0.5) * _STEP)
            m = max(m, _MIN_PRICE)
            mid[s] = m
            half = m * _SPREAD * (0.5 + rnd())
            q = seq[s] + 1
            seq[s] = q
            size = float(1 + int(rnd() * 99)) * 100.0
            append(Tick(symbols[s], q, ts, round(m - half, 4), round(m + half, 4), size, size))
            ts += 1
            s += 1
            if s == count:
                s = 0
        self._next = s
        self._last_ts = ts - 1
        if invalid_rate <= 0.0:
            return Batch(ticks=ticks, clean=ticks)
        return Batch(ticks=self._spoil(ticks, invalid_rate), clean=ticks)

    def _spoil(self, ticks: list[Tick], rate: float) -> list[Tick]:
        rnd = self._rng.random
        out = list(ticks)
        for i, t in enumerate(ticks):
            if rnd() >= rate:
                continue
            how = int(rnd() * 3)
            if how == 0:
                bad = Tick(t.symbol, t.seq, t.ts, math.nan, t.ask, t.bid_size, t.ask_size)
            elif how == 1:
                bad = Tick(t.symbol, t.seq, t.ts, -t.bid, t.ask, t.bid_size, t.ask_size)
            else:
                bad = Tick(t.symbol, t.seq, t.ts, t.ask + 0.01, t.bid, t.bid_size, t.ask_size)
            out[i] = bad
        return out
