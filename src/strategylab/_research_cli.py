"""The research commands, ``strategylab backtest`` and ``strategylab optimize``.

Plain typer command functions; ``cli.py`` registers them on its app. Both read a tick store and
never write to it: ``--db`` is an SQLite file (opened ``mode=ro``) or a ``postgresql://`` /
``postgres://`` URL (read-only transactions); see :func:`strategylab.market.open_tick_reader`.

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

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import typer

from strategylab._cli_options import (
    DbOption,
    JsonOption,
    LogLevel,
    LogLevelOption,
    ParamOption,
    StrategyOption,
    SymbolsOption,
    split_symbols,
)
from strategylab._logging import escape
from strategylab._validate import shown
from strategylab.errors import ConfigurationError, StrategyLabError

# Only for annotations: `strategylab --help` imports this module to read the commands' options,
# and research pulls in numpy and the fault-tolerance stack. The commands import what they run.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from strategylab.market import TickBounds, TickReader, TickSpan
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
_FILE_SAFE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGITS: Final = re.compile(r"[0-9]+")
_MAX_INT: Final = (1 << 63) - 1
"""Sequence numbers, times (ns) and integer parameters are 64-bit signed integers."""
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_S = TypeVar("_S")


class UsageError(StrategyLabError):
    """Bad command-line input; the message names the offending value."""


# ------------------------------------------------------------------------------------ parsing


def parse_value(text: str) -> ParamValue:
    """``"20"`` → 20, ``"0.5"`` → 0.5, ``"true"`` → True, anything else stays a string.

    Raises :class:`UsageError` for a number that is not finite (``nan``, ``inf``) or an integer
    beyond 64 bits; the message quotes ``text`` (the callers put the flag in front).
    """
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        whole = int(text)
    except ValueError:
        pass
    else:
        if not -_MAX_INT - 1 <= whole <= _MAX_INT:
            raise UsageError(f"value {shown(text)}: must be a 64-bit integer (|value| < 2**63)")
        return whole
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    if not math.isfinite(value):
        raise UsageError(f"value {shown(text)}: must be finite")
    return value


def _value(option: str, item: str, text: str) -> ParamValue:
    """:func:`parse_value`, its error naming the flag and the item the user typed."""
    try:
        return parse_value(text)
    except UsageError as exc:
        raise UsageError(f"{option} {shown(item)}: {exc}") from None


def _split(item: str, option: str, example: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} {example}")
    return name.strip(), value.strip()


def parse_params(items: Sequence[str]) -> dict[str, ParamValue]:
    """``["fast=20", "slow=100"]`` → ``{"fast": 20, "slow": 100}``; :class:`UsageError` naming
    ``--param``."""
    out: dict[str, ParamValue] = {}
    for item in items:
        name, value = _split(item, "--param", "fast=20")
        if name in out:
            raise UsageError(f"--param {item!r}: {name!r} is given twice")
        out[name] = _value("--param", item, value)
    return out


def parse_grid(items: Sequence[str]) -> dict[str, list[ParamValue]]:
    """``["fast=5,10", "slow=50"]`` → ``{"fast": [5, 10], "slow": [50]}``; :class:`UsageError`
    naming ``--grid``."""
    out: dict[str, list[ParamValue]] = {}
    for item in items:
        name, values = _split(item, "--grid", "fast=5,10,20")
        parts = [v.strip() for v in values.split(",")]
        if any(not p for p in parts):
            raise UsageError(f"--grid {item!r}: empty value in the list")
        if name in out:
            raise UsageError(f"--grid {item!r}: {name!r} is given twice")
        out[name] = [_value("--grid", item, p) for p in parts]
    return out


def parse_ranges(items: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``["fast=5:50", "entry_z=1.0:3.0"]`` → ``{"fast": (5, 50), "entry_z": (1.0, 3.0)}``;
    :class:`UsageError` naming ``--range``."""
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, span = _split(item, "--range", "fast=5:50")
        low_text, sep, high_text = span.partition(":")
        low, high = _value("--range", item, low_text), _value("--range", item, high_text)
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
    """``--from``/``--to``: a sequence number (1..2**63-1), or an ISO-8601 time (UTC unless it
    says) between 1970 and 2262 (what a 64-bit count of ns since the epoch holds)."""
    stripped = text.strip()
    if _DIGITS.fullmatch(stripped):
        seq = int(stripped)
        if not 1 <= seq <= _MAX_INT:
            raise UsageError(
                f"{option} {shown(text)}: a sequence number must be within 1..{_MAX_INT}"
            )
        return "seq", seq
    try:
        moment = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise UsageError(
            f"{option} {shown(text)}: expected a sequence number or an ISO-8601 time "
            "(e.g. 2025-01-31T12:00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    # Exact integer arithmetic: a float timestamp would round away the microseconds.
    ns = (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1_000
    if not 0 <= ns <= _MAX_INT:
        raise UsageError(
            f"{option} {shown(text)}: a time must be between 1970-01-01 and "
            "2262-04-11T23:47:16Z (UTC; nanoseconds since the epoch in 64 bits)"
        )
    return "ts", ns


# -------------------------------------------------------------------------- the data to run on


@dataclass(frozen=True, slots=True, kw_only=True)
class _Range:
    from_seq: int
    to_seq: int
    ticks: int


class StoreError(StrategyLabError):
    """The ``--db`` store cannot be opened or used (missing, empty, not SQLite, damaged, not a
    tick store, its server unreachable): an operational failure (exit 1), one line."""


def _symbols(text: str) -> tuple[str, ...]:
    names = split_symbols(text)
    if not names:
        raise UsageError(
            f"--symbols {text!r}: expected one or more symbols, e.g. --symbols BTC-USD"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--symbols {text!r}: {twice[0]!r} is given twice")
    return names


def _one_symbol(text: str) -> str:
    names = _symbols(text)
    if len(names) != 1:
        raise UsageError(
            f"--symbols {text!r}: optimize searches one symbol at a time "
            f"(got {len(names)}); run it once per symbol"
        )
    return names[0]


def _bounds(start: str | None, end: str | None) -> TickBounds:
    """``--from``/``--to`` as a :class:`~strategylab.market.TickBounds`."""
    from strategylab.market import TickBounds  # noqa: PLC0415

    names = {("--from", "seq"): "from_seq", ("--from", "ts"): "start_ns"}
    names |= {("--to", "seq"): "to_seq", ("--to", "ts"): "end_ns"}
    bounds: dict[str, int] = {}
    for text, option in ((start, "--from"), (end, "--to")):
        if text is not None:
            kind, value = _parse_bound(text, option)
            bounds[names[option, kind]] = value
    return TickBounds(**bounds)


def open_store(flag: str, db: str) -> TickReader:
    """A reader of the store ``db`` (not yet open), for the command-line option ``flag``.

    Raises :class:`UsageError` naming ``flag`` for a value that cannot name a store: empty, or a
    URL whose scheme is not ``postgresql``/``postgres``. Opening it is the caller's business.
    """
    from strategylab.market import StoreUnusableError, open_tick_reader  # noqa: PLC0415

    if not db.strip():
        raise UsageError(f"{flag} {db!r}: must not be empty (a SQLite file or a postgresql:// URL)")
    try:
        return open_tick_reader(db, verify=False)
    except StoreUnusableError as exc:
        raise UsageError(f"{flag} {exc}") from None


def _resolve_ranges(
    db: str, symbols: Sequence[str], start: str | None, end: str | None
) -> dict[str, _Range]:
    """The stored sequence range of each symbol inside ``--from``/``--to``.

    Raises :class:`UsageError` (a bad ``--db`` value, ``--from``/``--to``; a symbol without
    ticks there) or :class:`StoreError` (a store that cannot be opened or read).
    """
    import asyncio  # noqa: PLC0415

    from strategylab.market import is_postgres_url  # noqa: PLC0415

    bounds = _bounds(start, end)
    reader = open_store("--db", db)
    shown = repr(reader.name)
    if not is_postgres_url(db) and not Path(db).exists() and not Path(db).is_symlink():
        raise StoreError(f"--db {shown}: no such database (run `strategylab demo` to create one)")
    stored, spans = asyncio.run(_aresolve(reader, symbols, bounds))
    ranges: dict[str, _Range] = {}
    for symbol in symbols:
        if symbol not in stored:
            known = ", ".join(stored) or "none"
            raise UsageError(f"--symbols {symbol!r}: no ticks in {shown} (symbols there: {known})")
        span = spans[symbol]
        if not span.count or span.first_seq is None or span.last_seq is None:
            raise UsageError(
                f"--symbols {symbol!r}: no ticks between --from {start!r} and --to {end!r}"
            )
        ranges[symbol] = _Range(from_seq=span.first_seq, to_seq=span.last_seq, ticks=span.count)
    return ranges


async def _aresolve(
    reader: TickReader, symbols: Sequence[str], bounds: TickBounds
) -> tuple[list[str], dict[str, TickSpan]]:
    from strategylab.market import (  # noqa: PLC0415
        StoreCorruptedError,
        StoreUnreachableError,
        StoreUnusableError,
    )

    shown = repr(reader.name)
    try:
        await reader.open()
        try:
            stored = await reader.symbols()
            spans = {symbol: await reader.span(symbol, bounds) for symbol in symbols}
        finally:
            await reader.aclose()
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise StoreError(f"--db {shown}: {_detail(exc, reader.name)}") from None
    except StoreCorruptedError as exc:
        raise StoreError(f"--db {shown}: not a readable tick database ({exc.reason})") from None
    return stored, spans


def _detail(exc: Exception, name: str) -> str:
    """``exc``'s message without the store's name in front (the caller puts ``--db NAME``).

    A PostgreSQL error starts with the URL as the driver shows it (host, port, user, database):
    that prefix goes too.
    """
    text = str(exc).removeprefix(f"{name}: ")
    if text.startswith(("postgresql://", "postgres://")):
        return text.partition(": ")[2] or text
    return text


# -------------------------------------------------------------------------------- output files

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


def _check_strategy(name: str, *, vectorised: bool) -> None:
    from strategylab.strategy import BUILTIN_STRATEGIES  # noqa: PLC0415

    if name not in BUILTIN_STRATEGIES and ":" not in name:
        raise UsageError(
            f"--strategy {name!r}: expected one of {', '.join(sorted(BUILTIN_STRATEGIES))} "
            "or module:Class"
        )
    if vectorised and name not in BUILTIN_STRATEGIES:
        raise UsageError(
            f"--strategy {name!r}: the vectorised path knows only the built-in strategies; "
            "use the event-driven one (backtest: drop --vectorised; optimize: --event-driven)"
        )


def _check_parameters(strategy: str, symbol: str, parameters: Mapping[str, ParamValue]) -> None:
    from strategylab.research import build_strategy  # noqa: PLC0415

    try:
        build_strategy(strategy, symbol, dict(parameters))
    except ValueError as exc:
        if ":" in strategy and str(exc).startswith(f"strategy={strategy!r}"):
            raise UsageError(f"--strategy {strategy!r}: {exc.args[0].partition(': ')[2]}") from None
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

_MAX_BPS: Final = 10_000
_MAX_TIMEOUT: Final = 7 * 86_400.0
_MAX_WORKERS: Final = 1_024
_MAX_SAMPLES: Final = 1_000_000
_MAX_SEED: Final = (1 << 64) - 1

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


def _check_costs(fee_bps: float, slippage_bps: float) -> None:
    """``--fee-bps``/``--slippage-bps``: finite, 0 <= x < 10000; :class:`UsageError` naming it."""
    for flag, value in (("--fee-bps", fee_bps), ("--slippage-bps", slippage_bps)):
        if not (math.isfinite(value) and 0 <= value < _MAX_BPS):
            raise UsageError(
                f"{flag} {shown(value)}: must be a finite number >= 0 and < {_MAX_BPS} "
                "(basis points)"
            )


def _check_timeout(timeout: float) -> None:
    if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT):
        raise UsageError(
            f"--timeout {shown(timeout)}: must be a finite number of seconds > 0 and "
            f"<= {_MAX_TIMEOUT:g} (a week)"
        )


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


def _start_logging(level: LogLevel) -> None:
    from strategylab._logging import configure_logging  # noqa: PLC0415

    configure_logging(level.level, force=False)


def _operational_exit(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"strategylab {command}: {escape(str(exc))}", err=True)
    return typer.Exit(1)


# ------------------------------------------------------------------------------------ backtest


def backtest_command(  # noqa: PLR0917 - typer passes options positionally
    symbols: SymbolsOption,
    db: DbOption = str(DEFAULT_DB),
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
    killed writer; the database and -wal bytes stay unchanged).

    Exit status: 0 done; 1 the store cannot be opened or used (missing, empty, not SQLite,
    damaged, not a tick store, its server unreachable), an output cannot be written or the run
    failed; 2 a usage error (a bad option value, a symbol with no ticks in the range).
    """
    from rich.console import Console  # noqa: PLC0415

    from strategylab.research import run_backtest, scoped_backtest_spec  # noqa: PLC0415

    _start_logging(log_level)
    try:
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
        spans = _resolve_ranges(db, names, start, end)
        specs = [
            scoped_backtest_spec(
                _base_spec(
                    db=db,
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


def _base_spec(
    *,
    db: str,
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
            db_path=db,
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


# ------------------------------------------------------------------------------------ optimize


def optimize_command(  # noqa: PLR0917 - typer passes options positionally
    symbols: SymbolsOption,
    db: DbOption = str(DEFAULT_DB),
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
    The store is only read, as by backtest.

    Exit status: 0 at least one run finished; 1 every run failed, the workers could not start or
    the store cannot be opened or used (missing, empty, not SQLite, damaged, not a tick store,
    its server unreachable); 2 a usage error; 130 interrupted (Ctrl-C), after printing what
    finished.
    """
    from rich.console import Console  # noqa: PLC0415

    from strategylab.research import WorkerStartError  # noqa: PLC0415

    _start_logging(log_level)
    try:
        symbol = _one_symbol(symbols)
        _check_costs(fee_bps, slippage_bps)
        _check_timeout(timeout)
        _check_strategy(strategy, vectorised=vectorised)
        _check_metric(metric)
        sets = _parameter_sets(grid_items or [], random_n, range_items or [], seed, param or [])
        valid, invalid = _validate_sets(strategy, symbol, sets)
        span = _resolve_ranges(db, [symbol], start, end)[symbol]
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
