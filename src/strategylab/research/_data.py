"""Stored ticks as numpy column arrays, read in chunks: what backtests iterate over.

Building a :class:`~strategylab.market.Tick` per row only to take it apart again is the cost that
dominates a backtest's read, so for an SQLite file (a :class:`~strategylab.market.SQLiteTickReader`,
or a :class:`~strategylab.market.SQLiteTickStore` through a private read-only connection) the rows
go straight from the cursor into a structured array (``numpy.fromiter``). Any other store (a
PostgreSQL one) is read through its ``read`` method.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from strategylab._files import check_sqlite_readable, sqlite_uri
from strategylab.market import SQLiteTickReader, SQLiteTickStore, Tick, TickReader

__all__ = [
    "ROW_DTYPE",
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

Rows = npt.NDArray[np.void]


class TickSource(Protocol):
    """The part of a :class:`~strategylab.market.TickStore` a backtest reads from."""

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol."""
        ...

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` in sequence order, ``from_seq``..``to_seq`` inclusive."""
        ...


@dataclass(frozen=True, slots=True)
class TickArrays:
    """Ticks of one symbol in sequence order, as a structured array of :data:`ROW_DTYPE`."""

    symbol: str
    rows: Rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ts(self) -> npt.NDArray[np.int64]:
        """Exchange timestamps, ns."""
        return self.rows["ts"]

    @property
    def mid(self) -> npt.NDArray[np.float64]:
        """(bid + ask) / 2, computed exactly as the strategies compute it."""
        return (self.rows["bid"] + self.rows["ask"]) / 2  # type: ignore[no-any-return]

    def window(self, start_ns: int | None, end_ns: int | None) -> TickArrays:
        """Only the ticks with ``start_ns <= ts < end_ns`` (either bound may be None)."""
        if start_ns is None and end_ns is None:
            return self
        ts = self.rows["ts"]
        lo = 0 if start_ns is None else int(np.searchsorted(ts, start_ns, side="left"))
        hi = len(ts) if end_ns is None else int(np.searchsorted(ts, end_ns, side="left"))
        return TickArrays(self.symbol, self.rows[lo : max(lo, hi)])


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


def load_sqlite_arrays(
    path: str | Path, symbol: str, from_seq: int = 1, to_seq: int | None = None
) -> TickArrays:
    """Every stored tick of ``symbol`` in ``from_seq..to_seq`` from the SQLite file at ``path``."""
    conn = _open_readonly(Path(path))
    try:
        upper = to_seq if to_seq is not None else (1 << 63) - 1
        return TickArrays(symbol, _fetch(conn, symbol, from_seq, upper))
    finally:
        conn.close()


async def load_arrays(
    reader: TickReader, symbol: str, from_seq: int = 1, to_seq: int | None = None
) -> TickArrays:
    """Every stored tick of ``symbol`` in ``from_seq..to_seq`` from an open ``reader``."""
    chunks = ChunkReader(reader)
    try:
        return await chunks.read(symbol, from_seq, to_seq if to_seq is not None else (1 << 63) - 1)
    finally:
        chunks.close()


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
        if isinstance(store, SQLiteTickReader):
            self._rows = _rows_of(store)
        elif isinstance(store, SQLiteTickStore):
            self._conn = _open_readonly(store.path)

    async def read(self, symbol: str, from_seq: int, to_seq: int) -> TickArrays:
        """The stored ticks with ``from_seq <= seq <= to_seq``, in order."""
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
