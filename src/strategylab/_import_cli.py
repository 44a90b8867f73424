"""``strategylab import``: the user's own quotes, trades or bars (CSV or Parquet) into a tick store.

A plain typer command function; ``cli.py`` registers it. The work is
:func:`strategylab.research.import_ticks` (imported when the command runs: ``--help`` stays fast);
this module maps options to its arguments, draws the progress bar (rich, on stderr, only on a
terminal) and turns its errors into exit statuses:

* 2, a usage error, nothing written: a bad option value, a missing FILE, a file that is not CSV
  or Parquet, a column mapping that does not fit, a bad row (a missing value, NaN, text that is
  not a number or a time, a price <= 0, bid > ask, a time out of order, rows that overlap the
  stored ticks with other data), a --db that exists but is not a tick store;
* 1, an operational failure: the store cannot be opened or written (damaged, a full disk,
  another writer), the file changed between the check and the write; the message says which
  ticks were kept (re-running the same import continues after them);
* 0: imported (or nothing new: a re-run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Self

import typer

from strategylab._cli_options import (
    JsonOption,
    LogLevel,
    LogLevelOption,
    nonempty_path,
    symbols_callback,
)
from strategylab._logging import escape

if TYPE_CHECKING:
    from strategylab.research import ColumnMap, ImportProgress, ImportReport

__all__ = ["import_command", "parse_duration"]

_PROG: Final = "strategylab import"
_INTERRUPTED: Final = 130
"""Exit status after Ctrl-C / SIGINT (128 + SIGINT, as a shell reports it)."""
_FLAGS: Final = {
    "ts_unit": "--ts-unit",
    "ts": "--ts-col",
    "kind": "--kind",
    "bid_size": "--bid-size-col",
    "ask_size": "--ask-size-col",
    "bid": "--bid-col",
    "ask": "--ask-col",
    "price": "--price-col",
    "size": "--size-col",
    "open": "--open-col",
    "high": "--high-col",
    "low": "--low-col",
    "close": "--close-col",
    "volume": "--volume-col",
    "tz": "--tz",
    "half_spread": "--half-spread",
    "bar_offset_ns": "--bar-offset",
    "format": "--format",
    "delimiter": "--delimiter",
}
_DURATION: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ns|us|ms|s|min|m|h|d)?\s*")
_DURATION_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}


def parse_duration(text: str, flag: str = "--bar-offset") -> int:
    """``text`` (``0``, ``90s``, ``15min``, ``1h``, ``1d``; a bare number is seconds) as ns.

    Raises ``ValueError`` naming ``flag``.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{flag} {text!r}: expected a duration such as 0, 90s, 15min, 1h or 1d")
    number, unit = match.groups()
    value = round(float(number) * _DURATION_NS[unit or "s"])
    if value >= 1 << 63:
        raise ValueError(f"{flag} {text!r}: too long")
    return value


def _flagged(message: str) -> str:
    """A library message with ``columns.X`` / ``X=`` spelled as the command's flag."""
    for key, flag in _FLAGS.items():
        message = message.replace(f"columns.{key}", flag)
        if message.startswith(f"{key}="):
            message = f"{flag} {message.removeprefix(f'{key}=')}"
    return message


def _exit(code: int, message: str) -> typer.Exit:
    typer.echo(f"{_PROG}: {escape(_flagged(message))}", err=True)
    return typer.Exit(code)


def import_command(  # noqa: PLR0917 - typer passes options positionally
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            parser=nonempty_path("FILE"),
            help="A CSV or Parquet file of quotes, trades or OHLC bars.",
        ),
    ],
    db: Annotated[
        Path,
        typer.Option(
            "--db",
            metavar="PATH",
            parser=nonempty_path("--db"),
            help="The SQLite tick store to write: an existing tick store, or a new file "
            "(created). Any other file is refused.",
        ),
    ],
    symbol: Annotated[
        str,
        typer.Option(
            "--symbol",
            metavar="SYM",
            callback=symbols_callback,
            help="The symbol the rows are ticks of (one).",
        ),
    ],
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format", metavar="csv|parquet", help="Default: by the suffix (.csv, .parquet, .pq)."
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="auto|quotes|trades|bars",
            help="What the rows are; auto decides from the columns mapped or present.",
        ),
    ] = "auto",
    ts_col: Annotated[
        str | None,
        typer.Option(
            "--ts-col",
            metavar="NAME",
            help="The time column (default: ts, timestamp, time, datetime, date, or a pandas "
            "index).",
            show_default=False,
        ),
    ] = None,
    ts_unit: Annotated[
        str | None,
        typer.Option(
            "--ts-unit",
            metavar="s|ms|us|ns",
            help="Times are numbers since the epoch in this unit (UTC).",
            show_default=False,
        ),
    ] = None,
    tz: Annotated[
        str,
        typer.Option(
            "--tz", metavar="ZONE", help="The zone of times written without one (IANA name)."
        ),
    ] = "UTC",
    bid_col: Annotated[str | None, typer.Option("--bid-col", metavar="NAME")] = None,
    ask_col: Annotated[str | None, typer.Option("--ask-col", metavar="NAME")] = None,
    bid_size_col: Annotated[str | None, typer.Option("--bid-size-col", metavar="NAME")] = None,
    ask_size_col: Annotated[str | None, typer.Option("--ask-size-col", metavar="NAME")] = None,
    price_col: Annotated[
        str | None, typer.Option("--price-col", metavar="NAME", help="Trades: the price.")
    ] = None,
    size_col: Annotated[
        str | None, typer.Option("--size-col", metavar="NAME", help="Trades: the size.")
    ] = None,
    open_col: Annotated[str | None, typer.Option("--open-col", metavar="NAME")] = None,
    high_col: Annotated[str | None, typer.Option("--high-col", metavar="NAME")] = None,
    low_col: Annotated[str | None, typer.Option("--low-col", metavar="NAME")] = None,
    close_col: Annotated[
        str | None,
        typer.Option("--close-col", metavar="NAME", help="Bars: the close (the quote's mid)."),
    ] = None,
    volume_col: Annotated[
        str | None,
        typer.Option("--volume-col", metavar="NAME", help="Bars: the volume (the quote's sizes)."),
    ] = None,
    half_spread: Annotated[
        float,
        typer.Option(
            "--half-spread",
            metavar="PRICE",
            help="Trades and bars: bid = price - PRICE, ask = price + PRICE.",
        ),
    ] = 0.0,
    bar_offset: Annotated[
        str,
        typer.Option(
            "--bar-offset",
            metavar="DURATION",
            help="Added to a bar's time (e.g. 1d for daily bars stamped at their open).",
        ),
    ] = "0",
    delimiter: Annotated[
        str, typer.Option("--delimiter", metavar="CHAR", help="CSV: the field separator.")
    ] = ",",
    log_level: LogLevelOption = LogLevel.WARNING,
    as_json: JsonOption = False,
) -> None:
    """Import quotes, trades or OHLC bars from a CSV or Parquet file into a tick store.

    The file is checked whole before anything is written, then written in batches with a
    progress bar; the store's columnar snapshot is brought up to date after. Bars become one
    quote per bar at the bar's time (+ --bar-offset) with mid = close (docs/import.md).
    Re-running an import writes nothing; a later file for the same symbol is appended.

    Exit status: 0 imported; 1 the store cannot be written (the message says which ticks were
    kept); 2 a usage error or a bad row (file, row and column named; nothing written); 130
    interrupted (Ctrl-C: the message says which ticks were kept).
    """
    from strategylab._logging import configure_logging  # noqa: PLC0415

    configure_logging(log_level.level, force=False)
    if "," in symbol:
        raise _exit(2, f"--symbol {symbol!r}: one symbol per import")
    try:
        columns = _column_map(
            kind=kind,
            ts_unit=ts_unit,
            tz=tz,
            half_spread=half_spread,
            bar_offset=bar_offset,
            names={
                "ts": ts_col,
                "bid": bid_col,
                "ask": ask_col,
                "bid_size": bid_size_col,
                "ask_size": ask_size_col,
                "price": price_col,
                "size": size_col,
                "open": open_col,
                "high": high_col,
                "low": low_col,
                "close": close_col,
                "volume": volume_col,
            },
        )
        if file_format is not None and file_format not in {"csv", "parquet"}:
            raise _exit(2, f"--format {file_format!r}: expected csv or parquet")
    except ValueError as exc:
        raise _exit(2, str(exc)) from None
    report = _run(
        file, db=db, symbol=symbol.strip(), columns=columns, fmt=file_format, delimiter=delimiter
    )
    if as_json:
        typer.echo(json.dumps(_report_dict(report)))
    else:
        typer.echo(_summary(report))
    if report.columnar is not None:
        typer.echo(
            f"{_PROG}: warning: the columnar snapshot is not up to date ({report.columnar}); "
            "backtests read SQLite until it is",
            err=True,
        )


def _column_map(
    *,
    kind: str,
    ts_unit: str | None,
    tz: str,
    half_spread: float,
    bar_offset: str,
    names: dict[str, str | None],
) -> ColumnMap:
    """The options as a :class:`~strategylab.research.ColumnMap`; ``ValueError`` naming one."""
    from strategylab.research import ColumnMap  # noqa: PLC0415

    if ts_unit is not None and ts_unit not in {"s", "ms", "us", "ns"}:
        raise ValueError(f"--ts-unit {ts_unit!r}: expected s, ms, us or ns")
    return ColumnMap(
        kind=kind,  # type: ignore[arg-type] # checked by ColumnMap
        ts_unit=ts_unit,  # type: ignore[arg-type] # checked above
        tz=tz,
        half_spread=half_spread,
        bar_offset_ns=parse_duration(bar_offset),
        **names,
    )


def _run(
    file: Path, *, db: Path, symbol: str, columns: ColumnMap, fmt: str | None, delimiter: str
) -> ImportReport:
    """``import_ticks`` with the progress bar; its errors as exit statuses (module docstring)."""
    from rich.console import Console  # noqa: PLC0415

    from strategylab.market import StoreCorruptedError, StoreUnusableError  # noqa: PLC0415
    from strategylab.research import ImportFailedError, TickDataError, import_ticks  # noqa: PLC0415

    with _Progress(Console(stderr=True), file, symbol) as show:
        try:
            return import_ticks(
                file,
                db_path=db,
                symbol=symbol,
                columns=columns,
                file_format=fmt,  # type: ignore[arg-type] # checked by the command
                delimiter=delimiter,
                progress=show,
            )
        except TickDataError as exc:
            raise _exit(2, f"{exc}; nothing was written") from None
        except StoreUnusableError as exc:
            raise _exit(2, f"--db {exc}; nothing was written") from None
        except FileNotFoundError as exc:
            raise _exit(2, f"FILE {exc}") from None
        except ValueError as exc:
            raise _exit(2, str(exc)) from None
        except ImportFailedError as exc:
            raise _exit(_INTERRUPTED if exc.interrupted else 1, str(exc)) from None
        except StoreCorruptedError as exc:
            raise _exit(1, str(exc)) from None
        except KeyboardInterrupt:
            # Before the write pass (checking) or after it (the snapshot): nothing half-written.
            raise _exit(_INTERRUPTED, "interrupted; no tick was written by this run") from None
        except OSError as exc:
            raise _exit(1, f"{file}: cannot be read: {exc}") from None


def _report_dict(report: ImportReport) -> dict[str, object]:
    from dataclasses import asdict  # noqa: PLC0415

    return asdict(report)


def _summary(report: ImportReport) -> str:
    what = {"bars": "bars", "trades": "trades", "quotes": "quotes"}[report.kind]
    line = (
        f"imported {report.rows:,} {what} of {report.symbol} from {report.source} into "
        f"{report.db_path}: {report.written:,} ticks written"
    )
    if report.written:
        line += f" (seq {report.first_seq}..{report.last_seq})"
    if report.already_stored:
        line += f", {report.already_stored:,} already stored"
    return escape(line)


class _Progress:
    """A rich progress bar on stderr for the check and write passes; off unless a terminal."""

    def __init__(self, console: object, file: Path, symbol: str) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        assert isinstance(console, Console)  # noqa: S101
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=False,
        )
        self._tasks: dict[str, object] = {}
        self._labels = {
            "check": f"checking {escape(file.name)}",
            "write": f"writing {escape(symbol)}",
        }

    def __enter__(self) -> Self:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def __call__(self, update: ImportProgress) -> None:
        from rich.progress import TaskID  # noqa: PLC0415

        task = self._tasks.get(update.phase)
        if task is None:
            task = self._tasks[update.phase] = self._bar.add_task(
                self._labels[update.phase], total=max(update.total, 1), amount=""
            )
        amount = (
            f"{update.done / 2**20:,.1f} / {update.total / 2**20:,.1f} MiB"
            if update.unit == "bytes"
            else f"{update.done:,} / {update.total:,} rows"
        )
        assert isinstance(task, int)  # noqa: S101
        self._bar.update(TaskID(task), completed=update.done, amount=amount)
