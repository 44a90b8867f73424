"""Backtest throughput: our event-driven and vectorised paths, vectorbt and backtesting.py.

Run (after ``pip install -e '.[bench]'``)::

    python bench/backtest.py            # 1,000,000 ticks, best of 3 runs per case
    python bench/backtest.py --quick    # 200,000 ticks, one run per case (CI; <= ~60 s)

The data is a seeded random walk of one symbol (mid rounded to cents, one-cent half spread, one
tick per millisecond), written through ``SQLiteTickStore.write`` into a temporary SQLite file.

**Ours.** Every case is ``run_backtest(spec)`` on that file in this process, so every figure
includes the read: through the columnar snapshot (the default; synced once after the write, the
build time printed on its own; before each timed run the process's cache of mapped segments is
emptied, so each run maps and validates the snapshot as a fresh CLI process would: checksum,
Arrow footer and schema, boundary rows against SQLite) and, as a row of its own, through the old
SQLite read (``columnar=False``). All paths must produce equal results (``==``); checked.

**Peers, on the same mid series and MA crossover (fast 20, slow 100), fee 1 bp, slippage 0.5 bp.**
vectorbt 1.x ``Portfolio.from_signals`` from an in-memory pandas Series of the mid (no read
counted: it starts in memory): the MAs with ``rolling().mean()``, long entries where fast > slow,
short entries where fast < slow, exits (both sides) where they are equal, size 1, ``fees`` and
``slippage`` as fractions, infinite initial cash (ours lets cash go negative). Its numba JIT is
warmed on a small series before timing. backtesting.py 0.6 ``Backtest`` on bars whose
open/high/low/close are the mid, a Strategy that targets +1/-1/0 on the same rule with
``trade_on_close=True`` (fills at the signal bar's close, as ours at the signal tick), the fee as
``commission``, ``exclusive_orders`` (a reversal closes then opens). backtesting.py takes several
seconds a million bars: with ``--quick`` it runs on the first ``--bt-ticks`` ticks (default
100,000), said in its row.

**Trade counts.** We count fills (a reversal -1 -> +1 is one fill of 2); vectorbt counts orders
(also one per reversal); for backtesting.py the row shows position changes (distinct entry/exit
bars: a reversal closes one trade and opens another on the same bar), so the three count the same
thing. The two peers agree with each other; ours are ~3 % fewer, all at exact MA ties: with prices
in cents the fast and slow MAs are exactly equal on some ticks (867 of the 1M here), where the
rule says flat. Pandas' rolling mean sees about half of them as ties (462) and goes flat and back,
two extra position changes each; our MAs are differences of cumulative sums (what the
event-driven strategy computes, bit for bit), whose rounding (~1e-8 after a million ticks) hides
most ties (64 seen), so we stay in the position. Fills at bid/ask (ours) rather than at the mid
(theirs) change the PnL, not the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from strategylab.market import SQLiteTickStore, Tick
from strategylab.research import _columnar
from strategylab.research._columnar import sync_columnar
from strategylab.research._data import load_sqlite_arrays
from strategylab.research._result import BacktestResult
from strategylab.research._spec import BacktestSpec, StrategyName, run_backtest
from strategylab.strategy._strategy import OrderRequest, Side
from strategylab.trading._risk import RiskEngine, RiskLimits

SYMBOL = "SIM"
FAST, SLOW = 20, 100
FEE_BPS, SLIPPAGE_BPS = 1.0, 0.5
CASES: tuple[tuple[StrategyName, dict[str, float | int]], ...] = (
    ("ma_crossover", {"fast": FAST, "slow": SLOW, "qty": 1.0}),
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


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _cold() -> None:
    """Forget this process's mapped, validated segments: the next read maps and checks them."""
    _columnar._MAPPED.clear()  # the benchmark measures a fresh process's read
    _columnar._JOINED.clear()


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


# ------------------------------------------------------------------ peers


def _vectorbt(mid: np.ndarray[Any, Any], runs: int) -> tuple[float, int] | str:
    """Best seconds of from_signals (MAs and signals included) and its order count."""
    try:
        import pandas as pd  # type: ignore[import-untyped]  # noqa: PLC0415
        import vectorbt as vbt  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        return f"not installed ({exc.name}; pip install -e '.[bench]')"

    def run(series: pd.Series) -> Any:  # vectorbt's Portfolio
        fast = series.rolling(FAST).mean()
        slow = series.rolling(SLOW).mean()
        long, short, tie = fast > slow, fast < slow, fast == slow
        return vbt.Portfolio.from_signals(
            series,
            entries=long,
            exits=tie,
            short_entries=short,
            short_exits=tie,
            size=1.0,
            fees=FEE_BPS / 10_000,
            slippage=SLIPPAGE_BPS / 10_000,
            init_cash=np.inf,
            freq="1ms",
        )

    index = pd.date_range("2023-11-14", periods=len(mid), freq="ms")
    series = pd.Series(mid, index=index)
    run(series.iloc[:2_000]).orders.count()  # compile (numba JIT) before timing
    best, orders = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        portfolio = run(series)
        best = min(best, time.perf_counter() - started)
        orders = int(portfolio.orders.count())
    return best, orders


def _backtesting_py(mid: np.ndarray[Any, Any], runs: int) -> tuple[float, int] | str:
    """Best seconds of backtesting.py's run on bars of the mid, and its position changes."""
    try:
        import pandas as pd  # noqa: PLC0415
        from backtesting import Backtest, Strategy  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        return f"not installed ({exc.name}; pip install -e '.[bench]')"

    def sma(values: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
        return np.asarray(pd.Series(values).rolling(n).mean())

    class Crossover(Strategy):  # type: ignore[misc] # backtesting.py is untyped
        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, FAST)
            self.slow = self.I(sma, self.data.Close, SLOW)

        def next(self) -> None:
            fast, slow = self.fast[-1], self.slow[-1]
            target = 1 if fast > slow else -1 if fast < slow else 0
            size = self.position.size
            if target == size:
                return
            if target > 0:
                self.buy(size=1)
            elif target < 0:
                self.sell(size=1)
            else:
                self.position.close()

    index = pd.date_range("2023-11-14", periods=len(mid), freq="ms")
    bars = pd.DataFrame({"Open": mid, "High": mid, "Low": mid, "Close": mid}, index=index)
    best, changes = float("inf"), 0
    for _ in range(runs):
        backtest = Backtest(
            bars,
            Crossover,
            cash=1e9,
            commission=FEE_BPS / 10_000,
            trade_on_close=True,
            exclusive_orders=True,
            finalize_trades=False,
        )
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # and its progress bar goes nowhere
            started = time.perf_counter()
            stats = backtest.run()
            best = min(best, time.perf_counter() - started)
        trades = stats["_trades"]
        changes = len(set(trades["EntryTime"]) | set(trades["ExitTime"].dropna()))
    return best, changes


# ------------------------------------------------------------------ main


def _ours(db: Path, runs: int) -> tuple[list[tuple[str, str, float, int]], dict[str, bool]]:
    """(case, path, best seconds, trades) per case and path; and whether each case's results
    were all equal."""
    rows: list[tuple[str, str, float, int]] = []
    equal: dict[str, bool] = {}
    paths = (
        ("event-driven, columnar", False, True),
        ("vectorised, columnar", True, True),
        ("event-driven, SQLite read", False, False),
        ("vectorised, SQLite read", True, False),
    )
    for strategy, parameters in CASES:
        best: dict[str, float] = {}
        results: dict[str, BacktestResult] = {}
        for warm in (True, *([False] * runs)):  # interleaved: a noisy moment hurts every path
            for label, vectorized, columnar in paths:
                spec = BacktestSpec(
                    db_path=str(db),
                    strategy=strategy,
                    symbol=SYMBOL,
                    parameters=parameters,
                    fee_bps=FEE_BPS,
                    slippage_bps=SLIPPAGE_BPS,
                    vectorized=vectorized,
                    columnar=columnar,
                    to_seq=5_000 if warm else None,  # first a short untimed run: lazy imports
                )
                _cold()
                started = time.perf_counter()
                result = run_backtest(spec)
                if not warm:
                    results[label] = result
                    elapsed = time.perf_counter() - started
                    best[label] = min(best.get(label, float("inf")), elapsed)
        first = next(iter(results.values()))
        equal[strategy] = all(r == first for r in results.values())
        rows.extend((strategy, label, best[label], len(results[label].trades)) for label in best)
    return rows, equal


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one report, top to bottom
    parser = argparse.ArgumentParser(description="Backtest throughput, ours and peers.")
    parser.add_argument("--quick", action="store_true", help="200,000 ticks, one run per case")
    parser.add_argument("--ticks", type=int, default=None)
    parser.add_argument(
        "--bt-ticks",
        type=int,
        default=None,
        help="ticks for backtesting.py (default: all; 100,000 with --quick)",
    )
    args = parser.parse_args(argv)
    ticks = args.ticks or (200_000 if args.quick else 1_000_000)
    bt_ticks = min(ticks, args.bt_ticks or (100_000 if args.quick else ticks))
    runs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="strategylab-bench-") as tmp:
        db = Path(tmp) / "ticks.db"
        asyncio.run(_generate(db, ticks))
        build = sync_columnar(db)
        if not build.available:
            raise SystemExit(f"no columnar snapshot: {build.unavailable}")
        sqlite_read = min(_timed(lambda: load_sqlite_arrays(db, SYMBOL)) for _ in range(runs))
        columnar_reads = []
        for _ in range(runs):
            _cold()
            columnar_reads.append(_timed(lambda: _columnar.read_columnar(db, SYMBOL)))
        columnar_read = min(columnar_reads)
        same_read = (
            _columnar.read_columnar(db, SYMBOL).rows.tobytes()
            == load_sqlite_arrays(db, SYMBOL).rows.tobytes()
        )
        ours, equal = _ours(db, runs)
        capped = run_backtest(
            BacktestSpec(
                db_path=str(db),
                strategy="ma_crossover",
                symbol=SYMBOL,
                parameters=CASES[0][1],
                fee_bps=FEE_BPS,
                slippage_bps=SLIPPAGE_BPS,
                vectorized=True,
                to_seq=bt_ticks,
            )
        )
        arrays = load_sqlite_arrays(db, SYMBOL)
        mid = (arrays.bid + arrays.ask) / 2
    vbt = _vectorbt(mid, runs)
    btpy = _backtesting_py(mid[:bt_ticks], 1)
    risk = _risk_ns(200_000)

    print(
        f"{ticks:,} ticks of one symbol, best of {runs}; fee {FEE_BPS:g} bp, slippage "
        f"{SLIPPAGE_BPS:g} bp; ours include the read (columnar: cold mapping, validated)\n"
    )
    print(
        f"columnar snapshot built in {build.seconds:.2f} s ({build.rows_appended:,} rows, once); "
        f"read {ticks / columnar_read:,.0f} ticks/s ({columnar_read * 1000:.1f} ms) vs SQLite "
        f"{ticks / sqlite_read:,.0f} ticks/s ({sqlite_read * 1000:.0f} ms): "
        f"{sqlite_read / columnar_read:,.0f}x; equal: {'yes' if same_read else 'NO'}\n"
    )
    print("| case | path | ticks/s | seconds | trades | equal |")
    print("|---|---|---:|---:|---:|---|")
    seconds = {(case, label): s for case, label, s, _ in ours}
    for case, label, s, trades in ours:
        mark = "yes" if equal[case] else "NO"
        print(f"| {case} | {label} | {ticks / s:,.0f} | {s:.3f} | {trades:,} | {mark} |")
    ma_trades = next(t for c, label, _, t in ours if c == "ma_crossover" and "vectorised" in label)
    vec = seconds["ma_crossover", "vectorised, columnar"]
    event = seconds["ma_crossover", "event-driven, columnar"]
    if isinstance(vbt, str):
        print(f"| ma_crossover | vectorbt from_signals | {vbt} | | | |")
    else:
        print(
            f"| ma_crossover | vectorbt from_signals (in memory) | {ticks / vbt[0]:,.0f} | "
            f"{vbt[0]:.3f} | {vbt[1]:,} orders | |"
        )
    if isinstance(btpy, str):
        print(f"| ma_crossover | backtesting.py | {btpy} | | | |")
    else:
        print(
            f"| ma_crossover | backtesting.py (first {bt_ticks:,} ticks) | "
            f"{bt_ticks / btpy[0]:,.0f} | {btpy[0]:.3f} | {btpy[1]:,} position changes | |"
        )

    print("\n| ma_crossover, compared | ours | peer | ratio |\n|---|---:|---:|---:|")
    vbt_ratio = None if isinstance(vbt, str) else vbt[0] / vec
    if not isinstance(vbt, str):
        print(
            f"| speed: vectorised incl. read vs vectorbt (ticks/s) | {ticks / vec:,.0f} | "
            f"{ticks / vbt[0]:,.0f} | {vbt[0] / vec:.2f}x |"
        )
        print(
            f"| trades: our fills vs vectorbt orders ({ticks:,} ticks) | {ma_trades:,} | "
            f"{vbt[1]:,} | {vbt[1] / ma_trades:.3f} |"
        )
    if not isinstance(btpy, str):
        bt_rate = bt_ticks / btpy[0]
        print(
            f"| speed: event-driven incl. read vs backtesting.py (ticks/s) | {ticks / event:,.0f} "
            f"| {bt_rate:,.0f} | {ticks / event / bt_rate:.1f}x |"
        )
        print(
            f"| trades: our fills vs backtesting.py position changes ({bt_ticks:,} ticks) | "
            f"{len(capped.trades):,} | {btpy[1]:,} | {btpy[1] / len(capped.trades):.3f} |"
        )
    print(f"| speed: vectorised vs event-driven, both columnar | | | {event / vec:.1f}x |")
    print(f"\nRiskEngine.check: {risk / 1000:.2f} µs per order (passing market order)\n")
    event_rate = ticks / event
    print("| goal | met |\n|---|---|")
    goals = (
        (
            "vectorised incl. read >= 2x vectorbt from_signals "
            + ("(not run)" if vbt_ratio is None else f"({vbt_ratio:.2f}x)"),
            vbt_ratio is not None and vbt_ratio >= 2.0,
        ),
        (f"event-driven incl. read >= 1,000,000 ticks/s ({event_rate:,.0f})", event_rate >= 1e6),
        ("columnar read == SQLite read", same_read),
        ("every path's result equal (==), per case", all(equal.values())),
        (f"risk check <= 5 µs per order ({risk / 1000:.2f} µs)", risk <= 5_000),
    )
    for label, met in goals:
        print(f"| {label} | {'yes' if met else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
