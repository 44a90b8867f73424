"""The research commands, ``strategylab backtest`` and ``strategylab optimize``.

Plain typer command functions; ``cli.py`` registers them on its app. Bad input (an unknown strategy,
a malformed ``--param``, a missing database, a symbol with no ticks, an empty range) is a usage
error: one line on stderr naming the value, exit status 2, no traceback. An optimisation in which
every run failed exits 1; a cancelled one (Ctrl-C) prints what finished and exits 130.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import typer

from strategylab._files import check_sqlite_readable, sqlite_uri
from strategylab._logging import escape
from strategylab.errors import StrategyLabError

# Only for annotations: `strategylab --help` imports this module to read the commands' options,
# and research pulls in numpy and the fault-tolerance stack. The commands import what they run.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from strategylab.research import (
        BacktestResult,
        BacktestSpec,
        JobResult,
        OptimizationReport,
        Optimizer,
        ParamValue,
    )

__all__ = [
    "DEFAULT_DB",
    "UsageError",
    "backtest_command",
    "optimize_command",
    "parse_grid",
    "parse_params",
    "parse_ranges",
    "parse_value",
]

DEFAULT_DB: Final = Path("strategylab-data/node/ticks.db")
"""Where ``strategylab demo`` leaves its SQLite tick store."""

_EXIT_USAGE: Final = 2
_EXIT_CANCELLED: Final = 130
_RANKABLE: Final = ("pnl", "sharpe", "max_drawdown")
_S = TypeVar("_S")


class UsageError(StrategyLabError):
    """Bad command-line input; the message names the offending value."""


# ------------------------------------------------------------------------------------ parsing


def parse_value(text: str) -> ParamValue:
    """``"20"`` → 20, ``"0.5"`` → 0.5, ``"true"`` → True, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    if not math.isfinite(value):
        raise UsageError(f"value {text!r}: must be finite")
    return value


def _split(item: str, option: str, example: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} {example}")
    return name.strip(), value.strip()


def parse_params(items: Sequence[str]) -> dict[str, ParamValue]:
    """``["fast=20", "slow=100"]`` → ``{"fast": 20, "slow": 100}``."""
    out: dict[str, ParamValue] = {}
    for item in items:
        name, value = _split(item, "--param", "fast=20")
        if name in out:
            raise UsageError(f"--param {item!r}: {name!r} is given twice")
        out[name] = parse_value(value)
    return out


def parse_grid(items: Sequence[str]) -> dict[str, list[ParamValue]]:
    """``["fast=5,10", "slow=50"]`` → ``{"fast": [5, 10], "slow": [50]}``."""
    out: dict[str, list[ParamValue]] = {}
    for item in items:
        name, values = _split(item, "--grid", "fast=5,10,20")
        parts = [v.strip() for v in values.split(",")]
        if any(not p for p in parts):
            raise UsageError(f"--grid {item!r}: empty value in the list")
        if name in out:
            raise UsageError(f"--grid {item!r}: {name!r} is given twice")
        out[name] = [parse_value(p) for p in parts]
    return out


def parse_ranges(items: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``["fast=5:50", "entry_z=1.0:3.0"]`` → ``{"fast": (5, 50), "entry_z": (1.0, 3.0)}``."""
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, span = _split(item, "--range", "fast=5:50")
        low_text, sep, high_text = span.partition(":")
        low, high = parse_value(low_text), parse_value(high_text)
        if (
            not sep
            or isinstance(low, bool | str)
            or isinstance(high, bool | str)
            or not low <= high
        ):
            raise UsageError(f"--range {item!r}: expected NAME=LOW:HIGH with numbers, LOW <= HIGH")
        out[name] = (low, high)
    return out


def _parse_bound(text: str, option: str) -> tuple[str, int]:
    """``--from``/``--to``: a sequence number, or an ISO-8601 time (UTC unless it says)."""
    if text.strip().isdigit():
        return "seq", int(text)
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected a sequence number or an ISO-8601 time "
            "(e.g. 2025-01-31T12:00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return "ts", int(moment.timestamp() * 1_000_000_000)


# -------------------------------------------------------------------------- the data to run on


@dataclass(frozen=True, slots=True, kw_only=True)
class _Range:
    from_seq: int
    to_seq: int
    ticks: int


def _resolve_range(db: Path, symbol: str, start: str | None, end: str | None) -> _Range:
    """The stored sequence range of ``symbol`` inside ``--from``/``--to``; usage errors if none."""
    if not db.is_file():
        raise UsageError(
            f"--db {str(db)!r}: no such database (run `strategylab demo` to create one)"
        )
    clauses: list[str] = ["symbol = ?"]
    args: list[str | int] = [symbol]
    # A sequence bound is inclusive at both ends; a time window is [from, to).
    comparisons = {("--from", "seq"): "seq >= ?", ("--from", "ts"): "ts >= ?"}
    comparisons |= {("--to", "seq"): "seq <= ?", ("--to", "ts"): "ts < ?"}
    for text, option in ((start, "--from"), (end, "--to")):
        if text is not None:
            kind, value = _parse_bound(text, option)
            clauses.append(comparisons[option, kind])
            args.append(value)
    try:
        check_sqlite_readable(db)
    except OSError as exc:  # UnsafePathError names the file; a missing one is named here
        raise UsageError(f"--db {str(db)!r}: {exc.strerror or exc}") from None
    try:
        conn = sqlite3.connect(sqlite_uri(db, "ro"), uri=True)
        try:
            symbols = [r[0] for r in conn.execute("SELECT DISTINCT symbol FROM ticks")]
            row = conn.execute(
                # Only fixed clauses from `comparisons` are joined in; values are bound.
                f"SELECT MIN(seq), MAX(seq), COUNT(*) FROM ticks WHERE {' AND '.join(clauses)}",  # noqa: S608
                args,
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"--db {str(db)!r}: not a readable tick database ({exc})") from None
    if symbol not in symbols:
        known = ", ".join(sorted(symbols)) or "none"
        raise UsageError(f"--symbol {symbol!r}: no ticks in {str(db)!r} (symbols there: {known})")
    low, high, count = row
    if not count:
        raise UsageError(f"--symbol {symbol!r}: no ticks between --from {start!r} and --to {end!r}")
    return _Range(from_seq=int(low), to_seq=int(high), ticks=int(count))


def _check_strategy(name: str) -> None:
    from strategylab.strategy import BUILTIN_STRATEGIES  # noqa: PLC0415

    if name not in BUILTIN_STRATEGIES:
        raise UsageError(
            f"--strategy {name!r}: expected one of {', '.join(sorted(BUILTIN_STRATEGIES))}"
        )


def _check_parameters(strategy: str, symbol: str, parameters: Mapping[str, ParamValue]) -> None:
    from strategylab.strategy import make_strategy  # noqa: PLC0415

    try:
        make_strategy(strategy, symbol, dict(parameters))
    except ValueError as exc:
        raise UsageError(f"parameters {_fmt_params(parameters)}: {exc}") from None


def _fmt_params(parameters: Mapping[str, ParamValue]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in parameters.items())


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _usage_exit(command: str, exc: UsageError) -> typer.Exit:
    typer.echo(f"strategylab {command}: {escape(str(exc))}", err=True)
    return typer.Exit(_EXIT_USAGE)


# ------------------------------------------------------------------------------------- options

DbOption = Annotated[Path, typer.Option("--db", help="The SQLite tick store.")]
SymbolOption = Annotated[str, typer.Option("--symbol", help="The symbol to trade.")]
StrategyOption = Annotated[str, typer.Option("--strategy", help="ma_crossover or mean_reversion.")]
FeeOption = Annotated[float, typer.Option("--fee-bps", help="Fee, basis points of notional.")]
SlippageOption = Annotated[
    float, typer.Option("--slippage-bps", help="Slippage on market orders, basis points.")
]
FromOption = Annotated[
    str | None, typer.Option("--from", help="First tick: a sequence number or an ISO-8601 time.")
]
ToOption = Annotated[
    str | None,
    typer.Option("--to", help="Last tick: a sequence number (inclusive) or a time (exclusive)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


# ------------------------------------------------------------------------------------ backtest


def backtest_command(  # noqa: PLR0917 - typer passes options positionally
    symbol: SymbolOption,
    db: DbOption = DEFAULT_DB,
    strategy: StrategyOption = "ma_crossover",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="NAME=VALUE; repeat for each parameter.")
    ] = None,
    fee_bps: FeeOption = 0.0,
    slippage_bps: SlippageOption = 0.0,
    start: FromOption = None,
    end: ToOption = None,
    vectorised: Annotated[
        bool, typer.Option("--vectorised", help="Use the numpy path (same trades, faster).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Backtest one strategy over stored ticks; prints PnL, Sharpe, drawdown and trades."""
    from rich.console import Console  # noqa: PLC0415

    from strategylab.research import run_backtest, scoped_backtest_spec  # noqa: PLC0415

    try:
        _check_strategy(strategy)
        parameters = parse_params(param or [])
        _check_parameters(strategy, symbol, parameters)
        span = _resolve_range(db, symbol, start, end)
        spec = _base_spec(
            db=db,
            strategy=strategy,
            symbol=symbol,
            span=span,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            vectorised=vectorised,
        )
        spec = scoped_backtest_spec(spec, parameters, 1.0)
    except UsageError as exc:
        raise _usage_exit("backtest", exc) from None

    console = Console()
    with console.status(
        f"backtesting {strategy} on {symbol} ({span.ticks:,} ticks, "
        f"{'vectorised' if vectorised else 'event-driven'})",
        spinner="dots",
    ):
        result = run_backtest(spec)
    if as_json:
        typer.echo(json.dumps(result.summary()))
        return
    console.print(_backtest_table(result, vectorised=vectorised))


def _base_spec(
    *,
    db: Path,
    strategy: str,
    symbol: str,
    span: _Range,
    fee_bps: float,
    slippage_bps: float,
    vectorised: bool,
) -> BacktestSpec:
    from strategylab.research import BacktestSpec  # noqa: PLC0415

    try:
        return BacktestSpec(
            db_path=str(db),
            strategy=strategy,  # type: ignore[arg-type]  # checked by _check_strategy
            symbol=symbol,
            from_seq=span.from_seq,
            to_seq=span.to_seq,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            vectorized=vectorised,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _backtest_table(result: BacktestResult, *, vectorised: bool) -> Table:
    from rich.table import Table  # noqa: PLC0415

    table = Table(
        title=f"{result.strategy} {_fmt_params(_public(result.parameters))}",
        show_header=False,
    )
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("symbol", ", ".join(result.symbols)),
        ("path", "vectorised" if vectorised else "event-driven"),
        ("ticks", f"{result.ticks:,}"),
        ("trades", f"{len(result.trades):,}"),
        ("PnL", f"{result.total_pnl:,.4f}"),
        ("fees", f"{result.fees:,.4f}"),
        ("Sharpe", _fmt_sharpe(result)),
        ("max drawdown", f"{result.max_drawdown:,.4f}"),
        ("final positions", _fmt_params(dict(result.positions)) or "flat"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _fmt_sharpe(result: BacktestResult) -> str:
    """The annualised Sharpe ratio, or ``n/a (why)`` when the data cannot support one."""
    if result.sharpe is None:
        return f"n/a ({result.sharpe_reason})"
    return f"{result.sharpe:.3f}"


def _public(parameters: Mapping[str, object]) -> dict[str, ParamValue]:
    return {
        k: v
        for k, v in parameters.items()
        if k != "symbol" and isinstance(v, int | float | str | bool)
    }


# ------------------------------------------------------------------------------------ optimize


def optimize_command(  # noqa: PLR0917 - typer passes options positionally
    symbol: SymbolOption,
    db: DbOption = DEFAULT_DB,
    strategy: StrategyOption = "ma_crossover",
    grid_items: Annotated[
        list[str] | None,
        typer.Option("--grid", help="NAME=V1,V2,...; the grid is every combination."),
    ] = None,
    random_n: Annotated[
        int | None,
        typer.Option("--random", min=1, help="Random search: this many samples of --range."),
    ] = None,
    range_items: Annotated[
        list[str] | None, typer.Option("--range", help="NAME=LOW:HIGH for --random.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random search.")] = 0,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="NAME=VALUE held fixed in every run.")
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="Rank by pnl, sharpe or max_drawdown.")
    ] = "sharpe",
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: CPUs).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="Seconds per backtest before retrying.")
    ] = 300.0,
    fee_bps: FeeOption = 0.0,
    slippage_bps: SlippageOption = 0.0,
    start: FromOption = None,
    end: ToOption = None,
    vectorised: Annotated[
        bool, typer.Option("--vectorised/--event-driven", help="Backtest path.")
    ] = True,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows to show in the table.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Search strategy parameters over stored ticks in worker processes; ranks the results.

    Exit status: 0 at least one run finished; 1 every run failed, or the workers could not
    start; 2 a usage error; 130 interrupted (Ctrl-C), after printing what finished.
    """
    from rich.console import Console  # noqa: PLC0415

    from strategylab.research import WorkerStartError  # noqa: PLC0415

    try:
        _check_strategy(strategy)
        _check_metric(metric)
        sets = _parameter_sets(grid_items or [], random_n, range_items or [], seed, param or [])
        valid, invalid = _validate_sets(strategy, symbol, sets)
        span = _resolve_range(db, symbol, start, end)
        base = _base_spec(
            db=db,
            strategy=strategy,
            symbol=symbol,
            span=span,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            vectorised=vectorised,
        )
    except UsageError as exc:
        raise _usage_exit("optimize", exc) from None

    console = Console(stderr=as_json)
    for parameters, reason in invalid:
        console.print(f"[yellow]not run[/] {_fmt_params(parameters)}: {reason}")
    try:
        report = _run_optimizer(
            console,
            base,
            valid,
            workers=workers,
            timeout=timeout,
            title=f"{strategy} on {symbol}, {span.ticks:,} ticks",
        )
    except WorkerStartError as exc:
        typer.echo(f"strategylab optimize: {escape(str(exc))}", err=True)
        raise typer.Exit(1) from None
    ranked = report.ranked(metric)
    if as_json:
        typer.echo(json.dumps(_report_json(report, ranked, metric, invalid)))
    else:
        console.print(_results_table(ranked[:top], metric, strategy, symbol))
        for line in [*_notes(ranked[:top]), *_sharpe_note(ranked[:top])]:
            console.print(line, markup=False, highlight=False)
        console.print(_summary_line(report, len(ranked)))
    if report.cancelled:
        raise typer.Exit(_EXIT_CANCELLED)
    if not any(row.metrics for row in ranked):
        # Every backtest failed or was skipped: nothing was learnt, and a script must see that.
        typer.echo(
            f"strategylab optimize: every run failed: {_summary_line(report, len(ranked))}",
            err=True,
        )
        raise typer.Exit(1)


def _check_metric(metric: str) -> None:
    if metric not in _RANKABLE:
        raise UsageError(f"--metric {metric!r}: expected one of {', '.join(_RANKABLE)}")


def _parameter_sets(
    grid_items: Sequence[str],
    random_n: int | None,
    range_items: Sequence[str],
    seed: int,
    param_items: Sequence[str],
) -> list[dict[str, ParamValue]]:
    from strategylab.research import grid, random_search  # noqa: PLC0415

    fixed = parse_params(param_items)
    space = parse_grid(grid_items)
    ranges = parse_ranges(range_items)
    if ranges and random_n is None:
        raise UsageError("--range needs --random N (how many samples to draw)")
    if random_n is not None:
        if not ranges:
            raise UsageError("--random needs at least one --range NAME=LOW:HIGH")
        if space:
            raise UsageError("--grid and --random are alternatives: give one of them")
        return random_search(ranges, random_n, rng=seed, fixed=fixed)
    if not space:
        raise UsageError("nothing to search: give --grid NAME=V1,V2 (or --random N --range ...)")
    overlap = sorted(set(space) & set(fixed))
    if overlap:
        raise UsageError(f"--param {overlap[0]!r} is also in --grid")
    return [{**fixed, **combo} for combo in grid(space)]


def _validate_sets(
    strategy: str, symbol: str, sets: list[dict[str, ParamValue]]
) -> tuple[list[dict[str, ParamValue]], list[tuple[dict[str, ParamValue], str]]]:
    """Split off the sets the strategy refuses (e.g. fast >= slow), so no worker runs them."""
    valid: list[dict[str, ParamValue]] = []
    invalid: list[tuple[dict[str, ParamValue], str]] = []
    for parameters in sets:
        try:
            _check_parameters(strategy, symbol, parameters)
        except UsageError as exc:
            invalid.append((parameters, str(exc).partition(": ")[2]))
        else:
            valid.append(parameters)
    if not valid:
        raise UsageError(f"no valid parameter set; e.g. {invalid[0][1]}")
    return valid, invalid


def _run_optimizer(
    console: Console,
    base: BacktestSpec,
    sets: list[dict[str, ParamValue]],
    *,
    workers: int | None,
    timeout: float,
    title: str,
) -> OptimizationReport:
    import asyncio  # noqa: PLC0415
    import functools  # noqa: PLC0415

    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from strategylab.research import (  # noqa: PLC0415
        JobStatus,
        Optimizer,
        backtest_metrics,
        scoped_backtest_spec,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(title, total=len(sets), note="")

        def advance(result: JobResult, _done: int, _total: int) -> None:
            note = "" if result.status is JobStatus.OK else f"last: {result.status.value}"
            progress.update(task, advance=1, note=note)

        optimizer: Optimizer[BacktestSpec] = Optimizer(
            backtest_metrics,
            functools.partial(scoped_backtest_spec, base),
            max_workers=workers,
            timeout=timeout,
            progress=advance,
        )
        return asyncio.run(_arun_interruptible(optimizer, sets))


async def _arun_interruptible(
    optimizer: Optimizer[_S], sets: list[dict[str, ParamValue]]
) -> OptimizationReport:
    """Run with Ctrl-C wired to :meth:`Optimizer.cancel`: partial results instead of a traceback."""
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, optimizer.cancel)
    except (NotImplementedError, RuntimeError):  # not the main thread, or not on this platform
        return await optimizer.arun(sets)
    try:
        return await optimizer.arun(sets)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _results_table(rows: Sequence[JobResult], metric: str, strategy: str, symbol: str) -> Table:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from strategylab.research import BACKTEST_METRICS, JobStatus  # noqa: PLC0415

    names: list[str] = []
    for row in rows:
        names.extend(k for k in row.parameters if k not in names)
    # No vertical rules: the table fits an 80-column terminal with a few parameters.
    table = Table(title=f"{strategy} on {symbol}, ranked by {metric}", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right", no_wrap=True, min_width=2)
    for name in names:
        table.add_column(name, justify="right", style="cyan", no_wrap=True)
    for name in BACKTEST_METRICS[:4]:
        header = "drawdown" if name == "max_drawdown" else name
        style = "bold" if name == metric else ""
        table.add_column(header, justify="right", style=style, no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True, min_width=5)
    styles = {
        JobStatus.OK: "green",
        JobStatus.RETRIED_SMALLER: "yellow",
        JobStatus.SKIPPED: "red",
        JobStatus.FAILED: "red",
        JobStatus.CANCELLED: "dim",
    }
    for rank, row in enumerate(rows, start=1):
        metrics = [_fmt_metric(name, row.metrics.get(name)) for name in BACKTEST_METRICS[:4]]
        params = [_fmt(row.parameters.get(name, "")) for name in names]
        status = row.status.value
        table.add_row(
            str(rank),
            *params,
            *metrics,
            f"[{styles[row.status]}]{status}[/]",
            str(row.attempts),
        )
    return table


def _notes(rows: Sequence[JobResult]) -> list[str]:
    """One line per ranked row that was not a clean OK: why (printed under the table)."""
    lines = []
    for rank, row in enumerate(rows, start=1):
        if row.reason:
            scope = f" (ran {row.scope:.0%} of the ticks)" if row.metrics else ""
            lines.append(f"#{rank} {_fmt_params(row.parameters)}: {row.reason}{scope}")
    return lines


def _sharpe_note(rows: Sequence[JobResult]) -> list[str]:
    """Why a finished row has no Sharpe ratio (printed under the table, once)."""
    if any(row.metrics and "sharpe" not in row.metrics for row in rows):
        note = (
            "Sharpe n/a: the data spans too few periods for an annualised ratio "
            "(`strategylab backtest` with one parameter set says how many it needs)"
        )
        return [note]
    return []


def _fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return "n/a" if name == "sharpe" else "-"
    if name == "trades":
        return f"{int(value):,}"
    if name == "sharpe":
        return f"{value:.2f}"
    return f"{value:,.2f}"


def _summary_line(report: OptimizationReport, total: int) -> str:
    from strategylab.research import JobStatus  # noqa: PLC0415

    parts = [f"{total} runs in {report.elapsed:.1f}s"]
    parts.extend(
        f"{report.count(status)} {status.value}" for status in JobStatus if report.count(status)
    )
    if report.cancelled:
        parts.append("CANCELLED: partial results")
    return ", ".join(parts)


def _report_json(
    report: OptimizationReport,
    ranked: Sequence[JobResult],
    metric: str,
    invalid: Sequence[tuple[Mapping[str, ParamValue], str]],
) -> dict[str, object]:
    return {
        "metric": metric,
        "cancelled": report.cancelled,
        "elapsed": report.elapsed,
        "results": [
            {
                "rank": rank,
                "parameters": dict(row.parameters),
                "metrics": dict(row.metrics),
                "status": row.status.value,
                "attempts": row.attempts,
                "scope": row.scope,
                "reason": row.reason,
            }
            for rank, row in enumerate(ranked, start=1)
        ],
        "not_run": [{"parameters": dict(p), "reason": r} for p, r in invalid],
    }
