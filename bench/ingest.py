"""End-to-end ingest throughput: exchange process → feed → durable SQLite, side by side.

Run (after ``pip install -e .``)::

    python bench/ingest.py            # 1,000,000 ticks per run, best of 3 runs per case
    python bench/ingest.py --quick    # 200,000 ticks, one run per case

Three cases in one run, on the same machine at the same time:

* **direct**: the exchange simulator as its own process, emitting as fast as the node takes ticks
  (signed frames, 500 ticks per frame, 4 symbols); a node in this process (feed → ingestor →
  failover store → SQLite in WAL mode with ``synchronous=FULL``) until every emitted tick is
  acknowledged, i.e. committed.
* **via proxy**: the same, with the fault proxy (its own process, no toxics) between them.
* **raw executemany**: the same rows, from the exchange's log, inserted by a bare ``executemany``
  into the same schema with the same pragmas and the same batch size, committing per batch.

Each figure is ticks per second; what the goals judge are the ratios between the cases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from strategylab.market._ledger import read_emitted
from strategylab.market._sqlite_store import raw_insert_rate
from strategylab.node._node import Node, NodeConfig

SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
KEY = "6b6579"  # "key", hex
BATCH = 20_000


async def _spawn(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        line = await process.stdout.readline()
    return process, json.loads(line)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        async with asyncio.timeout(30):
            await process.wait()


async def _one_run(root: Path, ticks: int, *, via_proxy: bool) -> float:
    """Ticks per second from the node's start until every emitted tick is committed."""
    shutil.rmtree(root, ignore_errors=True)
    exchange, ready = await _spawn(
        "strategylab",
        "exchange",
        *("--port", "0", "--data-dir", str(root / "exchange"), "--symbols", ",".join(SYMBOLS)),
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
                proxy, api = await _spawn("strategylab", "proxy", "--port", "0", env=env)
                body = {"name": "bench", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}"}
                url = f"http://127.0.0.1:{api['port']}/proxies"
                auth = {"Authorization": f"Bearer {token}"}
                async with http.post(url, json=body, headers=auth) as r:
                    r.raise_for_status()
                    port = int((await r.json())["listen"].rsplit(":", 1)[1])
            node = Node(
                NodeConfig(
                    exchange_url=f"ws://127.0.0.1:{port}/ws",
                    symbols=SYMBOLS,
                    data_dir=root / "node",
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
            await _stop(proxy)
        await _stop(exchange)
    return ticks / elapsed


def _raw(root: Path) -> float:
    rows = [msgspec.structs.astuple(t) for t in read_emitted(root / "exchange" / "emitted.log")]
    target = root / "raw.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    return raw_insert_rate(target, rows, batch_size=BATCH)


async def _main(ticks: int, runs: int, root: Path) -> dict[str, float]:
    best = {"direct": 0.0, "via proxy": 0.0, "raw executemany": 0.0}
    for _ in range(runs):  # interleaved, so that a noisy moment hurts every case alike
        best["direct"] = max(best["direct"], await _one_run(root / "d", ticks, via_proxy=False))
        best["raw executemany"] = max(best["raw executemany"], _raw(root / "d"))
        best["via proxy"] = max(
            best["via proxy"], await _one_run(root / "p", ticks, via_proxy=True)
        )
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end ingest throughput.")
    parser.add_argument("--quick", action="store_true", help="200,000 ticks, one run per case")
    parser.add_argument("--ticks", type=int, default=None)
    args = parser.parse_args(argv)
    ticks = args.ticks or (200_000 if args.quick else 1_000_000)
    runs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="strategylab-bench-") as tmp:
        best = asyncio.run(_main(ticks, runs, Path(tmp)))
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
    print("\n| goal | met |\n|---|---|")
    for label, met in (
        (f"direct ≥ 200,000 ticks/s ({direct:,.0f})", direct >= 200_000),
        (f"direct ≥ 40 % of raw executemany ({direct / raw:.0%})", direct >= 0.4 * raw),
        (f"via proxy ≥ 70 % of direct ({proxied / direct:.0%})", proxied >= 0.7 * direct),
    ):
        print(f"| {label} | {'yes' if met else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
