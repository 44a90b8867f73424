"""The two built-in strategies: moving-average crossover and mean reversion, on the mid price.

Both trade one symbol with market orders towards a *target position*: on every tick they compute a
target in ``{-qty, 0, +qty}`` and, when it differs from the current position, submit one market
order for the difference (``target - position``). Neither strategy needs ``on_fill``: the runner
keeps the position.

Rolling statistics are computed from *running cumulative sums* of the mid price (and, for mean
reversion, of its square), each a plain left-to-right float sum from the first tick the strategy
saw. A window sum is the difference of two cumulative sums. :mod:`._vectorized` computes the very
same numbers with ``numpy.cumsum`` (also a left-to-right sum), so the event-driven and vectorised
paths agree bit for bit at every crossing, not merely within a tolerance. The cumulative sums and
the ring of the last window's values are the strategy's state, so :meth:`state`/:meth:`restore`
round-trip exactly (JSON keeps a float's every bit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final

from strategylab.market import Tick

from ._strategy import JSONValue, OrderRequest, OrderType, Side, Strategy, StrategyContext

__all__ = ["BUILTIN_STRATEGIES", "MeanReversion", "MovingAverageCrossover", "make_strategy"]


_sqrt: Final = math.sqrt
_BUY: Final = Side.BUY  # an enum member read through its class costs ~10x a global's read
_SELL: Final = Side.SELL
_MARKET: Final = OrderType.MARKET


def _positive_qty(qty: float) -> float:
    if not (isinstance(qty, int | float) and math.isfinite(qty) and qty > 0):
        raise ValueError(f"qty={qty!r}: must be a finite number > 0")
    return float(qty)


_ORDER_SLOTS: Final = tuple(
    OrderRequest.__dict__[name].__set__ for name in ("symbol", "side", "qty", "type", "price")
)


def _market_order(symbol: str, side: Side, qty: float) -> OrderRequest:
    """``OrderRequest(symbol=symbol, side=side, qty=qty)``, equal (``==``), built without the
    frozen dataclass's ``__init__`` and checks: the callers pass a non-empty symbol and a
    ``qty > 0`` (a test checks the two constructions stay equal)."""
    order = object.__new__(OrderRequest)
    set_symbol, set_side, set_qty, set_type, set_price = _ORDER_SLOTS
    set_symbol(order, symbol)
    set_side(order, side)
    set_qty(order, qty)
    set_type(order, _MARKET)
    set_price(order, None)
    return order


def _trade_to(target: float, position: float, tick: Tick, ctx: StrategyContext) -> None:
    """Submit the market order taking ``position`` to ``target`` (they differ)."""
    delta = target - position
    if delta > 0:
        ctx.submit(_market_order(tick.symbol, _BUY, delta))
    elif delta < 0:
        ctx.submit(_market_order(tick.symbol, _SELL, -delta))


def _float_list(state: Mapping[str, JSONValue], key: str, length: int) -> list[float]:
    value = state.get(key)
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"state[{key!r}]: expected a list of {length} numbers, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, int | float) or isinstance(item, bool):
            raise TypeError(f"state[{key!r}]: {item!r} is not a number")
        out.append(float(item))
    return out


def _number(state: Mapping[str, JSONValue], key: str) -> float:
    value = state.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"state[{key!r}]={value!r}: expected a number")
    return float(value)


def _count(state: Mapping[str, JSONValue], key: str) -> int:
    value = state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"state[{key!r}]={value!r}: expected an integer >= 0")
    return value


class MovingAverageCrossover(Strategy):
    """Long when the fast simple moving average of the mid is above the slow one, short below.

    Rules, on every tick of ``symbol`` (mid = (bid + ask) / 2; ``C_t`` = mid_1 + ... + mid_t,
    summed left to right from the first tick seen):

    * before ``slow`` ticks have been seen the target is 0 (no position, no order);
    * then ``fast_ma = (C_t - C_{t-fast}) / fast`` and ``slow_ma = (C_t - C_{t-slow}) / slow``;
      the target is ``+qty`` if ``fast_ma > slow_ma``, ``-qty`` if ``fast_ma < slow_ma``, and 0
      when they are equal;
    * a market order for ``target - position`` is submitted when that is not zero.

    Parameters: ``1 <= fast < slow`` (integers), ``qty > 0``.
    """

    def __init__(
        self,
        symbol: str,
        fast: int = 20,
        slow: int = 100,
        qty: float = 1.0,
        *,
        name: str | None = None,
    ) -> None:
        for field, value in (("fast", fast), ("slow", slow)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}={value!r}: must be an integer >= 1")
        if fast >= slow:
            raise ValueError(f"fast={fast!r}, slow={slow!r}: fast must be < slow")
        super().__init__(name or f"ma_crossover-{symbol}", (symbol,))
        self.symbol = symbol
        self.fast = fast
        self.slow = slow
        self.qty = _positive_qty(qty)
        self._size = slow + 1
        self._ring = [0.0] * self._size  # C_{t-slow} .. C_t, at index t % (slow + 1)
        self._cum = 0.0
        self._count = 0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Update the cumulative sum; trade towards the crossover target."""
        cum = self._cum + (tick.bid + tick.ask) / 2
        self._cum = cum
        count = self._count + 1
        self._count = count
        size = self._size
        ring = self._ring
        ring[count % size] = cum
        slow = self.slow
        if count < slow:
            return
        fast = self.fast
        fast_ma = (cum - ring[(count - fast) % size]) / fast
        slow_ma = (cum - ring[(count - slow) % size]) / slow
        if fast_ma > slow_ma:
            target = self.qty
        elif fast_ma < slow_ma:
            target = -self.qty
        else:
            target = 0.0
        position = ctx.position(tick.symbol)
        if target != position:  # the common case returns without a call more
            _trade_to(target, position, tick, ctx)

    def state(self) -> dict[str, JSONValue]:
        """Tick count, cumulative sum and the last ``slow + 1`` cumulative sums, oldest first."""
        ordered: list[JSONValue] = [
            self._ring[(self._count - k) % self._size] for k in range(self.slow, -1, -1)
        ]
        return {"count": self._count, "cum": self._cum, "window": ordered}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        """Continue from :meth:`state`."""
        count = _count(state, "count")
        cum = _number(state, "cum")
        window = _float_list(state, "window", self._size)
        ring = [0.0] * self._size
        for k, value in enumerate(window):  # window[k] is C_{count - slow + k}
            ring[(count - self.slow + k) % self._size] = value
        self._count, self._cum, self._ring = count, cum, ring

    def parameters(self) -> dict[str, JSONValue]:
        """``symbol``, ``fast``, ``slow``, ``qty``."""
        return {"symbol": self.symbol, "fast": self.fast, "slow": self.slow, "qty": self.qty}


class MeanReversion(Strategy):
    """Fade moves of the mid away from its rolling mean, measured in rolling standard deviations.

    Rules, on every tick of ``symbol``: ``x = mid - ref`` where ``ref`` is the first mid seen
    (centring keeps the cumulative sums small and accurate); ``S_t``/``Q_t`` are the left-to-right
    cumulative sums of ``x`` and ``x * x``. Once ``window`` ticks have been seen::

        s = S_t - S_{t-window};  q = Q_t - Q_{t-window}
        mean = s / window;  var = (q - s * mean) / (window - 1)
        z = (x - mean) / sqrt(var)            (only when var > 0)

    * ``z > entry_z``: target ``-qty`` (short the rich price);
    * ``z < -entry_z``: target ``+qty`` (buy the cheap price);
    * ``|z| < exit_z``: target 0 (back near the mean: flat);
    * otherwise, or before ``window`` ticks, or when ``var <= 0``: keep the previous target.

    A market order for ``target - position`` is submitted when that is not zero.
    Parameters: integer ``window >= 2``, ``0 <= exit_z < entry_z`` (finite), ``qty > 0``.
    """

    def __init__(
        self,
        symbol: str,
        window: int = 50,
        entry_z: float = 2.0,
        exit_z: float = 0.5,
        qty: float = 1.0,
        *,
        name: str | None = None,
    ) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise ValueError(f"window={window!r}: must be an integer >= 2")
        for field, value in (("entry_z", entry_z), ("exit_z", exit_z)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{field}={value!r}: must be a finite number >= 0")
        if not exit_z < entry_z:
            raise ValueError(f"exit_z={exit_z!r}, entry_z={entry_z!r}: exit_z must be < entry_z")
        super().__init__(name or f"mean_reversion-{symbol}", (symbol,))
        self.symbol = symbol
        self.window = window
        self.entry_z = float(entry_z)
        self.exit_z = float(exit_z)
        self.qty = _positive_qty(qty)
        self._size = window + 1
        self._sums = [0.0] * self._size
        self._squares = [0.0] * self._size
        self._s = 0.0
        self._q = 0.0
        self._ref = 0.0
        self._count = 0
        self._target = 0.0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Update the cumulative sums; trade towards the z-score target."""
        mid = (tick.bid + tick.ask) / 2
        count = self._count + 1
        self._count = count
        if count == 1:
            self._ref = mid
        x = mid - self._ref
        s_cum = self._s + x
        q_cum = self._q + x * x
        self._s = s_cum
        self._q = q_cum
        size = self._size
        slot = count % size
        sums, squares = self._sums, self._squares
        sums[slot] = s_cum
        squares[slot] = q_cum
        window = self.window
        if count < window:
            return
        old = (count - window) % size
        s = s_cum - sums[old]
        mean = s / window
        var = (q_cum - squares[old] - s * mean) / (window - 1)
        target = self._target
        if var > 0:
            z = (x - mean) / _sqrt(var)
            entry = self.entry_z
            if z > entry:
                target = self._target = -self.qty
            elif z < -entry:
                target = self._target = self.qty
            elif -self.exit_z < z < self.exit_z:  # abs(z) < exit_z, without the call
                target = self._target = 0.0
        position = ctx.position(tick.symbol)
        if target != position:
            _trade_to(target, position, tick, ctx)

    def state(self) -> dict[str, JSONValue]:
        """Tick count, reference mid, target, cumulative sums and the last window's sums."""
        order = [(self._count - k) % self._size for k in range(self.window, -1, -1)]
        sums: list[JSONValue] = [self._sums[i] for i in order]
        squares: list[JSONValue] = [self._squares[i] for i in order]
        return {
            "count": self._count,
            "ref": self._ref,
            "target": self._target,
            "s": self._s,
            "q": self._q,
            "sums": sums,
            "squares": squares,
        }

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        """Continue from :meth:`state`."""
        count = _count(state, "count")
        ref, target = _number(state, "ref"), _number(state, "target")
        s, q = _number(state, "s"), _number(state, "q")
        sums = _float_list(state, "sums", self._size)
        squares = _float_list(state, "squares", self._size)
        ring_s, ring_q = [0.0] * self._size, [0.0] * self._size
        for k in range(self._size):
            slot = (count - self.window + k) % self._size
            ring_s[slot], ring_q[slot] = sums[k], squares[k]
        self._count, self._ref, self._target, self._s, self._q = count, ref, target, s, q
        self._sums, self._squares = ring_s, ring_q

    def parameters(self) -> dict[str, JSONValue]:
        """``symbol``, ``window``, ``entry_z``, ``exit_z``, ``qty``."""
        return {
            "symbol": self.symbol,
            "window": self.window,
            "entry_z": self.entry_z,
            "exit_z": self.exit_z,
            "qty": self.qty,
        }


BUILTIN_STRATEGIES: Final[Mapping[str, Callable[..., Strategy]]] = {
    "ma_crossover": MovingAverageCrossover,
    "mean_reversion": MeanReversion,
}
"""The built-in strategies by the name the CLI, the optimiser and :class:`BacktestSpec` use."""


def make_strategy(name: str, symbol: str, parameters: Mapping[str, JSONValue]) -> Strategy:
    """Build the built-in strategy ``name`` ("ma_crossover" | "mean_reversion") on ``symbol``."""
    cls = BUILTIN_STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"strategy={name!r}: expected one of {sorted(BUILTIN_STRATEGIES)}")
    params = {k: v for k, v in parameters.items() if k != "symbol"}
    try:
        return cls(symbol, **params)
    except TypeError as exc:
        raise ValueError(f"parameters={dict(parameters)!r} for {name!r}: {exc}") from exc
