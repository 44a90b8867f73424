"""Stored ticks of a PostgreSQL tick store as numpy columns, a million rows a query.

What a backtest and the optimiser's shared read use for a ``postgresql://`` store, instead of a
:class:`~strategylab.market.Tick` per row through
:meth:`~strategylab.market.PostgresTickStore.read`. Each query returns ONE row: the six columns of
up to :data:`CHUNK_ROWS` ticks as six binary arrays (``array_agg`` over the ticks in seq order,
keyset-paged by seq), which psycopg hands over as bytes (a raw loader for ``int8[]``/
``float8[]``) and numpy reads through a packed big-endian record type: no Python object per row
on either side. PostgreSQL's binary array format (``array_send``): ndim, a has-NULL flag and the
element type's oid (three int32), per dimension its size and lower bound (two int32), then per
element an int32 length and the value in network byte order. The columns are cast to ``int8``/
``float8`` in the query and are ``NOT NULL`` in the store's table; an array that is not a
one-dimensional, NULL-free array of that type is refused, not misread.

Why not binary ``COPY ... TO STDOUT``: libpq hands a ``COPY`` out one row per call, and psycopg
makes a Python step and a buffer object of each. Measured by ``bench/postgres_read.py`` (1,000,000
ticks of one symbol, best of 3, the server on the same 2 cores): these pages 0.62 s, a bare binary
``COPY`` parsed with numpy 0.69 s, ``PostgresTickStore.read`` plus columns 1.64 s (2.6x slower),
SQLite 1.15 s. The pages also bound the memory of a read to a page of raw bytes.

All the pages of one read run in one ``REPEATABLE READ`` read-only transaction (one snapshot:
a node writing meanwhile cannot make the pages disagree), in a session where
``default_transaction_read_only`` is on, so nothing is ever written. Errors name the store by
its URL without the password: :class:`~strategylab.market.StoreUnreachableError` for a server
that cannot be reached, :class:`~strategylab.market.StoreUnusableError` otherwise (no tick table,
a column of another type).

:func:`share_arrays` / :func:`load_shared_arrays` keep one read in a private directory of six
``.npy`` files (one per column) that every optimiser worker memory-maps: the page cache holds the
ticks once, however many workers read them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.adapt import Loader

from strategylab.market import (
    StoreUnreachableError,
    StoreUnusableError,
    open_tick_reader,
)

from ._data import COLUMNS, ROW_DTYPE, TickArrays

__all__ = [
    "CHUNK_ROWS",
    "load_postgres_arrays",
    "load_shared_arrays",
    "remove_shared",
    "share_arrays",
]

CHUNK_ROWS: Final = 1_000_000
"""Ticks per query: 72 MB of arrays, far under PostgreSQL's 1 GB limit on one value."""
_MAX_SEQ: Final = (1 << 63) - 1
_KEEPALIVE_S: Final = 10
"""TCP keepalives: a server that stops answering mid-read (a blackholed link) fails the read
within ~25 s (libpq's parameters) instead of hanging the backtest."""
_SHARED_MARK: Final = "strategylab-shared-ticks-"
_ARRAY_HEADER: Final = 20
"""ndim, has-NULL flag, element oid, then the one dimension's size and lower bound: 5 x int32."""
_VALUE_BYTES: Final = 8
"""An int8 or a float8."""
_ELEMENT_OIDS: Final = {"int8": 20, "float8": 701}
_TYPES: Final = ("int8", "int8", "float8", "float8", "float8", "float8")
"""The SQL type of each of :data:`~._data.COLUMNS`."""


class _RawArray(Loader):
    """A binary array as its bytes, untouched (numpy reads them; psycopg would make a list)."""

    format = psycopg.pq.Format.BINARY

    def load(self, data: Any) -> bytes:
        return bytes(data)


def _query(table: str, schema: str | None) -> sql.Composed:
    name = sql.Identifier(*((schema,) if schema else ()), table)
    casts = sql.SQL(", ").join(
        sql.SQL("{}::{} AS {}").format(sql.Identifier(c), sql.SQL(t), sql.Identifier(c))
        for c, t in zip(COLUMNS, _TYPES, strict=True)
    )
    aggregates = sql.SQL(", ").join(
        sql.SQL("array_agg({})").format(sql.Identifier(c)) for c in COLUMNS
    )
    # The aggregates consume the sorted subquery's rows in its order (checked after: seq must
    # come back strictly increasing), and all six in the same order as one another.
    return sql.SQL(
        "SELECT count(*), {} FROM (SELECT {} FROM {} WHERE symbol = %s AND seq BETWEEN %s AND %s "
        "ORDER BY seq LIMIT %s) AS page"
    ).format(aggregates, casts, name)


def _column(raw: bytes, sql_type: str, rows: int, shown: str) -> npt.NDArray[Any]:
    """One binary array of ``rows`` non-NULL ``sql_type`` values as a native numpy array."""
    head = np.frombuffer(raw, dtype=">i4", count=5) if len(raw) >= _ARRAY_HEADER else None
    element = np.dtype([("length", ">i4"), ("value", ">i8" if sql_type == "int8" else ">f8")])
    if (
        head is None
        or head.tolist()[:4] != [1, 0, _ELEMENT_OIDS[sql_type], rows]
        or len(raw) != _ARRAY_HEADER + rows * element.itemsize
    ):
        raise StoreUnusableError(
            f"{shown}: unexpected array from the server (not {rows} non-NULL {sql_type} values)"
        )
    wire = np.frombuffer(raw, dtype=element, offset=_ARRAY_HEADER)
    if not (wire["length"] == _VALUE_BYTES).all():
        raise StoreUnusableError(f"{shown}: unexpected array from the server (an element size)")
    return wire["value"].astype(np.int64 if sql_type == "int8" else np.float64)


def _translate(exc: psycopg.Error, shown: str) -> Exception:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return StoreUnusableError(f"{shown}: a PostgreSQL database, but not a tick store ({first})")
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnreachableError(f"{shown}: cannot reach the server: {first}")
    return StoreUnusableError(f"{shown}: {first}")


def load_postgres_arrays(
    url: str,
    symbol: str,
    from_seq: int = 1,
    to_seq: int | None = None,
    *,
    table: str = "ticks",
    schema: str | None = None,
    connect_timeout: float = 5.0,
    chunk_rows: int = CHUNK_ROWS,
) -> TickArrays:
    """Every stored tick of ``symbol`` with ``from_seq <= seq <= to_seq`` (None: to the last) in
    the PostgreSQL store at ``url`` (``table`` in ``schema``; None: the ``search_path``, as
    :func:`~strategylab.market.open_tick_reader`), in seq order, ``chunk_rows`` a query in one
    read-only snapshot (see the module docstring).

    Blocking. ``connect_timeout`` in seconds (libpq's, at least 1); a server silent mid-read is
    given up after ~25 s (TCP keepalives). Raises
    :class:`~strategylab.market.StoreUnreachableError` /
    :class:`~strategylab.market.StoreUnusableError` naming the URL without its password, and
    ``ValueError`` for ``chunk_rows < 1``.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows!r}: must be >= 1")
    shown = open_tick_reader(url, table=table, schema=schema).name
    upper = _MAX_SEQ if to_seq is None else to_seq
    query = _query(table, schema)
    parts: list[dict[str, npt.NDArray[Any]]] = []
    try:
        with psycopg.connect(
            url,
            connect_timeout=max(1, round(connect_timeout)),
            keepalives=1,
            keepalives_idle=_KEEPALIVE_S,
            keepalives_interval=_KEEPALIVE_S // 2,
            keepalives_count=3,
        ) as conn:
            conn.execute("SET default_transaction_read_only = on")
            conn.commit()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            for name in ("int8", "float8"):
                info = psycopg.adapters.types[name]
                conn.adapters.register_loader(info.array_oid, _RawArray)
            lo = from_seq
            while lo <= upper:
                row = conn.execute(query, (symbol, lo, upper, chunk_rows), binary=True).fetchone()
                if row is None or not row[0]:
                    break
                rows = int(row[0])
                parts.append(
                    {
                        name: _column(raw, sql_type, rows, shown)
                        for name, sql_type, raw in zip(COLUMNS, _TYPES, row[1:], strict=True)
                    }
                )
                if rows < chunk_rows:
                    break
                lo = int(parts[-1]["seq"].max()) + 1
            conn.rollback()
    except psycopg.Error as exc:
        raise _translate(exc, shown) from None
    columns = (
        {
            name: np.concatenate([p[name] for p in parts]) if len(parts) != 1 else parts[0][name]
            for name in COLUMNS
        }
        if parts
        else {name: np.empty(0, dtype=ROW_DTYPE[name]) for name in COLUMNS}
    )
    seq = columns["seq"]
    if len(seq) > 1 and not (seq[1:] > seq[:-1]).all():
        # The server handed the page out of order after all (an aggregate's input order is
        # the subquery's in practice, not by the standard): put the rows in seq order.
        order = np.argsort(seq, kind="stable")
        columns = {name: column[order] for name, column in columns.items()}
    return TickArrays(symbol, columns=columns)


# ------------------------------------------------------------------ one read, many workers


def share_arrays(ticks: TickArrays) -> Path:
    """Write ``ticks`` to a new private directory (0700, under the temporary directory) as one
    ``.npy`` file per column, for :func:`load_shared_arrays`; the caller removes it with
    :func:`remove_shared` when every reader is done."""
    directory = Path(tempfile.mkdtemp(prefix=_SHARED_MARK))
    try:
        for name in COLUMNS:
            np.save(directory / f"{name}.npy", np.ascontiguousarray(getattr(ticks, name)))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def load_shared_arrays(
    directory: str | os.PathLike[str], symbol: str, from_seq: int = 1, to_seq: int | None = None
) -> TickArrays:
    """The ticks :func:`share_arrays` wrote, memory-mapped read-only (no copy), limited to
    ``from_seq..to_seq``. Raises ``FileNotFoundError`` when the directory is gone."""
    path = Path(directory)
    columns: dict[str, npt.NDArray[Any]] = {
        name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in COLUMNS
    }
    return TickArrays(symbol, columns=columns).seq_range(from_seq, to_seq)


def remove_shared(directory: str | os.PathLike[str]) -> None:
    """Remove a directory :func:`share_arrays` made (and nothing else: its name is checked)."""
    path = Path(directory)
    if path.name.startswith(_SHARED_MARK):
        shutil.rmtree(path, ignore_errors=True)
