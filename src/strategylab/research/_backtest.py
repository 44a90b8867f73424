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
  ``on_tick`` that caused the fill returns (for a resting order: before the tick's ``on_tick``).

Ticks are read in chunks of ``chunk_size`` sequence numbers (see :mod:`._backtest_data`); the
ticks of several symbols are merged in ``(ts, symbol order, seq)`` order. Every
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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from strategylab._durable import write_atomic
from strategylab._files import make_private_dir
from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorContext, ErrorType, RetryPolicy
from strategylab.market import Tick
from strategylab.strategy import Fill, JSONValue, OrderRequest, OrderType, Side, Strategy

from ._data import ROW_DTYPE, ChunkReader, Rows, TickSource
from ._result import BacktestResult, equity_metrics

if TYPE_CHECKING:
    from strategylab.fault_tolerance import ErrorRecoveryManager

__all__ = ["BacktestConfig", "BacktestEngine", "BacktestError", "BacktestStatistics"]

_CHECKPOINT_VERSION: Final = 1
_MAX_SEQ: Final = (1 << 63) - 1


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


@dataclass(slots=True)
class _Cursor:
    symbol: str
    next_seq: int
    last_seq: int
    buf: Rows = field(default_factory=lambda: np.empty(0, dtype=ROW_DTYPE))
    done: bool = False

    @property
    def resume_seq(self) -> int:
        return int(self.buf["seq"][0]) if len(self.buf) else self.next_seq


@dataclass(slots=True)
class _Order:
    client_order_id: str
    order_id: str
    symbol: str
    side: Side
    qty: float
    price: float


@dataclass(slots=True)
class _RunState:
    cash: float
    fees: float = 0.0
    ticks: int = 0
    orders: int = 0
    positions: dict[str, float] = field(default_factory=dict)
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
        self._last: dict[str, Tick] = {}
        self._now = 0
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
        return self._now

    def position(self, symbol: str) -> float:
        """The simulated position in ``symbol``."""
        return self._st.positions.get(symbol, 0.0)

    def submit(self, request: OrderRequest) -> str:
        """Fill or rest ``request`` against the latest quote of its symbol (see module doc)."""
        tick = self._last.get(request.symbol)
        if tick is None:
            raise ValueError(
                f"symbol={request.symbol!r}: no quote yet (strategy symbols {self._symbols})"
            )
        st = self._st
        st.orders += 1
        client_id = f"{self._strategy.name}-{st.orders}"
        order_id = f"bt-{st.orders}"
        buy = request.side is Side.BUY
        if request.type is OrderType.MARKET:
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
        self._fill(_Order(client_id, order_id, request.symbol, request.side, request.qty, price))
        return client_id

    def cancel_all(self, symbol: str | None = None) -> None:
        """Drop the resting limit orders (of ``symbol``, or all)."""
        st = self._st
        st.resting = [o for o in st.resting if symbol is not None and o.symbol != symbol]

    # ------------------------------------------------------------------ running

    async def run(self) -> BacktestResult:
        """Run to the end of the range (resuming from a checkpoint if one exists)."""
        try:
            return await self._attempt()
        except Exception as exc:
            return await self._recover(exc)

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
        self._pending.clear()
        if not await self._load_checkpoint():
            self._st = _RunState(cash=cfg.initial_cash)
            self._strategy.restore(self._initial_state)
        else:
            self._resumed.append(self._st.ticks)
        cursors = []
        for symbol in self._symbols:
            start = self._st.resume_seqs.get(symbol, cfg.from_seq)
            last = min(upper, stored.get(symbol, 0))
            cursors.append(_Cursor(symbol, start, last, done=start > last))
        self._strategy.on_start(self)
        return cursors

    async def _fetch(self, cursor: _Cursor, reader: ChunkReader) -> None:
        cfg = self._config
        upper = min(cursor.next_seq + cfg.chunk_size - 1, cursor.last_seq)
        chunk = await reader.read(cursor.symbol, cursor.next_seq, upper)
        cursor.next_seq = upper + 1
        rows = chunk.rows
        if cfg.start_ns is not None or cfg.end_ns is not None:
            ts = rows["ts"]
            if cfg.end_ns is not None and len(ts) and int(ts[-1]) >= cfg.end_ns:
                cursor.done = True
            rows = chunk.window(cfg.start_ns, cfg.end_ns).rows
        if cursor.next_seq > cursor.last_seq:
            cursor.done = True
        cursor.buf = np.concatenate((cursor.buf, rows)) if len(cursor.buf) else rows

    async def _step(
        self, cursors: list[_Cursor], reader: ChunkReader
    ) -> tuple[list[str], Rows] | None:
        """The next run of ticks in merged order; ``None`` at the end, ``()`` to go round again."""
        for cursor in cursors:
            while not len(cursor.buf) and not cursor.done:
                await self._fetch(cursor, reader)
        live = [c for c in cursors if len(c.buf)]
        if not live:
            return None
        if len(cursors) == 1:
            only = live[0]
            rows, only.buf = only.buf, only.buf[:0]
            return [only.symbol] * len(rows), rows
        bounds = [int(c.buf["ts"][-1]) for c in live if not c.done]
        horizon = min(bounds) if bounds else None
        takes = [
            len(c.buf)
            if horizon is None
            else int(np.searchsorted(c.buf["ts"], horizon, side="left"))
            for c in live
        ]
        if not any(takes):
            # Every buffered tick is at the horizon; a symbol ending there may have more at the
            # same ts, which must come first (symbol order). Read further before deciding.
            for c in live:
                if not c.done and int(c.buf["ts"][-1]) == horizon:
                    await self._fetch(c, reader)
            return [], np.empty(0, dtype=ROW_DTYPE)
        parts, owners = [], []
        for cursor, take in zip(live, takes, strict=True):
            parts.append(cursor.buf[:take])
            owners.append(np.full(take, self._symbols.index(cursor.symbol), dtype=np.int64))
            cursor.buf = cursor.buf[take:]
        rows = np.concatenate(parts)
        owner = np.concatenate(owners)
        order = np.lexsort((rows["seq"], owner, rows["ts"]))
        names = [self._symbols[i] for i in owner[order].tolist()]
        return names, rows[order]

    def _process(self, names: list[str], rows: Rows) -> None:
        """The hot loop: one Tick per row, fills, ``on_tick``, equity sampling."""
        if not len(rows):
            return
        st = self._st
        on_tick = self._strategy.on_tick
        last = self._last
        every = self._config.sample_every
        count = st.ticks
        if st.first_ts is None:
            st.first_ts = int(rows["ts"][0])
        columns = (rows[name].tolist() for name in ROW_DTYPE.names or ())
        for symbol, seq, ts, bid, ask, bid_size, ask_size in zip(names, *columns, strict=True):
            tick = Tick(symbol, seq, ts, bid, ask, bid_size, ask_size)
            last[symbol] = tick
            self._now = ts
            if st.resting:
                self._match(tick)
            on_tick(tick, self)
            if self._pending:
                self._deliver()
            count += 1
            if count % every == 0:
                self._sample(ts)
        st.ticks = count
        st.last_ts = int(rows["ts"][-1])

    def _fill(self, order: _Order) -> None:
        """Execute ``order`` entirely at ``order.price``."""
        st = self._st
        symbol, side, qty, price = order.symbol, order.side, order.qty, order.price
        notional = qty * price
        fee = notional * self._fee_rate
        position = st.positions.get(symbol, 0.0)
        if side is Side.BUY:
            st.cash = st.cash - notional
            st.positions[symbol] = position + qty
        else:
            st.cash = st.cash + notional
            st.positions[symbol] = position - qty
        st.cash = st.cash - fee
        st.fees = st.fees + fee
        fill = Fill(
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            symbol=symbol,
            side=side,
            qty=qty,
            price=price,
            fee=fee,
            ts=self._now,
        )
        st.trades.append(fill)
        self._pending.append(fill)

    def _match(self, tick: Tick) -> None:
        keep: list[_Order] = []
        for order in self._st.resting:
            buy = order.side is Side.BUY
            crossed = order.symbol == tick.symbol and (
                tick.ask <= order.price if buy else tick.bid >= order.price
            )
            if crossed:
                self._fill(order)
            else:
                keep.append(order)
        self._st.resting = keep
        self._deliver()

    def _deliver(self) -> None:
        pending, self._pending = self._pending, []
        for fill in pending:
            self._strategy.on_fill(fill, self)

    def _sample(self, ts: int) -> None:
        st = self._st
        equity = st.cash
        for symbol in self._symbols:
            tick = self._last.get(symbol)
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
            positions={str(k): float(v) for k, v in doc["positions"].items()},
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
