"""Small strategies that exercise the live engine (used by its process tests and the demo).

- :class:`RestingBids`: every ``every`` ticks (after the first ``start_after``), one limit buy at
  ``fraction`` of the bid (far from the market, so it rests), up to ``count`` orders. Its state
  counts ticks and orders.
- :class:`TickTrader`: every ``every`` ticks, a market order alternating buy and sell of ``qty``.
"""

from __future__ import annotations

from collections.abc import Mapping

from strategylab.market import Tick

from ._strategy import Fill, JSONValue, OrderRequest, OrderType, Side, Strategy, StrategyContext

__all__ = ["RestingBids", "TickTrader"]


def _int(state: Mapping[str, JSONValue], key: str) -> int:
    value = state.get(key, 0)
    return value if isinstance(value, int) else 0


class RestingBids(Strategy):
    """Limit buys far below the market, one every ``every`` ticks, at most ``count``."""

    def __init__(
        self,
        name: str,
        symbols: tuple[str, ...],
        *,
        every: int = 5,
        count: int = 3,
        fraction: float = 0.5,
        qty: float = 1.0,
        start_after: int = 0,
    ) -> None:
        super().__init__(name, symbols)
        self.every, self.count, self.fraction, self.qty = every, count, fraction, qty
        self.start_after = start_after
        self.ticks = 0
        self.placed = 0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Place the next resting bid when due."""
        self.ticks += 1
        if (
            self.placed < self.count
            and self.ticks > self.start_after
            and self.ticks % self.every == 0
        ):
            price = round(tick.bid * self.fraction, 2)
            ctx.submit(
                OrderRequest(
                    symbol=tick.symbol,
                    side=Side.BUY,
                    qty=self.qty,
                    type=OrderType.LIMIT,
                    price=price,
                )
            )
            self.placed += 1

    def state(self) -> dict[str, JSONValue]:
        """Ticks seen and orders placed."""
        return {"ticks": self.ticks, "placed": self.placed}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        """Continue counting."""
        self.ticks = _int(state, "ticks")
        self.placed = _int(state, "placed")


class TickTrader(Strategy):
    """A market order every ``every`` ticks, alternating buy and sell, so it stays flat-ish."""

    def __init__(
        self, name: str, symbols: tuple[str, ...], *, every: int = 10, qty: float = 1.0
    ) -> None:
        super().__init__(name, symbols)
        self.every, self.qty = every, qty
        self.ticks = 0
        self.orders = 0
        self.fills = 0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Trade when due."""
        self.ticks += 1
        if self.ticks % self.every == 0:
            side = Side.BUY if self.orders % 2 == 0 else Side.SELL
            ctx.submit(OrderRequest(symbol=tick.symbol, side=side, qty=self.qty))
            self.orders += 1

    def on_fill(self, fill: Fill, ctx: StrategyContext) -> None:
        """Count fills."""
        del fill, ctx
        self.fills += 1

    def state(self) -> dict[str, JSONValue]:
        """Counters."""
        return {"ticks": self.ticks, "orders": self.orders, "fills": self.fills}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        """Continue counting."""
        self.ticks = _int(state, "ticks")
        self.orders = _int(state, "orders")
        self.fills = _int(state, "fills")
