"""The data the research commands run on: the ``--db`` store, read only, and the stored range of
each symbol inside ``--from``/``--to``.

A bad ``--db`` value or a symbol without ticks in the range is a :class:`UsageError` (exit 2); a
store that cannot be opened or used is a :class:`StoreError` (exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strategylab._research_args import UsageError, _parse_bound
from strategylab.errors import StrategyLabError

# Only for annotations: `strategylab --help` must not import the store drivers.
if TYPE_CHECKING:
    from strategylab.market import TickBounds, TickReader, TickSpan

__all__ = ["StoreError", "open_store"]


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
