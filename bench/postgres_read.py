"""Reading a PostgreSQL tick store for research: one symbol's ticks into numpy columns.

Run (after ``pip install -e .``)::

    python bench/postgres_read.py            # 1,000,000 ticks, best of 3 runs per case
    python bench/postgres_read.py --quick    # 200,000 ticks, one run per case (a few seconds)

Cases in one run, on the same table (a fresh schema on ``127.0.0.1:5432`` database ``test``,
dropped at the end), each ending with the six columns as numpy arrays:

* **Tick per row**: ``PostgresTickStore.read`` (a :class:`~strategylab.market.Tick` per row),
  then columns made from the ticks: what ``backtest --db postgresql://`` read before;
* **binary COPY**: ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` through psycopg, the bytes
  parsed with numpy (psycopg hands a ``COPY`` out one row per call);
* **array pages**: :func:`strategylab.research._pg_data.load_postgres_arrays`, what ``backtest``
  and ``optimize --postgres`` read now (six binary arrays a page of a million ticks);
* **SQLite**: the same ticks from an SQLite file (``load_research_arrays(columnar=False)``), for
  scale.

Goal: array pages at least 2x faster than a Tick per row. A missed goal is reported, not exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from strategylab.market import PostgresTickStore, SQLiteTickStore, Tick
from strategylab.research import load_research_arrays
from strategylab.research._data import COLUMNS, ROW_DTYPE
from strategylab.research._pg_data import load_postgres_arrays

ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
URL = "postgresql://postgres@127.0.0.1:5432/test"
SYMBOL = "AAA"
GOAL = 2.0
_WIRE = np.dtype(
    [("fields", ">i2")]
    + [(f, t) for name, kind in zip(COLUMNS, "iiffff", strict=True)
       for f, t in ((f"{name}_len", ">i4"), (name, ">i8" if kind == "i" else ">f8"))]
)  # fmt: skip


def _ticks(n: int) -> list[Tick]:
    return [
        Tick(SYMBOL, s, 1_700_000_000_000_000_000 + s * 1_000, 100 + math.sin(s), 101 + math.sin(s),
             1.0, 2.0)
        for s in range(1, n + 1)
    ]  # fmt: skip


def _tick_per_row(schema: str) -> dict[str, Any]:
    async def read() -> list[Tick]:
        store = PostgresTickStore(URL, schema=schema, read_only=True, pool_size=1)
        await store.open()
        try:
            return await store.read(SYMBOL)
        finally:
            await store.aclose()

    ticks = asyncio.run(read())
    rows = np.fromiter(
        ((t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size) for t in ticks),
        dtype=ROW_DTYPE,
        count=len(ticks),
    )
    return {name: rows[name] for name in COLUMNS}


def _binary_copy(schema: str) -> dict[str, Any]:
    query = sql.SQL(
        "COPY (SELECT seq, ts, bid, ask, bid_size, ask_size FROM {} WHERE symbol = {} "
        "ORDER BY seq) TO STDOUT (FORMAT BINARY)"
    ).format(sql.Identifier(schema, "ticks"), sql.Literal(SYMBOL))
    buf = bytearray()
    with psycopg.connect(URL) as conn, conn.cursor() as cur, cur.copy(query) as copy:
        for block in copy:
            buf += block
    header = 19 + int.from_bytes(buf[15:19], "big")
    rows = (len(buf) - header - 2) // _WIRE.itemsize
    wire = np.frombuffer(bytes(buf), dtype=_WIRE, count=rows, offset=header)
    return {name: wire[name].astype(ROW_DTYPE[name]) for name in COLUMNS}


def _sqlite(db: Path) -> dict[str, Any]:
    return load_research_arrays(db, SYMBOL, columnar=False)[0].columns()


def _best(runs: int, read: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    best, out = math.inf, {}
    for _ in range(runs):
        started = time.perf_counter()
        out = read()
        best = min(best, time.perf_counter() - started)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PostgreSQL research reads.")
    parser.add_argument("--quick", action="store_true", help="200,000 ticks, one run per case")
    parser.add_argument("--ticks", type=int, default=None, help="ticks to read")
    args = parser.parse_args(argv)
    n = args.ticks or (200_000 if args.quick else 1_000_000)
    runs = 1 if args.quick else 3
    schema = f"bench_pgread_{uuid.uuid4().hex[:10]}"
    ticks = _ticks(n)

    async def write(db: Path) -> None:
        pg = PostgresTickStore(ADMIN, schema=schema)
        lite = SQLiteTickStore(db)
        await pg.open()
        await lite.open()
        try:
            for i in range(0, n, 50_000):
                await pg.write(ticks[i : i + 50_000])
                await lite.write(ticks[i : i + 50_000])
        finally:
            await pg.aclose()
            await lite.aclose()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ticks.db"
        try:
            asyncio.run(write(db))
            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "ticks")))
            cases: dict[str, Callable[[], dict[str, Any]]] = {
                "Tick per row": lambda: _tick_per_row(schema),
                "binary COPY": lambda: _binary_copy(schema),
                "array pages": lambda: load_postgres_arrays(URL, SYMBOL, schema=schema).columns(),
                "SQLite": lambda: _sqlite(db),
            }
            results = {name: _best(runs, read) for name, read in cases.items()}
        finally:
            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
    reference = results["SQLite"][1]
    print(f"{n:,} ticks of one symbol into six numpy columns, best of {runs}:")
    for name, (seconds, columns) in results.items():
        same = all(np.array_equal(columns[c], reference[c]) for c in COLUMNS)
        print(f"  {name:<13} {seconds:7.3f} s  {n / seconds:>12,.0f} ticks/s  same: {same}")
        if not same:
            print(f"  {name}: the columns differ from SQLite's")
            return 1
    ratio = results["Tick per row"][0] / results["array pages"][0]
    copy = results["binary COPY"][0] / results["array pages"][0]
    print(f"array pages vs Tick per row: {ratio:.2f}x faster (goal >= {GOAL:.1f}x)")
    print(f"array pages vs binary COPY:  {copy:.2f}x faster")
    if ratio < GOAL:
        print(f"GOAL MISSED: {ratio:.2f}x < {GOAL:.1f}x (on a busy machine the server shares it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
