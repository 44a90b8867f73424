"""The data the research commands run on: the ``--db`` or ``--postgres`` store, read only, and the
stored range of each symbol inside ``--from``/``--to``.

A bad ``--db``/``--postgres``/``--pg-table``/``--pg-schema`` value or combination, or a symbol
without ticks in the range, is a :class:`UsageError` (exit 2); a store that cannot be opened or
used is a :class:`StoreError` (exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from strategylab._research_args import UsageError, _parse_bound
from strategylab.errors import StrategyLabError

# Only for annotations: `strategylab --help` must not import the store drivers.
if TYPE_CHECKING:
    from strategylab.market import TickBounds, TickReader, TickSpan

__all__ = [
    "PG_SCHEMA_HELP",
    "PG_TABLE_HELP",
    "StoreChoice",
    "StoreError",
    "choose_store",
    "open_store",
]

PG_TABLE_HELP: Final = (
    "A PostgreSQL store's tick table (its quarantine: TABLE_quarantine) [default: ticks]."
)
PG_SCHEMA_HELP: Final = (
    "A PostgreSQL store's schema [default: the URL's search_path, e.g. "
    "?options=-csearch_path%3DNAME, as the node's store]."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreChoice:
    """The tick store a command reads: the flag that named it (for messages), its name, and a
    PostgreSQL store's table and schema (None: the search_path)."""

    flag: str
    store: str
    table: str = "ticks"
    schema: str | None = None

    @property
    def postgres(self) -> bool:
        """True for a ``postgresql://`` store."""
        return self.store.startswith(("postgresql://", "postgres://"))


def choose_store(
    *,
    db: str | None,
    postgres: str | None,
    pg_table: str | None,
    pg_schema: str | None,
    db_flag: str = "--db",
    default: str | None = None,
) -> StoreChoice:
    """The store named by ``db`` (``db_flag``: an SQLite file or a URL) or ``postgres``
    (``--postgres``: a URL), with ``--pg-table``/``--pg-schema``.

    Raises :class:`UsageError` naming the flags: both ``db`` and ``postgres``; neither (without a
    ``default``); ``--postgres`` not a ``postgresql://`` URL; an empty table or schema, or either
    with an SQLite store.
    """
    from strategylab._cli_options import check_postgres_url  # noqa: PLC0415
    from strategylab.errors import ConfigurationError  # noqa: PLC0415

    if db is not None and postgres is not None:
        raise UsageError(
            f"{db_flag} and --postgres both name the tick store; give only one of them"
        )
    if postgres is not None:
        if not postgres.startswith(("postgresql://", "postgres://")):
            raise UsageError(
                "--postgres: must be a postgresql:// URL, e.g. "
                "postgresql://USER@HOST:5432/DATABASE (for SQLite use --db FILE)"
            )
        try:
            check_postgres_url("--postgres", postgres)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        flag, store = "--postgres", postgres
    elif db is not None:
        flag, store = db_flag, db
    elif default is not None:
        flag, store = db_flag, default
    else:
        raise UsageError(
            f"no tick store: give {db_flag} (an SQLite file or a postgresql:// URL) "
            "or --postgres URL"
        )
    for option, value in (("--pg-table", pg_table), ("--pg-schema", pg_schema)):
        if value is not None and not value.strip():
            raise UsageError(f"{option} {value!r}: must not be empty")
    choice = StoreChoice(flag=flag, store=store, table=pg_table or "ticks", schema=pg_schema)
    if not choice.postgres and (pg_table is not None or pg_schema is not None):
        option = "--pg-table" if pg_table is not None else "--pg-schema"
        raise UsageError(
            f"{option}: only a PostgreSQL store has a table to choose ({flag} {store!r} is an "
            "SQLite file; use --postgres URL)"
        )
    return choice


@dataclass(frozen=True, slots=True, kw_only=True)
class _Range:
    from_seq: int
    to_seq: int
    ticks: int


class StoreError(StrategyLabError):
    """The ``--db`` store cannot be opened or used (missing, empty, not SQLite, damaged, not a
    tick store, its server unreachable): an operational failure (exit 1), one line."""


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


def open_store(
    flag: str, db: str, *, table: str = "ticks", schema: str | None = None
) -> TickReader:
    """A reader of the store ``db`` (not yet open), for the command-line option ``flag``; a
    PostgreSQL store's ``table`` in ``schema`` (None: the search_path).

    Raises :class:`UsageError` naming ``flag`` for a value that cannot name a store: empty, or a
    URL whose scheme is not ``postgresql``/``postgres``. Opening it is the caller's business.
    """
    from strategylab.market import StoreUnusableError, open_tick_reader  # noqa: PLC0415

    if not db.strip():
        raise UsageError(f"{flag} {db!r}: must not be empty (a SQLite file or a postgresql:// URL)")
    try:
        return open_tick_reader(db, verify=False, table=table, schema=schema)
    except StoreUnusableError as exc:
        raise UsageError(f"{flag} {exc}") from None
    except ValueError as exc:
        raise UsageError(f"{flag} {db!r}: {exc}") from None


def _resolve_ranges(
    db: str | StoreChoice, symbols: Sequence[str], start: str | None, end: str | None
) -> dict[str, _Range]:
    """The stored sequence range of each symbol inside ``--from``/``--to``, in the store ``db``
    (an SQLite file or URL given as ``--db``, or a :class:`StoreChoice`).

    Raises :class:`UsageError` (a bad ``--db`` value, ``--from``/``--to``; a symbol without
    ticks there) or :class:`StoreError` (a store that cannot be opened or read).
    """
    import asyncio  # noqa: PLC0415

    choice = db if isinstance(db, StoreChoice) else StoreChoice(flag="--db", store=db)
    bounds = _bounds(start, end)
    reader = open_store(choice.flag, choice.store, table=choice.table, schema=choice.schema)
    shown = repr(reader.name)
    if (
        not choice.postgres
        and not Path(choice.store).exists()
        and not Path(choice.store).is_symlink()
    ):
        raise StoreError(
            f"{choice.flag} {shown}: no such database (run `strategylab demo` to create one)"
        )
    stored, spans = asyncio.run(_aresolve(reader, symbols, bounds, choice.flag))
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
    reader: TickReader, symbols: Sequence[str], bounds: TickBounds, flag: str = "--db"
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
        raise StoreError(f"{flag} {shown}: {_detail(exc, reader.name)}") from None
    except StoreCorruptedError as exc:
        raise StoreError(f"{flag} {shown}: not a readable tick database ({exc.reason})") from None
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
