"""``run_backtest(spec)``: one backtest as a plain function of a picklable record.

This is the optimiser's unit of work: a worker process receives a :class:`BacktestSpec`, opens
the SQLite store itself, runs the event-driven engine (with checkpoints, if asked) or the
vectorised path, and returns the :class:`BacktestResult` (also picklable).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from strategylab.market import SQLiteTickStore
from strategylab.strategy import BUILTIN_STRATEGIES, JSONValue, Strategy, make_strategy

from ._backtest import BacktestConfig, BacktestEngine
from ._data import load_sqlite_arrays
from ._result import BacktestResult

__all__ = ["BacktestSpec", "StrategyName", "run_backtest"]

StrategyName = Literal["ma_crossover", "mean_reversion"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestSpec:
    """Everything one backtest needs, as plain values (picklable, for worker processes)."""

    db_path: str
    strategy: StrategyName
    symbol: str
    parameters: Mapping[str, JSONValue] = field(default_factory=dict)
    from_seq: int = 1
    to_seq: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    fee_bps: float = 0.0
    slippage_bps: float = 0.0
    initial_cash: float = 0.0
    sample_every: int = 1_000
    vectorized: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1_000_000

    def __post_init__(self) -> None:
        if self.strategy not in BUILTIN_STRATEGIES:
            raise ValueError(
                f"strategy={self.strategy!r}: expected one of {sorted(BUILTIN_STRATEGIES)}"
            )
        if not self.symbol:
            raise ValueError("symbol='': a backtest needs a symbol")
        object.__setattr__(self, "parameters", dict(self.parameters))
        self.config()  # validates the range, costs and sampling

    def config(self) -> BacktestConfig:
        """The engine configuration this spec stands for."""
        return BacktestConfig(
            from_seq=self.from_seq,
            to_seq=self.to_seq,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            fee_bps=self.fee_bps,
            slippage_bps=self.slippage_bps,
            initial_cash=self.initial_cash,
            sample_every=self.sample_every,
            checkpoint_every=self.checkpoint_every,
            checkpoint_dir=None if self.checkpoint_dir is None else Path(self.checkpoint_dir),
        )


def run_backtest(spec: BacktestSpec) -> BacktestResult:
    """Run ``spec`` to completion in this process (blocking) and return its result."""
    strategy = make_strategy(spec.strategy, spec.symbol, spec.parameters)
    if spec.vectorized:
        from ._vectorized import run_vectorized  # noqa: PLC0415 - numpy path only when asked

        ticks = load_sqlite_arrays(spec.db_path, spec.symbol, spec.from_seq, spec.to_seq)
        return run_vectorized(strategy, ticks, spec.config())
    path = Path(spec.db_path)
    if not path.exists():
        raise FileNotFoundError(f"db_path={spec.db_path!r}: no such tick database")
    return asyncio.run(_run_event_driven(spec, strategy, path))


async def _run_event_driven(spec: BacktestSpec, strategy: Strategy, path: Path) -> BacktestResult:
    # A reader that runs often: no full scan on open (a damaged page still fails the read).
    store = SQLiteTickStore(path, on_corruption="raise", verify=False)
    await store.open()
    try:
        return await BacktestEngine(strategy, store, spec.config()).run()
    finally:
        await store.aclose()
