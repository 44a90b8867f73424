"""The strategy interface, used unchanged by live trading and by backtests.

A strategy sees ticks and fills and asks for orders through a :class:`StrategyContext`; it never
talks to an exchange, a clock or a store itself. The live :class:`StrategyEngine` and the
:class:`BacktestEngine` each provide a context: the live one puts every request through the risk
engine and sends it to the exchange's HTTP API; the backtest one fills it at the quoted prices on
a simulated clock. A strategy's :meth:`Strategy.state` is persisted and handed back to
:meth:`Strategy.restore` when it is restarted (after a crash, or from a backtest checkpoint).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from strategylab.market import Tick

__all__ = [
    "Fill",
    "JSONValue",
    "OrderRequest",
    "OrderType",
    "Side",
    "Strategy",
    "StrategyContext",
]

JSONValue = bool | int | float | str | None | list["JSONValue"] | dict[str, "JSONValue"]
"""What a strategy's persisted state may contain."""


class Side(enum.Enum):
    """Which way an order trades."""

    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the sign of the position change."""
        return 1 if self is Side.BUY else -1


class OrderType(enum.Enum):
    """Market orders fill at once at the quote; limit orders rest until the quote crosses them."""

    MARKET = "market"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRequest:
    """What a strategy asks for; the engine assigns the client order id."""

    symbol: str
    side: Side
    qty: float
    type: OrderType = OrderType.MARKET
    price: float | None = None

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("symbol='': an order needs a symbol")
        if not self.qty > 0:
            raise ValueError(f"qty={self.qty!r}: must be > 0")
        if self.type is OrderType.LIMIT and (self.price is None or not self.price > 0):
            raise ValueError(f"price={self.price!r}: a limit order needs a price > 0")
        if self.type is OrderType.MARKET and self.price is not None:
            raise ValueError(f"price={self.price!r}: a market order takes no price")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    """An execution of (part of) an order."""

    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: float
    price: float
    fee: float
    ts: int
    """Exchange (or simulated) time of the fill, ns since the epoch."""


@runtime_checkable
class StrategyContext(Protocol):
    """What a strategy may ask of whoever runs it."""

    @property
    def now_ns(self) -> int:
        """Current time (exchange time live, simulated time in a backtest), ns since the epoch."""
        ...

    def position(self, symbol: str) -> float:
        """The strategy's current position in ``symbol`` (positive long, negative short)."""
        ...

    def submit(self, request: OrderRequest) -> str:
        """Ask for an order; returns its client order id. The runner may refuse it (risk)."""
        ...

    def cancel_all(self, symbol: str | None = None) -> None:
        """Cancel the strategy's resting orders (in ``symbol``, or everywhere)."""
        ...


class Strategy(abc.ABC):
    """Base class of every strategy. Subclasses implement :meth:`on_tick` at least.

    ``name`` identifies the strategy instance (its persisted state and its orders are keyed by
    it); ``symbols`` are the symbols whose ticks it receives.
    """

    def __init__(self, name: str, symbols: tuple[str, ...]) -> None:
        if not name:
            raise ValueError("name='': a strategy needs a name")
        if not symbols:
            raise ValueError("symbols=(): a strategy needs at least one symbol")
        self.name = name
        self.symbols = symbols

    def on_start(self, ctx: StrategyContext) -> None:  # noqa: B027 - optional hook
        """Called once before the first tick (and again after a restart)."""

    @abc.abstractmethod
    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Called for every tick of one of :attr:`symbols`, in sequence order per symbol."""

    def on_fill(self, fill: Fill, ctx: StrategyContext) -> None:  # noqa: B027 - optional hook
        """Called for every fill of one of this strategy's orders."""

    def state(self) -> dict[str, JSONValue]:
        """What to persist so that :meth:`restore` can continue where this left off."""
        return {}

    def restore(self, state: Mapping[str, JSONValue]) -> None:  # noqa: B027 - optional hook
        """Continue from a state :meth:`state` returned (after a restart or from a checkpoint)."""

    def parameters(self) -> dict[str, JSONValue]:
        """The strategy's parameters, for results tables, the optimiser and the order book.

        The live engine records them in the order book; a later start with other parameters is
        refused unless :meth:`migrate_state` converts the recorded state.
        """
        return {}

    def migrate_state(
        self,
        old_parameters: Mapping[str, JSONValue],  # noqa: ARG002 - optional hook
        new_parameters: Mapping[str, JSONValue],  # noqa: ARG002 - optional hook
        state: Mapping[str, JSONValue],  # noqa: ARG002 - optional hook
    ) -> dict[str, JSONValue] | None:
        """The state to continue from under ``new_parameters`` (this instance's), given the
        ``state`` recorded under ``old_parameters``; None (the default) when it cannot be.

        Called by the live engine at start, before anything trades, when the order book was
        written with other parameters: None makes the engine refuse to start (a
        :class:`~strategylab.errors.ConfigurationError` naming ``--param``); a state is saved
        in the book, audited, and then handed to :meth:`restore`. An exception refuses too.
        """
        return None
