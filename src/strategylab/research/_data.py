"""Stored ticks as numpy column arrays, read in chunks: what backtests iterate over.

Building a :class:`~strategylab.market.Tick` per row only to take it apart again is the cost that
dominates a backtest's read, so for an SQLite file (a :class:`~strategylab.market.SQLiteTickReader`,
or a :class:`~strategylab.market.SQLiteTickStore` through a private read-only connection) the rows
go straight from the cursor into a structured array (``numpy.fromiter``). Any other store (a
PostgreSQL one) is read through its ``read`` method.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, Self

import numpy as np
import numpy.typing as npt

from strategylab._files import check_sqlite_readable, sqlite_uri
from strategylab.market import (
    SQLiteTickReader,
    SQLiteTickStore,
    StoreUnusableError,
    Tick,
    TickBounds,
    TickReader,
)

__all__ = [
    "COLUMNS",
    "ROW_DTYPE",
    "ArraySource",
    "StoreChangedError",
    "StoreRows",
    "TickArrays",
    "TickSource",
    "load_arrays",
    "load_sqlite_arrays",
    "read_chunk",
]

ROW_DTYPE: Final = np.dtype(
    [
        ("seq", np.int64),
        ("ts", np.int64),
        ("bid", np.float64),
        ("ask", np.float64),
        ("bid_size", np.float64),
        ("ask_size", np.float64),
    ]
)
"""One stored tick without its symbol (a chunk is always of one symbol)."""

_SELECT: Final = (
    "SELECT seq, ts, bid, ask, bid_size, ask_size FROM ticks "
    "WHERE symbol = ? AND seq BETWEEN ? AND ? ORDER BY seq"
)

MAX_SEQ: Final = (1 << 63) - 1

Rows = npt.NDArray[np.void]


class TickSource(Protocol):
    """The part of a :class:`~strategylab.market.TickStore` a backtest reads from."""

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol."""
        ...

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` in sequence order, ``from_seq``..``to_seq`` inclusive."""
        ...


COLUMNS: Final = ("seq", "ts", "bid", "ask", "bid_size", "ask_size")
"""The stored columns of a tick, in :data:`ROW_DTYPE` order."""


class TickArrays:
    """Ticks of one symbol in sequence order, as six equally long numpy columns.

    ``seq``/``ts`` are int64 (``ts`` in ns since the epoch), ``bid``/``ask``/``bid_size``/
    ``ask_size`` float64. Built from a structured array of :data:`ROW_DTYPE`
    (``TickArrays(symbol, rows)``) or from columns (``TickArrays(symbol, columns={...})``, as the
    columnar snapshot hands them out: views of a memory-mapped file, never copied). ``rows`` gives
    the structured array back (built on first use).
    """

    __slots__ = ("_rows", "ask", "ask_size", "bid", "bid_size", "seq", "symbol", "ts")

    def __init__(
        self,
        symbol: str,
        rows: Rows | None = None,
        *,
        columns: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        if (rows is None) == (columns is None):
            raise TypeError("TickArrays needs either rows or columns")
        self.symbol = symbol
        self._rows = rows
        source: Mapping[str, npt.NDArray[Any]] = columns if columns is not None else rows  # type: ignore[assignment]
        if columns is not None:
            missing = [c for c in COLUMNS if c not in columns]
            if missing:
                raise ValueError(f"columns: missing {missing}")
            lengths = {len(columns[c]) for c in COLUMNS}
            if len(lengths) > 1:
                raise ValueError(f"columns: unequal lengths {sorted(lengths)}")
        self.seq: npt.NDArray[np.int64] = source["seq"]
        self.ts: npt.NDArray[np.int64] = source["ts"]
        self.bid: npt.NDArray[np.float64] = source["bid"]
        self.ask: npt.NDArray[np.float64] = source["ask"]
        self.bid_size: npt.NDArray[np.float64] = source["bid_size"]
        self.ask_size: npt.NDArray[np.float64] = source["ask_size"]

    def __len__(self) -> int:
        return len(self.ts)

    def __repr__(self) -> str:
        return f"TickArrays(symbol={self.symbol!r}, ticks={len(self)})"

    @property
    def rows(self) -> Rows:
        """The ticks as a structured array of :data:`ROW_DTYPE` (a copy for columnar data)."""
        if self._rows is None:
            rows = np.empty(len(self), dtype=ROW_DTYPE)
            for name in COLUMNS:
                rows[name] = getattr(self, name)
            self._rows = rows
        return self._rows

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """The six columns by name (the arrays themselves, not copies)."""
        return {name: getattr(self, name) for name in COLUMNS}

    @property
    def mid(self) -> npt.NDArray[np.float64]:
        """(bid + ask) / 2, computed exactly as the strategies compute it."""
        return (self.bid + self.ask) / 2

    def slice(self, lo: int, hi: int) -> TickArrays:
        """Ticks ``lo:hi`` by position (views, no copy)."""
        if self._rows is not None:
            return TickArrays(self.symbol, self._rows[lo:hi])
        return TickArrays(
            self.symbol, columns={name: getattr(self, name)[lo:hi] for name in COLUMNS}
        )

    def seq_range(self, from_seq: int, to_seq: int | None) -> TickArrays:
        """Only the ticks with ``from_seq <= seq <= to_seq`` (``seq`` ascending)."""
        seq = self.seq
        if not len(seq) or (from_seq <= seq[0] and (to_seq is None or seq[-1] <= to_seq)):
            return self
        lo = int(np.searchsorted(seq, from_seq, side="left"))
        hi = len(seq) if to_seq is None else int(np.searchsorted(seq, to_seq, side="right"))
        return self.slice(lo, max(lo, hi))

    def window(self, start_ns: int | None, end_ns: int | None) -> TickArrays:
        """Only the ticks with ``start_ns <= ts < end_ns`` (either bound may be None)."""
        if start_ns is None and end_ns is None:
            return self
        ts = self.ts
        lo = 0 if start_ns is None else int(np.searchsorted(ts, start_ns, side="left"))
        hi = len(ts) if end_ns is None else int(np.searchsorted(ts, end_ns, side="left"))
        return self.slice(lo, max(lo, hi))


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tick database")
    check_sqlite_readable(path)  # a FIFO, or a planted -wal/-shm symlink: UnsafePathError
    # A quoted URI: "#", "?" and "%" in the file name are part of the name (never a fragment,
    # a query or an escape that would open another file, or this one read-write).
    return sqlite3.connect(sqlite_uri(path, "ro"), uri=True, check_same_thread=False)


def _fetch(conn: sqlite3.Connection, symbol: str, from_seq: int, to_seq: int) -> Rows:
    cursor = conn.execute(_SELECT, (symbol, from_seq, to_seq))
    return np.fromiter(cursor, dtype=ROW_DTYPE)


class StoreChangedError(Exception):
    """The SQLite file changed while it was read as immutable (a writer started): read again."""


class StoreRows:
    """Blocking reads of an SQLite tick file for the columnar snapshot and the fallback read.

    Through :class:`~strategylab.market.SQLiteTickReader` (``verify=False``), so a WAL database
    that no connection has open is read ``immutable`` and gets no ``-wal``/``-shm`` beside it;
    :meth:`verify` then says whether the file stayed the same while it was read. Not for use
    inside a running event loop (it runs the reader's async queries with ``asyncio.run``).
    Raises ``FileNotFoundError`` for a missing file and the reader's
    :class:`~strategylab.market.StoreUnusableError` for one that is not a tick store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such tick database")
        check_sqlite_readable(self.path)
        self._reader = SQLiteTickReader(self.path, verify=False)
        self._reader.open_sync()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._reader.close()

    def fetch(self, symbol: str, from_seq: int, to_seq: int, limit: int | None = None) -> Rows:
        """``symbol``'s rows with ``from_seq <= seq <= to_seq`` in order (at most ``limit``)."""
        rows = self._reader.iter_rows(symbol, from_seq, to_seq)
        if limit is not None:
            return np.fromiter(itertools.islice(rows, limit), dtype=ROW_DTYPE)
        return np.fromiter(rows, dtype=ROW_DTYPE)

    def count(self, symbol: str, from_seq: int, to_seq: int) -> int:
        """How many rows of ``symbol`` have ``from_seq <= seq <= to_seq``."""
        bounds = TickBounds(from_seq=from_seq, to_seq=to_seq)
        return asyncio.run(self._reader.span(symbol, bounds)).count

    def symbols(self) -> list[str]:
        """Every symbol with stored ticks, sorted."""
        return asyncio.run(self._reader.symbols())

    def verify(self) -> None:
        """Raise :class:`StoreChangedError` if the file changed during an immutable read."""
        try:
            self._reader.verify_unchanged()
        except StoreUnusableError as exc:
            raise StoreChangedError(str(exc)) from None


def load_sqlite_arrays(
    path: str | Path, symbol: str, from_seq: int = 1, to_seq: int | None = None
) -> TickArrays:
    """Every stored tick of ``symbol`` in ``from_seq..to_seq`` from the SQLite file at ``path``.

    Read through :class:`StoreRows` (no ``-wal``/``-shm`` left beside a closed WAL database).
    Raises ``FileNotFoundError`` for a missing file.
    """
    upper = to_seq if to_seq is not None else MAX_SEQ
    try:
        return _fetch_verified(path, symbol, from_seq, upper)
    except StoreChangedError:  # a writer started meanwhile: read again, through its WAL
        return _fetch_verified(path, symbol, from_seq, upper)


def _fetch_verified(path: str | Path, symbol: str, from_seq: int, to_seq: int) -> TickArrays:
    with StoreRows(path) as store:
        rows = store.fetch(symbol, from_seq, to_seq)
        store.verify()
    return TickArrays(symbol, rows)


async def load_arrays(
    reader: TickReader, symbol: str, from_seq: int = 1, to_seq: int | None = None
) -> TickArrays:
    """Every stored tick of ``symbol`` in ``from_seq..to_seq`` from an open ``reader``."""
    chunks = ChunkReader(reader)
    try:
        return await chunks.read(symbol, from_seq, to_seq if to_seq is not None else (1 << 63) - 1)
    finally:
        chunks.close()


def concat_arrays(symbol: str, parts: Sequence[TickArrays]) -> TickArrays:
    """``parts`` one after another as one :class:`TickArrays` of ``symbol`` (copies)."""
    nonempty = [p for p in parts if len(p)]
    if len(nonempty) == 1:
        return nonempty[0]
    if not nonempty:
        return TickArrays(symbol, np.empty(0, dtype=ROW_DTYPE))
    return TickArrays(
        symbol,
        columns={name: np.concatenate([getattr(p, name) for p in nonempty]) for name in COLUMNS},
    )


class ArraySource:
    """Ticks already in memory (one :class:`TickArrays` per symbol) as a :class:`TickSource`.

    What :func:`~strategylab.research.run_backtest` gives the event-driven engine after reading
    the snapshot: chunks are then slices of the arrays (no copy, no thread hop).
    """

    def __init__(self, *arrays: TickArrays) -> None:
        self._arrays = {a.symbol: a for a in arrays}

    def arrays(self, symbol: str, from_seq: int, to_seq: int) -> TickArrays:
        """``symbol``'s ticks with ``from_seq <= seq <= to_seq`` (views)."""
        found = self._arrays.get(symbol)
        if found is None:
            return TickArrays(symbol, np.empty(0, dtype=ROW_DTYPE))
        return found.seq_range(from_seq, to_seq)

    async def last_seqs(self) -> dict[str, int]:
        """The highest seq held per symbol (symbols with ticks only)."""
        return {s: int(a.seq[-1]) for s, a in self._arrays.items() if len(a)}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """The ticks of ``symbol`` in ``from_seq..to_seq`` as :class:`Tick` objects."""
        part = self.arrays(symbol, from_seq, MAX_SEQ if to_seq is None else to_seq)
        columns = [getattr(part, name).tolist() for name in COLUMNS]
        return list(map(Tick, itertools.repeat(symbol, len(part)), *columns))


def _rows_of(reader: SQLiteTickReader) -> Callable[[str, int, int], Rows]:
    def fetch(symbol: str, from_seq: int, to_seq: int) -> Rows:
        return np.fromiter(reader.iter_rows(symbol, from_seq, to_seq), dtype=ROW_DTYPE)

    return fetch


class ChunkReader:
    """Reads ``symbol``'s ticks ``from_seq..to_seq`` of a store in chunks of seq numbers."""

    def __init__(self, store: TickSource) -> None:
        self._store = store
        self._conn: sqlite3.Connection | None = None
        self._rows: Callable[[str, int, int], Rows] | None = None
        self._memory = store if isinstance(store, ArraySource) else None
        if isinstance(store, SQLiteTickReader):
            self._rows = _rows_of(store)
        elif isinstance(store, SQLiteTickStore):
            self._conn = _open_readonly(store.path)

    async def read(self, symbol: str, from_seq: int, to_seq: int) -> TickArrays:
        """The stored ticks with ``from_seq <= seq <= to_seq``, in order."""
        if self._memory is not None:
            return self._memory.arrays(symbol, from_seq, to_seq)
        if self._rows is not None:
            rows = await asyncio.to_thread(self._rows, symbol, from_seq, to_seq)
            return TickArrays(symbol, rows)
        return await read_chunk(self._store, symbol, from_seq, to_seq, self._conn)

    def close(self) -> None:
        """Close the private read connection, if any."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


async def read_chunk(
    store: TickSource,
    symbol: str,
    from_seq: int,
    to_seq: int,
    conn: sqlite3.Connection | None = None,
) -> TickArrays:
    """``store``'s ticks of ``symbol`` with ``from_seq <= seq <= to_seq`` as arrays.

    With ``conn`` (a read connection to the store's SQLite file) the rows are fetched on a worker
    thread straight into an array; otherwise through ``store.read``.
    """
    if conn is not None:
        rows = await asyncio.to_thread(_fetch, conn, symbol, from_seq, to_seq)
        return TickArrays(symbol, rows)
    ticks = await store.read(symbol, from_seq, to_seq)
    rows = np.fromiter(
        ((t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size) for t in ticks),
        dtype=ROW_DTYPE,
        count=len(ticks),
    )
    return TickArrays(symbol, rows)
