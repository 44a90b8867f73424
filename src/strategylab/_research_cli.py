"""The research commands, ``strategylab backtest`` and ``strategylab optimize``.

Plain typer command functions; ``cli.py`` registers them on its app. Both read a tick store and
never write to it: ``--db`` is an SQLite file (opened ``mode=ro``) or a ``postgresql://`` /
``postgres://`` URL (read-only transactions); see :func:`strategylab.market.open_tick_reader`.
``--postgres URL`` names a PostgreSQL store explicitly (it and ``--db`` exclude each other), with
``--pg-table``/``--pg-schema`` for a store whose table is not ``ticks`` on the search_path; its
ticks are read as numpy columns (:func:`strategylab.research.run_backtest`), and ``optimize``
reads them once for all its workers (:func:`strategylab.research.shared_backtest_read`).

Bad input (an unknown strategy, a malformed ``--param``, a number that is not finite or out of
range, an empty ``--db`` or a URL that is not ``postgresql://``, a symbol with no ticks, an empty
range, an output path in a missing directory, with the wrong suffix, or that exists without
``--overwrite``) is a usage error: one line on stderr naming the flag and value, exit status 2,
no traceback. A store that cannot be opened or used (missing, empty, not SQLite, damaged, not a
tick store, a server that cannot be reached), or an output file that cannot be written, is an
operational failure: exit 1. An optimisation in which every run failed exits 1; a cancelled one
(Ctrl-C) prints what finished and exits 130.

Several symbols: ``backtest --symbols A,B`` backtests each symbol on its own (a strategy trades
one symbol) and reports each: a column per symbol in the table, a JSON list with one object per
symbol in ``--symbols`` order (a list even for one symbol). Its output files are then one per
symbol, ``NAME.SYMBOL.SUFFIX`` beside the path given (``trades.csv`` -> ``trades.A.csv``); with
one symbol the path given is written as given. An output file that already exists is refused
before anything runs, unless ``--overwrite`` is given (then it is replaced atomically); a
symbolic link is always refused, so an output is never written through one. ``optimize``
searches parameters for exactly one symbol.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import typer

from strategylab._cli_options import (
    JsonOption,
    LogLevel,
    LogLevelOption,
    ParamOption,
    StrategyOption,
    SymbolsOption,
    _nonempty_text,
)
from strategylab._logging import escape
from strategylab._research_args import (
    UsageError,
    _check_costs,
    _check_metric,
    _check_parameters,
    _check_strategy,
    _check_timeout,
    _fmt_params,
    _one_symbol,
    _parameter_sets,
    _symbols,
    _validate_sets,
    parse_grid,
    parse_params,
    parse_ranges,
    parse_value,
)
from strategylab._research_output import (
    EquityOutOption,
    OutputError,
    PlotOption,
    TradesOutOption,
    _backtest_table,
    _notes,
    _plan_outputs,
    _report_json,
    _results_table,
    _sharpe_note,
    _summary_line,
    _write_outputs,
)
from strategylab._research_store import (
    PG_SCHEMA_HELP,
    PG_TABLE_HELP,
    StoreChoice,
    StoreError,
    _Range,
    _resolve_ranges,
    choose_store,
    open_store,
)
from strategylab.errors import ConfigurationError, StrategyLabError

# Only for annotations: `strategylab --help` imports this module to read the commands' options,
# and research pulls in numpy and the fault-tolerance stack. The commands import what they run.
if TYPE_CHECKING:
    from rich.console import Console

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
    "open_store",
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


_S = TypeVar("_S")


def _usage_exit(command: str, exc: UsageError) -> typer.Exit:
    typer.echo(f"strategylab {command}: {escape(str(exc))}", err=True)
    return typer.Exit(_EXIT_USAGE)


# -------------------------------------------------------------------------------------- options


_MAX_WORKERS: Final = 1_024


_MAX_SAMPLES: Final = 1_000_000


_MAX_SEED: Final = (1 << 64) - 1


StoreDbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="STORE",
        callback=_nonempty_text,
        help="The tick store: a SQLite file, or a postgresql:// URL (as --postgres) "
        f"[default: {DEFAULT_DB}].",
        show_default=False,
    ),
]
PostgresOption = Annotated[
    str | None,
    typer.Option(
        "--postgres",
        metavar="URL",
        help="A PostgreSQL tick store: postgresql://[USER@]HOST[:PORT]/DATABASE (not with --db).",
        show_default=False,
    ),
]
PgTableOption = Annotated[
    str | None,
    typer.Option("--pg-table", metavar="NAME", help=PG_TABLE_HELP, show_default=False),
]
PgSchemaOption = Annotated[
    str | None,
    typer.Option("--pg-schema", metavar="NAME", help=PG_SCHEMA_HELP, show_default=False),
]


FeeOption = Annotated[
    float,
    typer.Option(
        "--fee-bps", metavar="BPS", help="Fee, basis points of notional (0 <= BPS < 10000)."
    ),
]


SlippageOption = Annotated[
    float,
    typer.Option(
        "--slippage-bps",
        metavar="BPS",
        help="Slippage on market orders, basis points (0 <= BPS < 10000).",
    ),
]


FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="SEQ|TIME",
        help="First tick: a sequence number or an ISO-8601 time (UTC unless it says).",
        show_default=False,
    ),
]


ToOption = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="SEQ|TIME",
        help="Last tick: a sequence number (inclusive) or a time (exclusive).",
        show_default=False,
    ),
]


def _start_logging(level: LogLevel) -> None:
    from strategylab._logging import configure_logging  # noqa: PLC0415

    configure_logging(level.level, force=False)


def _operational_exit(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"strategylab {command}: {escape(str(exc))}", err=True)
    return typer.Exit(1)


# ------------------------------------------------------------------------------------- backtest


def backtest_command(  # noqa: PLR0917 - typer passes options positionally
    symbols: SymbolsOption,
    db: StoreDbOption = None,
    postgres: PostgresOption = None,
    pg_table: PgTableOption = None,
    pg_schema: PgSchemaOption = None,
    strategy: StrategyOption = "ma_crossover",
    param: ParamOption = None,
    fee_bps: FeeOption = 0.0,
    slippage_bps: SlippageOption = 0.0,
    start: FromOption = None,
    end: ToOption = None,
    vectorised: Annotated[
        bool, typer.Option("--vectorised", help="Use the numpy path (same trades, faster).")
    ] = False,
    trades_out: TradesOutOption = None,
    equity_out: EquityOutOption = None,
    plot: PlotOption = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace output files that exist (never through a symbolic link)."
        ),
    ] = False,
    log_level: LogLevelOption = LogLevel.WARNING,
    as_json: JsonOption = False,
) -> None:
    """Backtest one strategy over stored ticks; prints PnL, Sharpe, drawdown and trades.

    Several --symbols: each is backtested on its own (a column each; JSON: one object each) and
    its files are NAME.SYMBOL.SUFFIX. An output file that exists is refused unless --overwrite.
    The store is only read (an SQLite file opened read-only: SQLite may still update the -shm
    file, the WAL index, a shared-memory cache it rebuilds, of a database left with a WAL by a
    killed writer; the database and -wal bytes stay unchanged). An SQLite store's ticks are read
    through its columnar snapshot, the directory NAME.columnar beside it (Arrow files, created
    and brought up to date here, appending only new ticks); where that cannot be written (a
    read-only directory) the SQLite file is read instead, with the same result.

    A PostgreSQL store (--postgres URL, or --db URL) is read in read-only transactions, as numpy
    columns (no object per row).

    Exit status: 0 done; 1 the store cannot be opened or used (missing, empty, not SQLite,
    damaged, not a tick store, its server unreachable), an output cannot be written or the run
    failed; 2 a usage error (a bad option value, both --db and --postgres, a symbol with no ticks
    in the range).
    """
    from rich.console import Console  # noqa: PLC0415

    from strategylab.research import run_backtest, scoped_backtest_spec  # noqa: PLC0415

    _start_logging(log_level)
    try:
        store = _store(db, postgres, pg_table, pg_schema)
        names = _symbols(symbols)
        _check_costs(fee_bps, slippage_bps)
        _check_strategy(strategy, vectorised=vectorised)
        parameters = parse_params(param or [])
        for symbol in names:
            _check_parameters(strategy, symbol, parameters)
        plan = _plan_outputs(
            names,
            {"--trades-out": trades_out, "--equity-out": equity_out, "--plot": plot},
            overwrite=overwrite,
        )
        spans = _resolve_ranges(store, names, start, end)
        specs = [
            scoped_backtest_spec(
                _base_spec(
                    store=store,
                    strategy=strategy,
                    symbol=symbol,
                    span=spans[symbol],
                    fee_bps=fee_bps,
                    slippage_bps=slippage_bps,
                    vectorised=vectorised,
                ),
                parameters,
                1.0,
            )
            for symbol in names
        ]
    except UsageError as exc:
        raise _usage_exit("backtest", exc) from None
    except StoreError as exc:
        raise _operational_exit("backtest", exc) from None

    console = Console(stderr=as_json)
    results: list[BacktestResult] = []
    for spec in specs:
        with console.status(
            f"backtesting {strategy} on {spec.symbol} ({spans[spec.symbol].ticks:,} ticks, "
            f"{'vectorised' if vectorised else 'event-driven'})",
            spinner="dots",
        ):
            try:
                results.append(run_backtest(spec))
            except (StrategyLabError, FileNotFoundError) as exc:  # the store went away
                raise _operational_exit("backtest", exc) from None
    try:
        _write_outputs(plan, results, overwrite=overwrite)
    except OutputError as exc:
        raise _operational_exit("backtest", exc) from None
    if as_json:
        typer.echo(json.dumps([result.summary() for result in results]))
        return
    console.print(_backtest_table(results, vectorised=vectorised))


def _store(
    db: str | None, postgres: str | None, pg_table: str | None, pg_schema: str | None
) -> StoreChoice:
    return choose_store(
        db=db, postgres=postgres, pg_table=pg_table, pg_schema=pg_schema, default=str(DEFAULT_DB)
    )


def _base_spec(
    *,
    store: StoreChoice,
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
            db_path=store.store,
            pg_table=store.table,
            pg_schema=store.schema,
            strategy=strategy,
            symbol=symbol,
            from_seq=span.from_seq,
            to_seq=span.to_seq,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            vectorized=vectorised,
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc.as_option(_SPEC_FLAGS))) from None
    except ValueError as exc:
        raise UsageError(_flagged(str(exc))) from None


_SPEC_FLAGS: Final = {
    "fee_bps": "--fee-bps",
    "slippage_bps": "--slippage-bps",
    "from_seq": "--from",
    "to_seq": "--to",
    "start_ns": "--from",
    "end_ns": "--to",
}


def _flagged(message: str) -> str:
    """A spec's ``field=value: reason`` with the field spelled as the flag a user typed."""
    for field, flag in _SPEC_FLAGS.items():
        if message.startswith(f"{field}="):
            return f"{flag} {message.removeprefix(f'{field}=')}"
    return message


# ------------------------------------------------------------------------------------- optimize


def optimize_command(  # noqa: PLR0917 - typer passes options positionally
    symbols: SymbolsOption,
    db: StoreDbOption = None,
    postgres: PostgresOption = None,
    pg_table: PgTableOption = None,
    pg_schema: PgSchemaOption = None,
    strategy: StrategyOption = "ma_crossover",
    grid_items: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            metavar="NAME=V1,V2,...",
            help="Values of one parameter; repeat for each. The grid is every combination.",
            show_default=False,
        ),
    ] = None,
    random_n: Annotated[
        int | None,
        typer.Option(
            "--random",
            metavar="N",
            min=1,
            max=_MAX_SAMPLES,
            help="Random search: this many samples of --range.",
            show_default="grid search",
        ),
    ] = None,
    range_items: Annotated[
        list[str] | None,
        typer.Option(
            "--range",
            metavar="NAME=LOW:HIGH",
            help="The range of one parameter for --random; repeat for each.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            metavar="N",
            min=0,
            max=_MAX_SEED,
            help="Seed of this command's pseudo-random choices: which parameter sets "
            "--random draws.",
        ),
    ] = 0,
    param: ParamOption = None,
    metric: Annotated[
        str,
        typer.Option("--metric", metavar="NAME", help="Rank by pnl, sharpe or max_drawdown."),
    ] = "sharpe",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            max=_MAX_WORKERS,
            help="Worker processes.",
            show_default="one per CPU",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="Seconds per backtest before retrying on less data (> 0, at most a week).",
        ),
    ] = 300.0,
    fee_bps: FeeOption = 0.0,
    slippage_bps: SlippageOption = 0.0,
    start: FromOption = None,
    end: ToOption = None,
    vectorised: Annotated[
        bool, typer.Option("--vectorised/--event-driven", help="Backtest path.")
    ] = True,
    top: Annotated[
        int,
        typer.Option("--top", metavar="N", min=1, max=_MAX_SAMPLES, help="Rows to show."),
    ] = 20,
    log_level: LogLevelOption = LogLevel.WARNING,
    as_json: JsonOption = False,
) -> None:
    """Search strategy parameters over stored ticks in worker processes; ranks the results.

    One symbol (--symbols takes exactly one here). --param NAME=VALUE is held fixed in every run.
    The store is only read, as by backtest; its columnar snapshot is synced once, here, and every
    worker maps those same files (no run reads the store again). A PostgreSQL store's ticks are
    read once, here, into private temporary files that every worker maps, removed at the end.

    Exit status: 0 at least one run finished; 1 every run failed, the workers could not start or
    the store cannot be opened or used (missing, empty, not SQLite, damaged, not a tick store,
    its server unreachable); 2 a usage error; 130 interrupted (Ctrl-C), after printing what
    finished.
    """
    from rich.console import Console  # noqa: PLC0415

    from strategylab.research import WorkerStartError  # noqa: PLC0415

    _start_logging(log_level)
    try:
        store = _store(db, postgres, pg_table, pg_schema)
        symbol = _one_symbol(symbols)
        _check_costs(fee_bps, slippage_bps)
        _check_timeout(timeout)
        _check_strategy(strategy, vectorised=vectorised)
        _check_metric(metric)
        sets = _parameter_sets(grid_items or [], random_n, range_items or [], seed, param or [])
        valid, invalid = _validate_sets(strategy, symbol, sets)
        span = _resolve_ranges(store, [symbol], start, end)[symbol]
        base = _base_spec(
            store=store,
            strategy=strategy,
            symbol=symbol,
            span=span,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            vectorised=vectorised,
        )
    except UsageError as exc:
        raise _usage_exit("optimize", exc) from None
    except StoreError as exc:
        raise _operational_exit("optimize", exc) from None

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
            flag=store.flag,
        )
    except WorkerStartError as exc:
        typer.echo(f"strategylab optimize: {escape(str(exc))}", err=True)
        raise typer.Exit(1) from None
    except StoreError as exc:
        raise _operational_exit("optimize", exc) from None
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


def _run_optimizer(
    console: Console,
    base: BacktestSpec,
    sets: list[dict[str, ParamValue]],
    *,
    workers: int | None,
    timeout: float,
    title: str,
    flag: str = "--db",
) -> OptimizationReport:
    with contextlib.ExitStack() as stack:
        base = _shared(stack, base, flag)
        return _run_progress(console, base, sets, workers=workers, timeout=timeout, title=title)


def _shared(stack: contextlib.ExitStack, base: BacktestSpec, flag: str) -> BacktestSpec:
    """``base`` read once for every job (:func:`~strategylab.research.shared_backtest_read`),
    released when ``stack`` closes.

    SQLite: one sync of the columnar snapshot; a store that cannot be read there is reported by
    the jobs themselves, as before. PostgreSQL: the one read; a server that cannot be reached or
    a table that is not a tick store is a :class:`StoreError` (exit 1), before any worker starts.
    """
    from strategylab.market import (  # noqa: PLC0415
        StoreUnreachableError,
        StoreUnusableError,
        is_postgres_url,
    )
    from strategylab.research import shared_backtest_read  # noqa: PLC0415

    if is_postgres_url(base.db_path):
        try:
            return stack.enter_context(shared_backtest_read(base))
        except (StoreUnusableError, StoreUnreachableError) as exc:
            raise StoreError(f"{flag} {exc}") from None
    with contextlib.suppress(StrategyLabError, OSError):
        return stack.enter_context(shared_backtest_read(base))
    return base


def _run_progress(
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
