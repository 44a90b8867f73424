"""`strategylab backtest` and `strategylab optimize` on a real small SQLite tick store."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest
import typer
from typer.testing import CliRunner

from strategylab._research_cli import (
    UsageError,
    _arun_interruptible,
    backtest_command,
    optimize_command,
    parse_grid,
    parse_params,
    parse_ranges,
)
from strategylab.market import SQLiteTickStore, Tick
from strategylab.research._optimizer import JobResult, JobStatus, Optimizer, ParamValue

SYMBOL = "BTC-USD"
TICKS = 3_000

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("backtest")(backtest_command)
app.command("optimize")(optimize_command)


def _walk(symbol: str, n: int, seed: int) -> list[Tick]:
    rng = random.Random(seed)
    mid, ticks = 100.0, []
    for seq in range(1, n + 1):
        mid = max(1.0, mid + rng.gauss(0.0, 0.2))
        ticks.append(
            Tick(
                symbol,
                seq,
                1_700_000_000_000_000_000 + seq * 1_000_000,
                mid - 0.01,
                mid + 0.01,
                1.0,
                1.0,
            )
        )
    return ticks


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with a few thousand ticks of a random walk, written by SQLiteTickStore."""
    path = tmp_path_factory.mktemp("research") / "ticks.db"

    async def write() -> None:
        store = SQLiteTickStore(path)
        await store.open()
        try:
            await store.write(_walk(SYMBOL, TICKS, 1))
            await store.write(_walk("ETH-USD", 50, 2))
        finally:
            await store.aclose()

    asyncio.run(write())
    return path


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


# ------------------------------------------------------------------ parsing


def test_parse_params_types_values() -> None:
    """Integers, floats and booleans are recognised; names are kept."""
    assert parse_params(["fast=20", "entry_z=1.5", "flag=true"]) == {
        "fast": 20,
        "entry_z": 1.5,
        "flag": True,
    }


def test_parse_grid_and_ranges() -> None:
    """A grid item is a comma list; a range item is LOW:HIGH."""
    assert parse_grid(["fast=5,10", "slow=50"]) == {"fast": [5, 10], "slow": [50]}
    assert parse_ranges(["fast=5:50", "z=0.5:2"]) == {"fast": (5, 50), "z": (0.5, 2)}


@pytest.mark.parametrize(
    ("parse", "item", "named"),
    [
        (parse_params, "fast", "'fast'"),
        (parse_params, "=3", "'=3'"),
        (parse_grid, "fast=5,,10", "'fast=5,,10'"),
        (parse_ranges, "fast=50:5", "'fast=50:5'"),
        (parse_ranges, "fast=a:b", "'fast=a:b'"),
    ],
)
def test_parse_errors_name_the_item(parse, item: str, named: str) -> None:  # type: ignore[no-untyped-def]
    """A malformed item is a UsageError quoting it."""
    with pytest.raises(UsageError, match=named):
        parse([item])


# ------------------------------------------------------------------ backtest


@pytest.mark.timeout(20)
def test_backtest_prints_a_table(db: Path) -> None:
    """A backtest over the store prints its headline figures and exits 0."""
    result = _invoke(
        "backtest", "--db", str(db), "--symbols", SYMBOL, "--param", "fast=5", "--param", "slow=20"
    )
    assert result.exit_code == 0, result.output
    for label in ("PnL", "Sharpe", "max drawdown", "trades", f"{TICKS:,}"):
        assert label in result.output


@pytest.mark.timeout(20)
def test_backtest_json_agrees_between_paths(db: Path) -> None:
    """--json prints a list of summaries (one symbol: one); the vectorised path agrees."""
    args = [
        "backtest",
        "--db",
        str(db),
        "--symbols",
        SYMBOL,
        "--param",
        "fast=5",
        "--param",
        "slow=20",
        "--json",
    ]
    event = _invoke(*args)
    vector = _invoke(*args, "--vectorised")
    assert event.exit_code == 0, event.output
    assert vector.exit_code == 0, vector.output
    [a], [b] = json.loads(event.stdout), json.loads(vector.stdout)
    assert a["ticks"] == TICKS
    assert a["trades"] > 0
    assert (a["trades"], a["total_pnl"]) == (b["trades"], pytest.approx(b["total_pnl"]))


# ------------------------------------------------------------------ optimize


@pytest.mark.timeout(30)
def test_optimize_grid_ranks_results_as_json(db: Path) -> None:
    """A 2x2 grid runs four backtests in workers; the JSON rows are ranked by the metric."""
    result = _invoke(
        "optimize", "--db", str(db), "--symbols", SYMBOL,
        "--grid", "fast=3,5", "--grid", "slow=20,40",
        "--metric", "pnl", "--workers", "2", "--timeout", "20", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["results"]
    assert len(rows) == 4
    assert {(r["parameters"]["fast"], r["parameters"]["slow"]) for r in rows} == {
        (3, 20), (3, 40), (5, 20), (5, 40),
    }  # fmt: skip
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in rows)
    pnls = [r["metrics"]["pnl"] for r in rows]
    assert pnls == sorted(pnls, reverse=True)
    assert not report["cancelled"]


@pytest.mark.timeout(30)
def test_optimize_prints_a_results_table_and_skips_invalid_sets(db: Path) -> None:
    """The table is titled with the metric; a set the strategy refuses is listed as not run."""
    result = _invoke(
        "optimize", "--db", str(db), "--symbols", SYMBOL,
        "--grid", "fast=5,30", "--grid", "slow=20", "--metric", "max_drawdown", "--workers", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ranked by max_drawdown" in result.output
    assert "not run" in result.output
    assert "fast must be < slow" in result.output
    assert "1 runs" in result.output
    assert "1 ok" in result.output


# ------------------------------------------------------------------ bad input


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backtest", "--strategy", "golden_cross"], "--strategy 'golden_cross'"),
        (["backtest", "--param", "fast"], "--param 'fast': expected NAME=VALUE"),
        (["backtest", "--param", "fast=50", "--param", "slow=10"], "fast must be < slow"),
        (["backtest", "--symbol-x"], "No such option"),
        (["backtest", "--from", "yesterday"], "--from 'yesterday'"),
        (["backtest", "--from", "999999"], "no ticks between --from '999999'"),
        (["optimize", "--grid", "fast=5,10", "--metric", "alpha"], "--metric 'alpha'"),
        (["optimize"], "nothing to search"),
        (["optimize", "--random", "3"], "--random needs at least one --range"),
        (["optimize", "--grid", "fast=50", "--grid", "slow=10"], "no valid parameter set"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(db: Path, args: list[str], message: str) -> None:
    """Usage errors exit 2 with a message that names the value, and no traceback."""
    command, *rest = args
    symbol = [] if "--symbol-x" in rest else ["--symbols", SYMBOL]
    result = _invoke(command, "--db", str(db), *symbol, *rest)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", ["backtest", "optimize"])
def test_missing_db_exits_1_and_unknown_symbol_exits_2(
    db: Path, tmp_path: Path, command: str
) -> None:
    """A database that does not exist (operational, 1) and a symbol with no ticks (usage, 2)."""
    grid = ["--grid", "fast=5", "--grid", "slow=20"] if command == "optimize" else []
    missing = _invoke(command, "--db", str(tmp_path / "nope.db"), "--symbols", SYMBOL, *grid)
    assert missing.exit_code == 1
    assert "nope.db" in missing.output
    assert "no such database" in missing.output
    unknown = _invoke(command, "--db", str(db), "--symbols", "DOGE-USD", *grid)
    assert unknown.exit_code == 2
    assert "--symbols 'DOGE-USD': no ticks" in unknown.output
    assert "BTC-USD, ETH-USD" in unknown.output


# ------------------------------------------------------------------ Ctrl-C


def quick_or_sleepy_job(spec: dict[str, object]) -> dict[str, float]:
    """A worker job: returns at once for ``sleep=0``, otherwise outlives any test."""
    if spec["sleep"]:
        time.sleep(30)
    return {"pnl": 1.0}


def _spec(parameters: Mapping[str, ParamValue], scope: float) -> dict[str, object]:
    return {**parameters, "scope": scope}


@pytest.mark.timeout(20)
async def test_sigint_cancels_the_optimizer_and_reaps_workers() -> None:
    """A real SIGINT during `optimize` cancels: partial results, no KeyboardInterrupt or workers."""

    def interrupt(result: JobResult, done: int, total: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    optimizer: Optimizer[dict[str, object]] = Optimizer(
        quick_or_sleepy_job, _spec, max_workers=2, timeout=10, progress=interrupt
    )
    sets: list[dict[str, ParamValue]] = [{"sleep": 1}, {"sleep": 0}, {"sleep": 1}, {"sleep": 1}]
    async with asyncio.timeout(15):
        report = await _arun_interruptible(optimizer, sets)
    assert report.cancelled
    assert [r.status for r in report.results].count(JobStatus.CANCELLED) == 3
    assert report.results[1].status is JobStatus.OK
    assert not any(psutil.pid_exists(pid) for pid in report.worker_pids)
