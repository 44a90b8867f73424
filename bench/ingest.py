"""End-to-end ingest throughput: exchange process → feed → durable store, side by side.

Run (after ``pip install -e .``)::

    python bench/ingest.py            # 1,000,000 ticks per run, best of 3 runs per case
    python bench/ingest.py --quick    # 200,000 ticks, one run per case (about 30 s)
    python bench/ingest.py --no-postgres   # without the PostgreSQL cases

Cases in one run, on the same machine at the same time:

* **direct**: the exchange simulator as its own process, emitting as fast as the node takes ticks
  (signed frames, 500 ticks per frame, 4 symbols); a node in this process (feed → ingestor →
  failover store → SQLite in WAL mode with ``synchronous=FULL``) until every emitted tick is
  acknowledged, i.e. committed.
* **via proxy**: the same, with the fault proxy (its own process, no toxics) between them.
* **raw executemany**: the same rows, from the exchange's log, inserted by a bare ``executemany``
  into the same schema with the same pragmas and the same batch size, committing per batch.
* **many symbols**: the direct case with 1 symbol and with 1,000 symbols, same tick count, into
  SQLite and into PostgreSQL (``--postgres``, default ``127.0.0.1:5432`` database ``test``).
* **PostgreSQL store vs raw COPY**: the rows of the 4-symbol run written by
  ``PostgresTickStore.write`` in batches and by a bare psycopg ``COPY`` (text and binary; the
  faster is the baseline) of the same rows, batch and commit per batch, into the same table.

Every PostgreSQL case runs in a fresh schema, dropped at the end. Each figure is ticks per
second; what the goals judge are the ratios between the cases.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import aiohttp
import msgspec
import psycopg

from _processes import spawn, stop
from strategylab.market._ledger import read_emitted
from strategylab.market._pg_store import PostgresTickStore
from strategylab.market._sqlite_store import raw_insert_rate
from strategylab.market._tick import Tick
from strategylab.node._node import Node, NodeConfig

SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
MANY = tuple(f"S{i:04d}" for i in range(1000))
POSTGRES = "host=127.0.0.1 port=5432 dbname=test user=postgres"
_DDL = (
    "CREATE TABLE {} (symbol text NOT NULL, seq bigint NOT NULL, ts bigint NOT NULL, "
    "bid double precision NOT NULL, ask double precision NOT NULL, "
    "bid_size double precision NOT NULL, ask_size double precision NOT NULL, "
    "PRIMARY KEY (symbol, seq))"
)
KEY = "6b6579"  # "key", hex
BATCH = 20_000


async def _one_run(
    root: Path,
    ticks: int,
    *,
    via_proxy: bool,
    symbols: Sequence[str] = SYMBOLS,
    postgres: str | None = None,
) -> float:
    """Ticks per second from the node's start until every emitted tick is committed."""
    shutil.rmtree(root, ignore_errors=True)
    exchange, ready = await spawn(
        "strategylab",
        "exchange",
        *("--port", "0", "--data-dir", str(root / "exchange"), "--symbols", ",".join(symbols)),
        *("--tick-rate", "0", "--ticks-per-frame", "500", "--max-ticks", str(ticks)),
        *("--retention", str(ticks), "--heartbeat-interval", "0.5"),
        env={**os.environ, "STRATEGYLAB_SIGNING_KEY": KEY},  # never on the command line
    )
    proxy: asyncio.subprocess.Process | None = None
    port = ready["port"]
    try:
        async with aiohttp.ClientSession() as http:
            if via_proxy:
                # The proxy API's admin token: in the child's environment, never on its argv.
                token = secrets.token_urlsafe(24)
                env = {**os.environ, "STRATEGYLAB_ADMIN_TOKEN": token}
                proxy, api = await spawn("strategylab", "proxy", "--port", "0", env=env)
                body = {"name": "bench", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}"}
                url = f"http://127.0.0.1:{api['port']}/proxies"
                auth = {"Authorization": f"Bearer {token}"}
                async with http.post(url, json=body, headers=auth) as r:
                    r.raise_for_status()
                    port = int((await r.json())["listen"].rsplit(":", 1)[1])
            node = Node(
                NodeConfig(
                    exchange_url=f"ws://127.0.0.1:{port}/ws",
                    symbols=tuple(symbols),
                    data_dir=root / "node",
                    postgres=postgres,
                    signing_key=bytes.fromhex(KEY),
                    batch_size=BATCH,
                    stale_after=5.0,
                )
            )
            started = time.perf_counter()
            await node.start()
            try:
                status_url = f"http://127.0.0.1:{ready['port']}/api/status"
                while True:
                    async with http.get(status_url) as response:
                        status = await response.json()
                    if status["ticks_emitted"] >= ticks:
                        break
                    await asyncio.sleep(0.05)  # polling the exchange, not standing in for work
                await node.wait_caught_up(status["last_seq"], timeout=300)
                elapsed = time.perf_counter() - started
            finally:
                await node.aclose()
    finally:
        if proxy is not None:
            await stop(proxy)
        await stop(exchange)
    return ticks / elapsed


def _raw(root: Path) -> float:
    rows = [msgspec.structs.astuple(t) for t in read_emitted(root / "exchange" / "emitted.log")]
    target = root / "raw.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    return raw_insert_rate(target, rows, batch_size=BATCH)


class _Schema:
    """A fresh PostgreSQL schema for one case (``dsn`` puts it first on the search path),
    dropped with everything in it on exit."""

    def __init__(self, dsn: str) -> None:
        self.admin_dsn = dsn
        self.name = f"bench_ingest_{uuid.uuid4().hex[:12]}"
        self.dsn = f"{dsn} options='-c search_path={self.name}'"

    async def __aenter__(self) -> Self:
        async with await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True) as c:
            await c.execute(f'CREATE SCHEMA "{self.name}"')
        return self

    async def __aexit__(self, *_exc: object) -> None:
        async with await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True) as c:
            await c.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


async def _raw_copy(dsn: str, rows: list[tuple[Any, ...]], *, binary: bool) -> float:
    """A bare psycopg ``COPY`` of ``rows`` into a fresh tick table, ``BATCH`` rows a commit."""
    command = "COPY ticks FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
    types = ("text", "int8", "int8", "float8", "float8", "float8", "float8")
    async with (
        _Schema(dsn) as schema,
        await psycopg.AsyncConnection.connect(schema.dsn) as conn,
    ):
        await conn.execute(_DDL.format("ticks"))
        await conn.commit()
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            async with conn.transaction(), conn.cursor() as cur, cur.copy(command) as copy:
                if binary:
                    copy.set_types(types)
                for row in rows[start : start + BATCH]:
                    await copy.write_row(row)
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


async def _store_write(dsn: str, ticks: list[Tick]) -> float:
    """``PostgresTickStore.write`` of ``ticks`` into a fresh store, ``BATCH`` ticks a call."""
    async with _Schema(dsn) as schema:
        store = PostgresTickStore(schema.dsn, schema=schema.name)
        await store.open()
        try:
            started = time.perf_counter()
            for start in range(0, len(ticks), BATCH):
                await store.write(ticks[start : start + BATCH])
            elapsed = time.perf_counter() - started
            if await store.count() != len(ticks) or store.merges:
                raise AssertionError("the store did not COPY every tick exactly once")
        finally:
            await store.aclose()
    return len(ticks) / elapsed


async def _node_pg(root: Path, ticks: int, dsn: str, symbols: Sequence[str]) -> float:
    async with _Schema(dsn) as schema:
        return await _one_run(root, ticks, via_proxy=False, symbols=symbols, postgres=schema.dsn)


def _best(best: dict[str, float], case: str, value: float) -> None:
    best[case] = max(best.get(case, 0.0), value)


async def _main(ticks: int, runs: int, root: Path, postgres: str | None) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(runs):  # interleaved, so that a noisy moment hurts every case alike
        _best(best, "direct", await _one_run(root / "d", ticks, via_proxy=False))
        _best(best, "raw executemany", _raw(root / "d"))
        if postgres is not None:
            emitted = list(read_emitted(root / "d" / "exchange" / "emitted.log"))
            rows = [msgspec.structs.astuple(t) for t in emitted]
            _best(best, "pg store", await _store_write(postgres, emitted))
            _best(best, "pg copy text", await _raw_copy(postgres, rows, binary=False))
            _best(best, "pg copy binary", await _raw_copy(postgres, rows, binary=True))
        _best(best, "via proxy", await _one_run(root / "p", ticks, via_proxy=True))
        for label, symbols in (("1", SYMBOLS[:1]), ("1000", MANY)):
            run = await _one_run(root / "s", ticks, via_proxy=False, symbols=symbols)
            _best(best, f"sqlite {label}", run)
            if postgres is not None:
                _best(best, f"pg {label}", await _node_pg(root / "g", ticks, postgres, symbols))
    return best


def _report(ticks: int, runs: int, best: dict[str, float]) -> list[tuple[str, bool]]:
    direct, proxied, raw = best["direct"], best["via proxy"], best["raw executemany"]
    print(
        f"{ticks:,} ticks per run, best of {runs}; batch {BATCH:,}; SQLite WAL, synchronous=FULL\n"
    )
    print("| case | ticks/s | ratio |\n|---|---:|---:|")
    print(f"| raw executemany (same rows, schema, pragmas) | {raw:,.0f} | 1.00 |")
    print(f"| **exchange → feed → SQLite, direct** | {direct:,.0f} | {direct / raw:.2f} of raw |")
    print(
        f"| **exchange → proxy → feed → SQLite** | {proxied:,.0f} | "
        f"{proxied / direct:.2f} of direct |"
    )
    one, many = best["sqlite 1"], best["sqlite 1000"]
    print(f"| exchange → feed → SQLite, 1 symbol | {one:,.0f} | 1.00 |")
    print(f"| **exchange → feed → SQLite, 1,000 symbols** | {many:,.0f} | {many / one:.2f} of 1 |")
    goals = [
        (f"direct ≥ 200,000 ticks/s ({direct:,.0f})", direct >= 200_000),
        (f"direct ≥ 40 % of raw executemany ({direct / raw:.0%})", direct >= 0.4 * raw),
        (f"via proxy ≥ 70 % of direct ({proxied / direct:.0%})", proxied >= 0.7 * direct),
        (f"SQLite: 1,000 symbols ≥ 60 % of 1 symbol ({many / one:.0%})", many >= 0.6 * one),
    ]
    if "pg store" in best:
        text, binary, store = best["pg copy text"], best["pg copy binary"], best["pg store"]
        copy = max(text, binary)
        pg_one, pg_many = best["pg 1"], best["pg 1000"]
        print(f"| raw psycopg COPY, text (same rows, table) | {text:,.0f} | {text / copy:.2f} |")
        print(
            f"| raw psycopg COPY, binary (same rows, table) | {binary:,.0f} | {binary / copy:.2f} |"
        )
        print(f"| **PostgresTickStore.write** | {store:,.0f} | {store / copy:.2f} of raw COPY |")
        print(f"| exchange → feed → PostgreSQL, 1 symbol | {pg_one:,.0f} | 1.00 |")
        print(
            f"| **exchange → feed → PostgreSQL, 1,000 symbols** | {pg_many:,.0f} | "
            f"{pg_many / pg_one:.2f} of 1 |"
        )
        print(f"| exchange → feed → PostgreSQL, 1 symbol vs SQLite | | {pg_one / one:.2f} |")
        goals += [
            (
                f"PostgresTickStore.write ≥ 70 % of raw COPY ({store / copy:.0%})",
                store >= 0.7 * copy,
            ),
            (
                f"PostgreSQL: 1,000 symbols ≥ 60 % of 1 symbol ({pg_many / pg_one:.0%})",
                pg_many >= 0.6 * pg_one,
            ),
        ]
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end ingest throughput.")
    parser.add_argument("--quick", action="store_true", help="200,000 ticks, one run per case")
    parser.add_argument("--ticks", type=int, default=None)
    parser.add_argument(
        "--postgres", default=POSTGRES, help=f"libpq DSN of the server (default: {POSTGRES})"
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL cases")
    args = parser.parse_args(argv)
    ticks = args.ticks or (200_000 if args.quick else 1_000_000)
    runs = 1 if args.quick else 3
    postgres = None if args.no_postgres else args.postgres
    with tempfile.TemporaryDirectory(prefix="strategylab-bench-") as tmp:
        best = asyncio.run(_main(ticks, runs, Path(tmp), postgres))
    goals = _report(ticks, runs, best)
    print("\n| goal | met |\n|---|---|")
    for label, met in goals:
        print(f"| {label} | {'yes' if met else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
