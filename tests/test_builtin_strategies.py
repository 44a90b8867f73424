"""The built-in strategies' rules on hand-made ticks, their state round trip and validation."""

from __future__ import annotations

import json

import pytest

from strategylab.market import Tick
from strategylab.strategy._builtin import (
    MeanReversion,
    MovingAverageCrossover,
    make_strategy,
)
from strategylab.strategy._strategy import OrderRequest, Side, Strategy


class Recorder:
    """A StrategyContext that fills every order at once and records (tick seq, side, qty)."""

    def __init__(self) -> None:
        self.now = 0
        self.seq = 0
        self.positions: dict[str, float] = {}
        self.orders: list[tuple[int, Side, float]] = []

    @property
    def now_ns(self) -> int:
        return self.now

    def position(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0)

    def submit(self, request: OrderRequest) -> str:
        self.orders.append((self.seq, request.side, request.qty))
        self.positions[request.symbol] = self.position(request.symbol) + (
            request.side.sign * request.qty
        )
        return f"c{len(self.orders)}"

    def cancel_all(self, symbol: str | None = None) -> None:
        del symbol


def ticks(mids: list[float], symbol: str = "AAA") -> list[Tick]:
    return [Tick(symbol, i + 1, i * 1000, m - 0.5, m + 0.5, 1.0, 1.0) for i, m in enumerate(mids)]


def feed(strategy: Strategy, data: list[Tick], ctx: Recorder | None = None) -> Recorder:
    ctx = ctx or Recorder()
    for tick in data:
        ctx.now, ctx.seq = tick.ts, tick.seq
        strategy.on_tick(tick, ctx)
    return ctx


@pytest.mark.timeout(5)
def test_ma_crossover_goes_long_then_short_on_crossings() -> None:
    """fast=2/slow=4: no order in warm-up, buy on the up-cross, sell 2x on the down-cross."""
    strategy = MovingAverageCrossover("AAA", fast=2, slow=4, qty=1.0)
    ctx = feed(strategy, ticks([10, 10, 10, 12, 13, 13, 9, 8]))
    # tick 4: fast (10+12)/2=11 > slow 42/4=10.5 -> long; tick 7: fast 11 < slow 11.75 -> short
    assert ctx.orders == [(4, Side.BUY, 1.0), (7, Side.SELL, 2.0)]
    assert ctx.position("AAA") == -1.0


@pytest.mark.timeout(5)
def test_ma_crossover_goes_flat_when_averages_are_equal() -> None:
    """A constant price after a long position makes the averages equal: the target is flat."""
    strategy = MovingAverageCrossover("AAA", fast=2, slow=3, qty=2.0)
    ctx = feed(strategy, ticks([10, 11, 12, 12, 12, 12]))
    assert ctx.orders == [(3, Side.BUY, 2.0), (5, Side.SELL, 2.0)]
    assert ctx.position("AAA") == 0.0


@pytest.mark.timeout(5)
def test_mean_reversion_fades_a_spike_and_exits_near_the_mean() -> None:
    """A spike up (z > entry) shorts; the return to the mean (|z| < exit) flattens."""
    strategy = MeanReversion("AAA", window=4, entry_z=1.4, exit_z=0.5, qty=1.0)
    # tick 4: window 10,10.5,10,14 -> z = (14-11.125)/1.93 = 1.49 > 1.4: short
    # tick 5: window 10.5,10,14,10 -> z = -0.52: hold; tick 6: 10,14,10,11 -> z = -0.13: flat
    ctx = feed(strategy, ticks([10, 10.5, 10, 14, 10, 11, 10.5]))
    assert ctx.orders == [(4, Side.SELL, 1.0), (6, Side.BUY, 1.0)]
    assert ctx.position("AAA") == 0.0


@pytest.mark.timeout(5)
def test_mean_reversion_buys_a_dip_and_holds_between_thresholds() -> None:
    """A dip (z < -entry) buys; a z between exit and entry keeps the position."""
    strategy = MeanReversion("AAA", window=4, entry_z=1.4, exit_z=0.1, qty=3.0)
    ctx = feed(strategy, ticks([10, 9.5, 10, 6, 7]))
    assert ctx.orders == [(4, Side.BUY, 3.0)]
    assert ctx.position("AAA") == 3.0


@pytest.mark.timeout(5)
def test_mean_reversion_holds_on_a_flat_window() -> None:
    """Zero variance gives no z-score: no order at all."""
    ctx = feed(MeanReversion("AAA", window=3), ticks([10.0] * 10))
    assert ctx.orders == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ma_crossover", {"fast": 3, "slow": 7, "qty": 0.5}),
        ("mean_reversion", {"window": 6, "entry_z": 1.2, "exit_z": 0.3, "qty": 2.0}),
    ],
)
@pytest.mark.parametrize("split", [1, 5, 13, 40])
def test_state_round_trip_continues_exactly(
    name: str, params: dict[str, float], split: int
) -> None:
    """State via JSON into a fresh instance continues with the very same orders and state."""
    data = ticks([100 + ((i * 7919) % 23) / 4 - (i % 5) for i in range(80)])
    whole = make_strategy(name, "AAA", params)
    reference = feed(whole, data)

    first = make_strategy(name, "AAA", params)
    ctx = feed(first, data[:split])
    state = json.loads(json.dumps(first.state()))
    second = make_strategy(name, "AAA", params)
    second.restore(state)
    assert second.state() == first.state()
    feed(second, data[split:], ctx)
    assert ctx.orders == reference.orders
    assert second.state() == whole.state()
    assert len(reference.orders) > 2  # the data does trade


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("ma_crossover", {"fast": 5, "slow": 5}, "fast"),
        ("ma_crossover", {"fast": 0, "slow": 5}, "fast"),
        ("ma_crossover", {"fast": 2, "slow": 5, "qty": 0}, "qty"),
        ("mean_reversion", {"window": 1}, "window"),
        ("mean_reversion", {"entry_z": 1.0, "exit_z": 1.0}, "exit_z"),
        ("mean_reversion", {"entry_z": float("nan")}, "entry_z"),
        ("mean_reversion", {"bogus": 1}, "bogus"),
        ("nope", {}, "strategy"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(
    name: str, params: dict[str, float], field: str
) -> None:
    """Invalid parameters raise ValueError naming what was wrong."""
    with pytest.raises(ValueError, match=field):
        make_strategy(name, "AAA", params)


@pytest.mark.timeout(5)
def test_restore_refuses_a_window_of_the_wrong_length() -> None:
    """A state from other parameters is refused, not silently misread."""
    state = MovingAverageCrossover("AAA", fast=2, slow=4).state()
    with pytest.raises(ValueError, match="window"):
        MovingAverageCrossover("AAA", fast=2, slow=5).restore(state)


def test_the_fast_market_order_equals_the_validated_one() -> None:
    """The strategies build their orders without the dataclass's __init__; same value."""
    from strategylab.strategy._builtin import _market_order  # noqa: PLC0415

    for side, qty in ((Side.BUY, 2.0), (Side.SELL, 0.25)):
        fast = _market_order("AAA", side, qty)
        slow = OrderRequest(symbol="AAA", side=side, qty=qty)
        assert fast == slow
        assert hash(fast) == hash(slow)
        assert repr(fast) == repr(slow)
