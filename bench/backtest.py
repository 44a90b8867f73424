"""Backtest throughput, event-driven against vectorised, and the risk check's cost per order.

Run (after ``pip install -e .``)::

    python bench/backtest.py            # 1,000,000 ticks, best of 3 runs per case
    python bench/backtest.py --quick    # 200,000 ticks, one run per case

The data is a seeded random walk of one symbol (mid rounded to cents, one-cent half spread, one
tick per millisecond), written through ``SQLiteTickStore.write`` into a temporary SQLite file.
Every case runs ``run_backtest`` on that file in this process, so each figure includes reading
the ticks from SQLite; the bare read is shown as its own row, since it bounds both paths. The two
paths must produce equal results (``==``); the benchmark checks that too.

The risk check is ``RiskEngine.check(request, position, mark_price)`` for a market order that
passes every rule (the common case), timed in a loop, minus the same loop's empty cost.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from strategylab.market import SQLiteTickStore, Tick
from strategylab.research._data import load_sqlite_arrays
from strategylab.research._spec import BacktestSpec, StrategyName, run_backtest
from strategylab.strategy._strategy import OrderRequest, Side
from strategylab.trading._risk import RiskEngine, RiskLimits

SYMBOL = "SIM"
CASES: tuple[tuple[StrategyName, dict[str, float | int]], ...] = (
    ("ma_crossover", {"fast": 20, "slow": 100, "qty": 1.0}),
    ("mean_reversion", {"window": 50, "entry_z": 2.0, "exit_z": 0.5, "qty": 1.0}),
)
WRITE_BATCH = 50_000


async def _generate(path: Path, ticks: int, seed: int = 20240501) -> None:
    rng = np.random.default_rng(seed)
    mid = np.round(100.0 + np.cumsum(rng.normal(0.0, 0.01, ticks)), 2)
    sizes = rng.integers(1, 100, size=(ticks, 2)).astype(float)
    t0 = 1_700_000_000_000_000_000
    store = SQLiteTickStore(path)
    await store.open()
    try:
        for start in range(0, ticks, WRITE_BATCH):
            stop = min(ticks, start + WRITE_BATCH)
            await store.write(
                [
                    Tick(
                        SYMBOL,
                        i + 1,
                        t0 + i * 1_000_000,
                        round(float(mid[i]) - 0.01, 2),
                        round(float(mid[i]) + 0.01, 2),
                        float(sizes[i, 0]),
                        float(sizes[i, 1]),
                    )
                    for i in range(start, stop)
                ]
            )
    finally:
        await store.aclose()


def _timed(fn: object) -> float:
    assert callable(fn)
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _risk_ns(calls: int) -> float:
    engine = RiskEngine(
        RiskLimits(
            max_order_notional=1e18,
            max_position=1e18,
            max_orders_per_second=1e15,
            burst=1_000_000_000,
            stale_after=None,
        )
    )
    buy = OrderRequest(symbol=SYMBOL, side=Side.BUY, qty=1.0)
    sell = OrderRequest(symbol=SYMBOL, side=Side.SELL, qty=1.0)
    check = engine.check
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls // 2):
            check(buy, 0.0, 100.0)
            check(sell, 1.0, 100.0)
        elapsed = time.perf_counter_ns() - started
        started = time.perf_counter_ns()
        for _ in range(calls // 2):
            pass
        empty = time.perf_counter_ns() - started
        best = min(best, (elapsed - empty) / (calls // 2 * 2))
    for request in (buy, sell):  # the figure is only meaningful if the orders passed
        if (rejection := check(request, 0.0, 100.0)) is not None:
            raise SystemExit(f"risk check rejected the benchmark order: {rejection}")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Backtest throughput and risk-check cost.")
    parser.add_argument("--quick", action="store_true", help="200,000 ticks, one run per case")
    parser.add_argument("--ticks", type=int, default=None)
    args = parser.parse_args(argv)
    ticks = args.ticks or (200_000 if args.quick else 1_000_000)
    runs = 1 if args.quick else 3
    rows: list[tuple[str, float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="strategylab-bench-") as tmp:
        db = Path(tmp) / "ticks.db"
        asyncio.run(_generate(db, ticks))
        read = min(_timed(lambda: load_sqlite_arrays(db, SYMBOL)) for _ in range(runs))
        event_rates: list[float] = []
        for strategy, parameters in CASES:
            best: dict[bool, float] = {}
            results = {}
            for _ in range(runs):  # interleaved, so that a noisy moment hurts both paths alike
                for vectorized in (False, True):
                    spec = BacktestSpec(
                        db_path=str(db),
                        strategy=strategy,
                        symbol=SYMBOL,
                        parameters=parameters,
                        fee_bps=1.0,
                        slippage_bps=0.5,
                        vectorized=vectorized,
                    )
                    started = time.perf_counter()
                    results[vectorized] = run_backtest(spec)
                    elapsed = time.perf_counter() - started
                    best[vectorized] = min(best.get(vectorized, float("inf")), elapsed)
            if results[False] != results[True]:
                raise SystemExit(f"{strategy}: event-driven and vectorised results differ")
            trades = len(results[False].trades)
            rows.append((strategy, ticks / best[False], ticks / best[True], trades))
            event_rates.append(ticks / best[False])
    risk = _risk_ns(200_000)

    print(f"{ticks:,} ticks of one symbol, best of {runs}; fee 1 bp, slippage 0.5 bp\n")
    print("| case | event-driven ticks/s | vectorised ticks/s | ratio | trades | equal |")
    print("|---|---:|---:|---:|---:|---|")
    for name, event, vector, trades in rows:
        print(
            f"| {name} | {event:,.0f} | {vector:,.0f} | {vector / event:.1f}x | {trades:,} | yes |"
        )
    print(f"| (SQLite read into arrays alone) | {ticks / read:,.0f} | | | | |")
    print(f"\nRiskEngine.check: {risk / 1000:.2f} µs per order (passing market order)\n")
    slowest = min(event_rates)
    print("| goal | met |\n|---|---|")
    for label, met in (
        (f"event-driven ≥ 500,000 ticks/s (slowest {slowest:,.0f})", slowest >= 500_000),
        (f"risk check ≤ 5 µs per order ({risk / 1000:.2f} µs)", risk <= 5_000),
        ("vectorised == event-driven (trades, equity, metrics)", True),
    ):
        print(f"| {label} | {'yes' if met else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
