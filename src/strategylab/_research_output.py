"""What the research commands write: the output files of ``backtest`` (planned and checked before
anything runs, then written), and the tables and JSON of both commands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from strategylab._research_args import UsageError, _fmt, _fmt_params
from strategylab.errors import StrategyLabError

# Only for annotations: rich and research are imported by the functions that use them.
if TYPE_CHECKING:
    from rich.table import Table

    from strategylab.research import (
        BacktestResult,
        JobResult,
        OptimizationReport,
        ParamValue,
    )

__all__ = ["OutputError"]

_FILE_SAFE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------------- output files


_OUTPUT_SUFFIXES: Final = {
    "--trades-out": (".csv", ".parquet"),
    "--equity-out": (".csv", ".parquet"),
    "--plot": (".png",),
}


def _plan_outputs(
    symbols: Sequence[str], requested: Mapping[str, Path | None], *, overwrite: bool
) -> dict[str, dict[str, Path]]:
    """``{flag: {symbol: path}}`` for the output flags given; checked before anything runs.

    One symbol: the path as given. Several: ``NAME.SYMBOL.SUFFIX`` beside it. The directory must
    exist; a file that exists is refused unless ``overwrite``; a symbolic link always is (an
    output is never written through one).
    """
    plan: dict[str, dict[str, Path]] = {}
    claimed: dict[Path, str] = {}
    for flag, path in requested.items():
        if path is None:
            continue
        suffixes = _OUTPUT_SUFFIXES[flag]
        if path.suffix.lower() not in suffixes:
            raise UsageError(
                f"{flag} {str(path)!r}: expected a file name ending in {' or '.join(suffixes)}"
            )
        if not path.parent.is_dir():
            raise UsageError(f"{flag} {str(path)!r}: no such directory {str(path.parent)!r}")
        if path.is_dir():
            raise UsageError(f"{flag} {str(path)!r}: is a directory")
        targets = {symbols[0]: path} if len(symbols) == 1 else _per_symbol(flag, path, symbols)
        for target in targets.values():
            problem = _existing(target, overwrite=overwrite)
            if problem is not None:
                named = "" if target == path else f"{str(target)!r} "
                raise UsageError(f"{flag} {str(path)!r}: {named}{problem}")
            key = target.resolve()
            if key in claimed:
                raise UsageError(f"{flag} {str(path)!r}: the same file as {claimed[key]}")
            claimed[key] = flag
        plan[flag] = targets
    return plan


def _existing(target: Path, *, overwrite: bool) -> str | None:
    """Why ``target`` may not be written (a link; a file, without ``overwrite``), or None."""
    if target.is_symlink():
        return "is a symbolic link; an output is never written through one"
    if target.is_dir():
        return "is a directory"
    if target.exists() and not overwrite:
        return "exists; give --overwrite to replace it"
    return None


def _per_symbol(flag: str, path: Path, symbols: Sequence[str]) -> dict[str, Path]:
    targets: dict[str, Path] = {}
    for symbol in symbols:
        if not _FILE_SAFE.fullmatch(symbol):
            raise UsageError(
                f"{flag} {str(path)!r}: symbol {symbol!r} cannot be part of a file name; "
                "backtest it alone (one symbol: the path is used as given)"
            )
        targets[symbol] = path.with_name(f"{path.stem}.{symbol}{path.suffix}")
    return targets


def _write_outputs(
    plan: Mapping[str, Mapping[str, Path]], results: Sequence[BacktestResult], *, overwrite: bool
) -> None:
    """Write every planned file; :class:`OutputError` naming the flag if one cannot be written
    (or appeared, as a file or a link, while the backtest ran)."""
    from strategylab.research import write_equity, write_plot, write_trades  # noqa: PLC0415

    writers = {"--trades-out": write_trades, "--equity-out": write_equity, "--plot": write_plot}
    for flag, targets in plan.items():
        for result in results:
            path = targets[result.symbols[0]]
            problem = _existing(path, overwrite=overwrite)
            if problem is not None:
                raise OutputError(f"{flag} {str(path)!r}: {problem} (it appeared meanwhile)")
            try:
                # Replaced by a rename: a link planted after this check is replaced, not followed.
                writers[flag](result, path)
            except OSError as exc:
                raise OutputError(
                    f"{flag} {str(path)!r}: cannot write it: {exc.strerror or exc}"
                ) from None


class OutputError(StrategyLabError):
    """An output file could not be written (exit 1); the message names the flag and the path."""


def _output_option(flag: str, what: str) -> object:
    return typer.Option(flag, metavar="PATH", help=what, show_default=False)


TradesOutOption = Annotated[
    Path | None,
    _output_option("--trades-out", "Write the trades to PATH (.csv or .parquet)."),
]


EquityOutOption = Annotated[
    Path | None,
    _output_option(
        "--equity-out", "Write the equity curve and drawdown to PATH (.csv or .parquet)."
    ),
]


PlotOption = Annotated[
    Path | None, _output_option("--plot", "Draw the equity curve and drawdown to PATH (.png).")
]


# ------------------------------------------------------------------------------------- backtest


def _backtest_table(results: Sequence[BacktestResult], *, vectorised: bool) -> Table:
    from rich.table import Table  # noqa: PLC0415

    first = results[0]
    table = Table(title=f"{first.strategy} {_fmt_params(_public(first.parameters))}")
    table.add_column("", style="bold")
    for result in results:
        table.add_column(", ".join(result.symbols), justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("path", ["vectorised" if vectorised else "event-driven" for _ in results]),
        ("ticks", [f"{r.ticks:,}" for r in results]),
        ("trades", [f"{len(r.trades):,}" for r in results]),
        ("PnL", [f"{r.total_pnl:,.4f}" for r in results]),
        ("fees", [f"{r.fees:,.4f}" for r in results]),
        ("Sharpe", [_fmt_sharpe(r) for r in results]),
        ("max drawdown", [f"{r.max_drawdown:,.4f}" for r in results]),
        ("final positions", [_fmt_params(dict(r.positions)) or "flat" for r in results]),
    ]
    for name, values in rows:
        table.add_row(name, *values)
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


# ------------------------------------------------------------------------------------- optimize


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
