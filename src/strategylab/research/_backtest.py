"""The event-driven backtest engine: one strategy over stored ticks, on a simulated clock.

The engine is the strategy's :class:`StrategyContext`: ``now_ns`` is the current tick's ``ts``;
``position`` is what the simulated fills made it. Execution rules:

* a **market** order fills at once, entirely, at the latest quote of its symbol: a buy at
  ``ask * (1 + slippage_bps / 10_000)``, a sell at ``bid * (1 - slippage_bps / 10_000)``;
* a **limit** order that is marketable when submitted fills at once at the quote (ask for a buy,
  bid for a sell; no slippage: the limit bounds the price); otherwise it rests and fills entirely
  at its limit price on the first later tick whose quote crosses it (ask <= limit for a buy,
  bid >= limit for a sell), checked before the strategy sees that tick;
* every fill pays ``fee_bps / 10_000`` of its notional; ``on_fill`` is called after the
  ``on_tick`` that caused the fill returns (for a resting order: before the tick's ``on_tick``);
  a strategy that keeps the base class's ``on_fill`` (which does nothing) is not called.

Ticks are read in chunks of ``chunk_size`` sequence numbers (see :mod:`._data`; from an
:class:`~._data.ArraySource` a chunk is a slice of memory-mapped columns); the ticks of several
symbols are merged in ``(ts, symbol order, seq)`` order. The hot loop makes each
:class:`~strategylab.market.Tick` with ``map`` over the chunk's columns (in C), stores only the
current tick per tick (the per-symbol latest quotes are kept only for multi-symbol runs), tests
two in-place lists for resting orders and fills to deliver, and samples equity between blocks of
``sample_every`` ticks; fills are built with :func:`new_fill`, and ``position`` is bound per run
to the positions map's C lookup (strategies ask it on every tick). Every
``checkpoint_every`` ticks (at the end of a chunk) the whole run state (strategy state, cash,
positions, resting orders, trades and equity so far, where each symbol's stream stands) is written
to ``checkpoint_dir`` atomically (temp file, fsync, rename, fsync of the directory). A failure
during the run is a BACKTEST_ENGINE_FAILURE: it is reported to the ``ErrorRecoveryManager`` (whose
RETRY strategy re-runs the backtest, which resumes from the checkpoint) or, without a manager,
retried under ``retry``. A resumed run's result equals an uninterrupted run's exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from strategylab._durable import write_atomic
from strategylab._files import make_private_dir
from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorContext, ErrorType, RetryPolicy
from strategylab.market import Tick
from strategylab.strategy import Fill, JSONValue, OrderRequest, OrderType, Side, Strategy

from ._data import COLUMNS, ROW_DTYPE, ChunkReader, TickArrays, TickSource, concat_arrays
from ._result import BacktestResult, equity_metrics

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from strategylab.fault_tolerance import ErrorRecoveryManager

__all__ = [
    "BacktestConfig",
    "BacktestEngine",
    "BacktestError",
    "BacktestStatistics",
    "new_fill",
]

_CHECKPOINT_VERSION: Final = 1
_BUY: Final = Side.BUY  # an enum member read through its class costs ~10x a global's read
_MARKET: Final = OrderType.MARKET
_MAX_SEQ: Final = (1 << 63) - 1


_FILL_SLOTS: Final = tuple(
    Fill.__dict__[name].__set__
    for name in ("order_id", "client_order_id", "symbol", "side", "qty", "price", "fee", "ts")
)


def new_fill(  # noqa: PLR0917 - the eight fields of a Fill, positionally, for speed
    order_id: str,
    client_order_id: str,
    symbol: str,
    side: Side,
    qty: float,
    price: float,
    fee: float,
    ts: int,
) -> Fill:
    """``Fill(order_id=..., ..., ts=...)``, equal (``==``, same hash), built in a third of the time.

    A backtest makes one per trade (tens of thousands per million ticks): the frozen dataclass's
    ``__init__`` (eight ``object.__setattr__`` calls) is replaced by the slots' own setters. Fill
    has no ``__post_init__``; a test checks the two constructions stay equal.
    """
    fill = object.__new__(Fill)
    a, b, c, d, e, f, g, h = _FILL_SLOTS
    a(fill, order_id)
    b(fill, client_order_id)
    c(fill, symbol)
    d(fill, side)
    e(fill, qty)
    f(fill, price)
    g(fill, fee)
    h(fill, ts)
    return fill


class BacktestError(StrategyLabError):
    """A backtest could not complete, even after its recovery; ``__cause__`` is the failure."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestConfig:
    """What to replay and how to execute: range, costs, sampling, chunking, checkpoints."""

    from_seq: int = 1
    to_seq: int | None = None
    start_ns: int | None = None
    """Only ticks with ``start_ns <= ts`` (None: from the first)."""
    end_ns: int | None = None
    """Only ticks with ``ts < end_ns`` (None: to the last)."""
    fee_bps: float = 0.0
    slippage_bps: float = 0.0
    initial_cash: float = 0.0
    sample_every: int = 1_000
    """Equity is sampled every this many ticks (and at the last tick)."""
    chunk_size: int = 65_536
    checkpoint_every: int = 1_000_000
    checkpoint_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.from_seq < 1:
            raise ValueError(f"from_seq={self.from_seq!r}: must be >= 1")
        if self.to_seq is not None and self.to_seq < self.from_seq:
            raise ValueError(f"to_seq={self.to_seq!r}: must be >= from_seq={self.from_seq!r}")
        if (
            self.start_ns is not None
            and self.end_ns is not None
            and not self.start_ns < self.end_ns
        ):
            raise ValueError(f"start_ns={self.start_ns!r}, end_ns={self.end_ns!r}: empty range")
        for name in ("fee_bps", "slippage_bps"):
            value = getattr(self, name)
            if not 0 <= value < 10_000:
                raise ValueError(f"{name}={value!r}: must be in [0, 10000)")
        for name in ("sample_every", "chunk_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestStatistics:
    """How a run went: attempts, failures, checkpoints written, where the last resume started."""

    attempts: int
    failures: int
    checkpoints_written: int
    resumed_at_ticks: tuple[int, ...]
    """For every attempt that resumed from a checkpoint, how many ticks it skipped."""


def _empty(symbol: str) -> TickArrays:
    return TickArrays(symbol, np.empty(0, dtype=ROW_DTYPE))


@dataclass(slots=True)
class _Cursor:
    symbol: str
    next_seq: int
    last_seq: int
    buf: TickArrays
    done: bool = False

    @property
    def resume_seq(self) -> int:
        return int(self.buf.seq[0]) if len(self.buf) else self.next_seq


@dataclass(slots=True)
class _Order:
    client_order_id: str
    order_id: str
    symbol: str
    side: Side
    qty: float
    price: float


class _Positions(dict[str, float]):
    """Positions by symbol; a symbol never traded is flat (0.0), without being added."""

    __slots__ = ()

    def __missing__(self, symbol: str) -> float:
        return 0.0


@dataclass(slots=True)
class _RunState:
    cash: float
    fees: float = 0.0
    ticks: int = 0
    orders: int = 0
    positions: _Positions = field(default_factory=_Positions)
    trades: list[Fill] = field(default_factory=list)
    equity_ts: list[int] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    resting: list[_Order] = field(default_factory=list)
    resume_seqs: dict[str, int] = field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None


class BacktestEngine:
    """Runs one strategy over a tick store (any :class:`TickSource`); a ``Component``."""

    def __init__(
        self,
        strategy: Strategy,
        store: TickSource,
        config: BacktestConfig | None = None,
        *,
        manager: ErrorRecoveryManager | None = None,
        retry: RetryPolicy | None = None,
        name: str = "backtest",
    ) -> None:
        self._strategy = strategy
        self._store = store
        self._config = config or BacktestConfig()
        self._manager = manager
        self._retry = retry or RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=1.0)
        self.name = name
        self._initial_state = strategy.state()
        self._symbols = strategy.symbols
        self._fee_rate = self._config.fee_bps / 10_000
        self._buy_mult = 1 + self._config.slippage_bps / 10_000
        self._sell_mult = 1 - self._config.slippage_bps / 10_000
        self._st = _RunState(cash=self._config.initial_cash)
        self._bind_position()
        self._deliver_fills = type(strategy).on_fill is not Strategy.on_fill
        self._last: dict[str, Tick] = {}
        self._cur: Tick | None = None  # the tick being processed (in _last only between chunks
        # of a one-symbol run: the hot loop then stores nothing else per tick)
        self._pending: list[Fill] = []
        self._attempts = 0
        self._failures = 0
        self._checkpoints = 0
        self._resumed: list[int] = []
        self._healthy = True

    # ------------------------------------------------------------------ Component

    async def start(self) -> None:
        """``Component.start``: nothing to open (the store is the caller's)."""
        self._healthy = True

    async def stop(self) -> None:
        """``Component.stop``: nothing to close between runs."""

    async def health(self) -> bool:
        """True when a one-tick read of the strategy's first symbol from the store succeeds."""
        try:
            await self._store.read(self._symbols[0], 1, 1)
        except Exception:
            return False
        return True

    def statistics(self) -> BacktestStatistics:
        """A snapshot of this engine's attempts, failures and checkpoints."""
        return BacktestStatistics(
            attempts=self._attempts,
            failures=self._failures,
            checkpoints_written=self._checkpoints,
            resumed_at_ticks=tuple(self._resumed),
        )

    @property
    def checkpoint_path(self) -> Path | None:
        """Where this run's checkpoint lives (None without a ``checkpoint_dir``)."""
        directory = self._config.checkpoint_dir
        return None if directory is None else directory / f"backtest-{self._run_key()}.json"

    # ------------------------------------------------------------------ StrategyContext

    @property
    def now_ns(self) -> int:
        """The simulated clock: the ``ts`` of the tick being processed."""
        cur = self._cur
        return 0 if cur is None else cur.ts

    def position(self, symbol: str) -> float:
        """The simulated position in ``symbol`` (0.0 if never traded).

        Strategies ask on every tick, so each run binds the instance attribute ``position`` to
        the run's positions map's own ``__getitem__`` (a C call, no Python frame); this method
        is what that lookup does, for the class and its documentation.
        """
        return self._st.positions[symbol]

    def _bind_position(self) -> None:
        self.__dict__["position"] = self._st.positions.__getitem__

    def _quote(self, symbol: str) -> Tick | None:
        cur = self._cur
        if cur is not None and cur.symbol == symbol:
            return cur
        return self._last.get(symbol)

    def submit(self, request: OrderRequest) -> str:
        """Fill or rest ``request`` against the latest quote of its symbol (see module doc)."""
        tick = self._quote(request.symbol)
        if tick is None:
            raise ValueError(
                f"symbol={request.symbol!r}: no quote yet (strategy symbols {self._symbols})"
            )
        st = self._st
        st.orders += 1
        client_id = f"{self._strategy.name}-{st.orders}"
        order_id = f"bt-{st.orders}"
        buy = request.side is _BUY
        if request.type is _MARKET:
            price = tick.ask * self._buy_mult if buy else tick.bid * self._sell_mult
        else:
            price = float(request.price)  # type: ignore[arg-type] # validated by OrderRequest
            if (buy and tick.ask <= price) or (not buy and tick.bid >= price):
                price = tick.ask if buy else tick.bid  # marketable: at the quote
            else:
                order = _Order(
                    client_id, order_id, request.symbol, request.side, request.qty, price
                )
                st.resting.append(order)
                return client_id
        self._execute(client_id, order_id, request.symbol, request.side, request.qty, price)
        return client_id

    def cancel_all(self, symbol: str | None = None) -> None:
        """Drop the resting limit orders (of ``symbol``, or all)."""
        st = self._st
        st.resting[:] = [o for o in st.resting if symbol is not None and o.symbol != symbol]

    # ------------------------------------------------------------------ running

    async def run(self) -> BacktestResult:
        """Run to the end of the range (resuming from a checkpoint if one exists)."""
        try:
            return await self._attempt()
        except Exception as exc:
            return await self._recover(exc)

    def run_blocking(self) -> BacktestResult:
        """:meth:`run` on a new event loop (``asyncio.run``); not from inside a running loop.

        The result is handed out of the loop through a box rather than as the main task's
        result: ``asyncio.run`` formats that task's ``repr`` while it restores the SIGINT
        handler (``signal.getsignal`` fails to match the handler, a partial holding the task,
        to an enum member), which would ``repr`` every fill of the result: about 2 µs a trade,
        up to a tenth of a whole backtest's time.
        """
        box: list[BacktestResult] = []

        async def main() -> None:
            box.append(await self.run())

        asyncio.run(main())
        return box[0]

    async def _recover(self, exc: Exception) -> BacktestResult:
        self._failures += 1
        context = ErrorContext.from_exception(
            exc,
            component=self.name,
            error_type=ErrorType.BACKTEST_ENGINE_FAILURE,
            metadata={"strategy": self._strategy.name, "checkpoint": str(self.checkpoint_path)},
            capture_state=False,
        )
        if self._manager is None:
            try:
                return await self._retry.acall(self._counted_attempt)
            except Exception as final:
                raise BacktestError(
                    f"{self.name}: backtest of {self._strategy.name} failed after "
                    f"{self._attempts} attempts: {final!r}"
                ) from final
        box: list[BacktestResult] = []

        async def resume() -> None:
            box.append(await self._counted_attempt())

        outcome = await self._manager.handle(context, component=self.name, operation=resume)
        if box:
            return box[-1]
        if outcome.success:  # recovered by another strategy (a restart): run once more
            return await self._attempt()
        raise BacktestError(
            f"{self.name}: backtest of {self._strategy.name} not recovered: {outcome.error}"
        ) from exc

    async def _counted_attempt(self) -> BacktestResult:
        try:
            return await self._attempt()
        except Exception:
            self._failures += 1
            raise

    async def _attempt(self) -> BacktestResult:
        self._attempts += 1
        cursors = await self._begin()
        reader = ChunkReader(self._store)
        try:
            last_checkpoint = self._st.ticks
            while True:
                step = await self._step(cursors, reader)
                if step is None:
                    break
                if step:
                    self._process(*step)
                if self._st.ticks - last_checkpoint >= self._config.checkpoint_every:
                    await self._checkpoint(cursors)
                    last_checkpoint = self._st.ticks
        finally:
            reader.close()
        result = self._result()
        path = self.checkpoint_path
        if path is not None:
            path.unlink(missing_ok=True)
        return result

    async def _begin(self) -> list[_Cursor]:
        cfg = self._config
        stored = await self._store.last_seqs()
        upper = cfg.to_seq if cfg.to_seq is not None else _MAX_SEQ
        self._last.clear()
        self._cur = None
        self._pending.clear()
        if not await self._load_checkpoint():
            self._st = _RunState(cash=cfg.initial_cash)
            self._strategy.restore(self._initial_state)
        else:
            self._resumed.append(self._st.ticks)
        self._bind_position()
        cursors = []
        for symbol in self._symbols:
            start = self._st.resume_seqs.get(symbol, cfg.from_seq)
            last = min(upper, stored.get(symbol, 0))
            cursors.append(_Cursor(symbol, start, last, _empty(symbol), done=start > last))
        self._strategy.on_start(self)
        return cursors

    async def _fetch(self, cursor: _Cursor, reader: ChunkReader) -> None:
        cfg = self._config
        upper = min(cursor.next_seq + cfg.chunk_size - 1, cursor.last_seq)
        chunk = await reader.read(cursor.symbol, cursor.next_seq, upper)
        cursor.next_seq = upper + 1
        if cfg.start_ns is not None or cfg.end_ns is not None:
            ts = chunk.ts
            if cfg.end_ns is not None and len(ts) and int(ts[-1]) >= cfg.end_ns:
                cursor.done = True
            chunk = chunk.window(cfg.start_ns, cfg.end_ns)
        if cursor.next_seq > cursor.last_seq:
            cursor.done = True
        cursor.buf = concat_arrays(cursor.symbol, (cursor.buf, chunk)) if len(cursor.buf) else chunk

    async def _step(
        self, cursors: list[_Cursor], reader: ChunkReader
    ) -> tuple[str | list[str], TickArrays] | None:
        """The next run of ticks in merged order; ``None`` at the end, ``()`` to go round again."""
        for cursor in cursors:
            while not len(cursor.buf) and not cursor.done:
                await self._fetch(cursor, reader)
        live = [c for c in cursors if len(c.buf)]
        if not live:
            return None
        if len(cursors) == 1:
            only = live[0]
            chunk, only.buf = only.buf, _empty(only.symbol)
            return only.symbol, chunk
        bounds = [int(c.buf.ts[-1]) for c in live if not c.done]
        horizon = min(bounds) if bounds else None
        takes = [
            len(c.buf) if horizon is None else int(np.searchsorted(c.buf.ts, horizon, side="left"))
            for c in live
        ]
        if not any(takes):
            # Every buffered tick is at the horizon; a symbol ending there may have more at the
            # same ts, which must come first (symbol order). Read further before deciding.
            for c in live:
                if not c.done and int(c.buf.ts[-1]) == horizon:
                    await self._fetch(c, reader)
            return [], _empty("")
        parts, owners = [], []
        for cursor, take in zip(live, takes, strict=True):
            parts.append(cursor.buf.slice(0, take))
            owners.append(np.full(take, self._symbols.index(cursor.symbol), dtype=np.int64))
            cursor.buf = cursor.buf.slice(take, len(cursor.buf))
        merged = concat_arrays("", parts)
        owner = np.concatenate(owners)
        order = np.lexsort((merged.seq, owner, merged.ts))
        names = [self._symbols[i] for i in owner[order].tolist()]
        columns = {name: column[order] for name, column in merged.columns().items()}
        return names, TickArrays("", columns=columns)

    def _process(self, names: str | list[str], ticks: TickArrays) -> None:
        """The hot loop: one Tick per row, fills, ``on_tick``, equity sampling.

        ``names`` is the one symbol of a single-symbol run, or each row's symbol. Per tick the
        loop only makes the :class:`Tick` (``map`` over the columns, in C), records it as the
        current one, and calls the strategy; resting orders and fills to deliver are checked by
        the truth of two lists the engine mutates in place; equity is sampled between blocks of
        ``sample_every`` ticks instead of a modulo per tick.
        """
        n = len(ticks)
        if not n:
            return
        st = self._st
        if st.first_ts is None:
            st.first_ts = int(ticks.ts[0])
        single = isinstance(names, str)
        symbols = itertools.repeat(names, n) if isinstance(names, str) else names
        stream = map(Tick, symbols, *_column_lists(ticks))
        every = self._config.sample_every
        count = st.ticks
        done = 0
        while done < n:
            block = min(n - done, every - count % every)
            self._block(itertools.islice(stream, block), single=single)
            done += block
            count += block
            st.ticks = count
            if count % every == 0:
                self._sample(self.now_ns)
        if single and self._cur is not None:
            self._last[self._cur.symbol] = self._cur
        st.last_ts = int(ticks.ts[-1])

    def _block(self, ticks: Iterator[Tick], *, single: bool) -> None:
        on_tick = self._strategy.on_tick
        resting = self._st.resting  # both lists are only ever changed in place
        pending = self._pending
        if single:
            for tick in ticks:
                self._cur = tick
                if resting:
                    self._match(tick)
                on_tick(tick, self)
                if pending:
                    self._deliver()
            return
        last = self._last
        for tick in ticks:
            self._cur = tick
            last[tick.symbol] = tick
            if resting:
                self._match(tick)
            on_tick(tick, self)
            if pending:
                self._deliver()

    def _fill(self, order: _Order) -> None:
        """Execute the resting ``order`` entirely at ``order.price``."""
        self._execute(
            order.client_order_id, order.order_id, order.symbol, order.side, order.qty, order.price
        )

    def _execute(  # noqa: PLR0917 - an order's fields, positionally, for speed
        self, client_order_id: str, order_id: str, symbol: str, side: Side, qty: float, price: float
    ) -> None:
        """Fill ``qty`` of ``symbol`` at ``price``; the fill goes to ``on_fill`` unless the
        strategy keeps the base class's (which does nothing)."""
        st = self._st
        notional = qty * price
        fee = notional * self._fee_rate
        position = st.positions.get(symbol, 0.0)
        if side is _BUY:
            st.cash = st.cash - notional
            st.positions[symbol] = position + qty
        else:
            st.cash = st.cash + notional
            st.positions[symbol] = position - qty
        st.cash = st.cash - fee
        st.fees = st.fees + fee
        fill = new_fill(order_id, client_order_id, symbol, side, qty, price, fee, self.now_ns)
        st.trades.append(fill)
        if self._deliver_fills:
            self._pending.append(fill)

    def _match(self, tick: Tick) -> None:
        keep: list[_Order] = []
        resting = self._st.resting
        for order in list(resting):
            buy = order.side is _BUY
            crossed = order.symbol == tick.symbol and (
                tick.ask <= order.price if buy else tick.bid >= order.price
            )
            if crossed:
                self._fill(order)
            else:
                keep.append(order)
        resting[:] = keep
        self._deliver()

    def _deliver(self) -> None:
        pending = self._pending  # mutated in place: the hot loop holds it
        fills = pending.copy()
        pending.clear()
        for fill in fills:
            self._strategy.on_fill(fill, self)

    def _sample(self, ts: int) -> None:
        st = self._st
        equity = st.cash
        for symbol in self._symbols:
            tick = self._quote(symbol)
            if tick is not None:
                equity = equity + st.positions.get(symbol, 0.0) * ((tick.bid + tick.ask) / 2)
        st.equity_ts.append(ts)
        st.equity.append(equity)

    def _result(self) -> BacktestResult:
        st = self._st
        if st.ticks and st.ticks % self._config.sample_every and st.last_ts is not None:
            self._sample(st.last_ts)
        final = st.equity[-1] if st.equity else st.cash
        metrics = equity_metrics(st.equity_ts, st.equity)
        return BacktestResult(
            strategy=self._strategy.name,
            parameters=self._strategy.parameters(),
            symbols=self._symbols,
            ticks=st.ticks,
            trades=tuple(st.trades),
            equity_ts=tuple(st.equity_ts),
            equity=tuple(st.equity),
            sample_every=self._config.sample_every,
            initial_cash=self._config.initial_cash,
            final_cash=st.cash,
            positions={s: st.positions.get(s, 0.0) for s in self._symbols},
            total_pnl=final - self._config.initial_cash,
            fees=st.fees,
            sharpe=metrics.sharpe,
            max_drawdown=metrics.max_drawdown,
            first_ts=st.first_ts,
            last_ts=st.last_ts,
        )

    # ------------------------------------------------------------------ checkpoints

    def _run_key(self) -> str:
        cfg = self._config
        identity = {
            "strategy": type(self._strategy).__qualname__,
            "name": self._strategy.name,
            "parameters": self._strategy.parameters(),
            "symbols": list(self._symbols),
            "range": [cfg.from_seq, cfg.to_seq, cfg.start_ns, cfg.end_ns],
            "costs": [cfg.fee_bps, cfg.slippage_bps, cfg.initial_cash, cfg.sample_every],
            "initial_state": self._initial_state,
        }
        blob = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    async def _checkpoint(self, cursors: list[_Cursor]) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        st = self._st
        st.resume_seqs = {c.symbol: c.resume_seq for c in cursors}
        document = {
            "version": _CHECKPOINT_VERSION,
            "key": self._run_key(),
            "strategy_state": self._strategy.state(),
            "cash": st.cash,
            "fees": st.fees,
            "ticks": st.ticks,
            "orders": st.orders,
            "positions": st.positions,
            "trades": [_fill_json(f) for f in st.trades],
            "equity_ts": st.equity_ts,
            "equity": st.equity,
            "resting": [
                [o.client_order_id, o.order_id, o.symbol, o.side.value, o.qty, o.price]
                for o in st.resting
            ],
            "resume_seqs": st.resume_seqs,
            "first_ts": st.first_ts,
            "last_ts": st.last_ts,
            "last_quotes": {
                s: [t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size]
                for s, t in self._last.items()
            },
        }
        await asyncio.to_thread(_write_atomically, path, json.dumps(document).encode())
        self._checkpoints += 1

    async def _load_checkpoint(self) -> bool:
        path = self.checkpoint_path
        if path is None:
            return False
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return False
        doc = json.loads(raw)
        if doc.get("version") != _CHECKPOINT_VERSION or doc.get("key") != self._run_key():
            return False  # written for other inputs: start afresh
        self._strategy.restore(doc["strategy_state"])
        self._st = _RunState(
            cash=float(doc["cash"]),
            fees=float(doc["fees"]),
            ticks=int(doc["ticks"]),
            orders=int(doc["orders"]),
            positions=_Positions({str(k): float(v) for k, v in doc["positions"].items()}),
            trades=[_fill_from_json(f) for f in doc["trades"]],
            equity_ts=[int(t) for t in doc["equity_ts"]],
            equity=[float(e) for e in doc["equity"]],
            resting=[
                _Order(str(c), str(o), str(s), Side(side), float(q), float(p))
                for c, o, s, side, q, p in doc["resting"]
            ],
            resume_seqs={str(k): int(v) for k, v in doc["resume_seqs"].items()},
            first_ts=doc["first_ts"],
            last_ts=doc["last_ts"],
        )
        for symbol, values in doc["last_quotes"].items():
            self._last[symbol] = Tick(symbol, *values)
        return True


def _column_lists(ticks: TickArrays) -> list[Iterable[Any]]:
    """The six columns as Python values for :class:`Tick`; a gapless ``seq`` as a ``range``
    (ints made as they are needed, not a list of them first)."""
    seq = ticks.seq
    first, n = int(seq[0]), len(seq)
    seqs: Iterable[Any] = (
        range(first, first + n) if int(seq[-1]) - first == n - 1 else seq.tolist()
    )  # seq is strictly increasing, so first..last with n values is exactly first..first+n-1
    return [seqs, *(getattr(ticks, name).tolist() for name in COLUMNS[1:])]


def _fill_json(fill: Fill) -> list[JSONValue]:
    return [
        fill.order_id,
        fill.client_order_id,
        fill.symbol,
        fill.side.value,
        fill.qty,
        fill.price,
        fill.fee,
        fill.ts,
    ]


def _fill_from_json(values: list[JSONValue]) -> Fill:
    order_id, client_id, symbol, side, qty, price, fee, ts = values
    return Fill(
        order_id=str(order_id),
        client_order_id=str(client_id),
        symbol=str(symbol),
        side=Side(side),
        qty=float(qty),  # type: ignore[arg-type]
        price=float(price),  # type: ignore[arg-type]
        fee=float(fee),  # type: ignore[arg-type]
        ts=int(ts),  # type: ignore[arg-type]
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    make_private_dir(path.parent)
    write_atomic(path, data)
