"""Reconciliation after a crash with orders in flight, and how fast an ambiguous cancel resolves.

Run (after ``pip install -e .``)::

    python bench/reconcile.py            # 50 orders in flight, best of 3 runs per case
    python bench/reconcile.py --quick    # 50 orders in flight, one run, no one-at-a-time case
                                         # behind the latency proxy

The exchange runs in its own process. A book (the engine's SQLite file) holds 50 orders in flight,
as a trader SIGKILLed mid-send leaves it; half of them reached the exchange (limit bids resting far
below the market), half never did. Each run restarts a ``StrategyEngine`` on a fresh copy of that
book and times ``start()``: reconciliation (every order, fill and position read from the exchange,
the in-flight orders resolved by client order id) up to the moment it trades. Three ways to ask
about the orders in flight, in the same run:

- **bulk**: ``POST /api/orders/lookup``, one request per 200 client ids (the default);
- **8 at once**: single ``GET /api/orders/by-client-id/{cid}`` lookups, at most 8 in flight (the
  fallback against an exchange without the bulk endpoint);
- **one at a time**: single lookups in sequence (what the engine did before).

Each is measured direct to the exchange, and through a TCP fault proxy adding 350 ms of latency to
every answer, the ~0.35 s per lookup a slow link gives. Then the real trader process is started
on a copy of the book and timed from spawn to its ``trading`` line.

Ambiguous cancel: a resting order is cancelled while the exchange processes every API request and
then answers 503 (the ``api_errors`` fault, phase ``after``), for longer than the client's retry
budget; the engine marks the cancel unresolved. The fault is then switched off, and the time until
the engine has the order cancelled (and no longer counted as exposure) is measured, with no
further cancel call and no restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from strategylab.chaos import Proxy
from strategylab.market import Tick
from strategylab.strategy._examples import RestingBids
from strategylab.strategy._strategy import OrderRequest, OrderType, Side, Strategy
from strategylab.trading._engine import EngineConfig, StrategyEngine
from strategylab.trading._orders import OrderClient
from strategylab.trading._positions import PositionStore

IN_FLIGHT = 50
LATENCY_MS = 350
STRATEGY = "bids"
MODES: dict[str, dict[str, object]] = {
    "bulk": {},
    "8 at once": {"bulk_lookup": False, "lookup_concurrency": 8},
    "one at a time": {"bulk_lookup": False, "lookup_concurrency": 1},
}


async def _start_exchange(data_dir: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
        *("--tick-rate", "200", "--data-dir", str(data_dir), "--admin-open"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        announce = json.loads(await proc.stdout.readline())
    return proc, int(announce["port"])


def _factory() -> Strategy:
    return RestingBids(STRATEGY, ("A",), count=0)


async def _make_book(path: Path, url: str) -> None:
    """IN_FLIGHT orders recorded in flight; the even ones also submitted to the exchange."""
    store = PositionStore(path)
    store.ensure_strategy(STRATEGY)
    request = OrderRequest(symbol="A", side=Side.BUY, qty=1.0, type=OrderType.LIMIT, price=1.0)
    cids = [f"{store.engine_id}-{STRATEGY}-{n}" for n in range(1, IN_FLIGHT + 1)]
    store.record_intents(
        STRATEGY, [(c, request) for c in cids], {"placed": IN_FLIGHT}, next_order=IN_FLIGHT + 1
    )
    store.close()
    client = OrderClient(url)
    await client.start()
    try:
        for cid in cids[::2]:
            await client.submit(cid, request)
    finally:
        await client.stop()


async def _restart(book: Path, run_dir: Path, url: str, options: dict[str, object]) -> float:
    """Seconds for ``StrategyEngine.start()`` on a fresh copy of ``book``."""
    db = run_dir / "book.db"
    shutil.copyfile(book, db)
    client = OrderClient(url, **options)  # type: ignore[arg-type]
    engine = StrategyEngine([_factory], client=client, db=db)
    started = time.perf_counter()
    await engine.start()
    elapsed = time.perf_counter() - started
    try:
        inflight = [i for i in engine.reconciliation if i.what == "inflight_order"]
        if len(inflight) != IN_FLIGHT:
            raise SystemExit(f"reconciled {len(inflight)} in-flight orders, not {IN_FLIGHT}")
    finally:
        await engine.aclose()
    return elapsed


async def _trader_process(book: Path, run_dir: Path, port: int) -> tuple[float, float]:
    """(seconds from spawn to ``trading``, reconciliation seconds it reported)."""
    db = run_dir / "book.db"
    shutil.copyfile(book, db)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade", "--exchange-url", f"http://127.0.0.1:{port}"),
        *(
            "--book",
            str(db),
            "--strategy",
            f"{STRATEGY}=strategylab.strategy._examples:RestingBids",
        ),
        *("--symbols", "A", "--param", "count=0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    reconciled = 0.0
    try:
        async with asyncio.timeout(30):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise SystemExit(f"trader exited ({await proc.wait()}) before trading")
                event = json.loads(line)
                if event["event"] == "reconciled":
                    reconciled = float(event["seconds"])
                elif event["event"] == "trading":
                    return time.perf_counter() - started, reconciled
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def _until(predicate: Callable[[], bool], limit: float) -> None:
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - the engine offers no event to wait on
            await asyncio.sleep(0.002)


async def _ambiguous_cancel(run_dir: Path, url: str, seq: int) -> float:
    """Seconds from the API answering again to the engine holding the order cancelled."""
    engine = StrategyEngine(
        [lambda: RestingBids(STRATEGY, ("A",), every=1, count=1)],
        client=OrderClient(url),
        db=run_dir / f"cancel-{seq}.db",
        config=EngineConfig(fill_poll_interval=0.05),
    )
    await engine.start()
    admin = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    try:
        await engine.put([Tick("A", 10**9 + seq, time.time_ns(), 99.0, 101.0, 1.0, 1.0)])
        await _until(lambda: engine.status().open_orders == 1, 5.0)
        fault = {"kind": "api_errors", "duration": 60.0, "status": 503, "phase": "after"}
        async with admin.post(f"{url}/admin/faults", json=fault) as response:
            response.raise_for_status()
        engine.cancel_all_for(STRATEGY, None)
        await _until(lambda: bool(engine.ambiguous), 10.0)
        await asyncio.sleep(1.5)  # rounds back off, the breaker opens: the API is down a while
        async with admin.delete(f"{url}/admin/faults") as response:
            response.raise_for_status()
        answered = time.perf_counter()
        await _until(lambda: engine.status().open_orders == 0 and not engine.ambiguous, 10.0)
        elapsed = time.perf_counter() - answered
    finally:
        await admin.close()
        await engine.aclose()
    return elapsed


async def _run(*, quick: bool) -> int:
    runs = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="strategylab-bench-") as tmp:
        root = Path(tmp)
        proc, port = await _start_exchange(root / "exchange")
        direct = f"http://127.0.0.1:{port}"
        try:
            async with AsyncExitStack() as stack:
                proxy = await stack.enter_async_context(
                    Proxy("order-api", upstream=f"127.0.0.1:{port}")
                )
                await stack.enter_async_context(
                    proxy.toxic("latency", stream="downstream", latency=LATENCY_MS)
                )
                slow = f"http://127.0.0.1:{proxy.listen_port}"
                book = root / "crashed.db"
                await _make_book(book, direct)
                results: dict[tuple[str, str], float] = {}
                for _ in range(runs):  # interleaved: a noisy moment hurts every case alike
                    for link, url in (("direct", direct), (f"+{LATENCY_MS} ms", slow)):
                        for mode, options in MODES.items():
                            if link != "direct" and mode == "one at a time" and quick:
                                continue
                            seconds = await _restart(book, root, url, options)
                            key = (link, mode)
                            results[key] = min(results.get(key, float("inf")), seconds)
                process = min(
                    [await _trader_process(book, root, port) for _ in range(runs)],
                    key=lambda r: r[0],
                )
                cancels = [await _ambiguous_cancel(root, direct, n) for n in range(runs + 2)]
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()

    print(
        f"{IN_FLIGHT} orders in flight ({IN_FLIGHT // 2} at the exchange, {IN_FLIGHT // 2} never"
        f" sent), best of {runs}; StrategyEngine.start() to trading\n"
    )
    print("| link | way of asking | seconds | ratio to bulk |")
    print("|---|---|---:|---:|")
    for (link, mode), seconds in results.items():
        ratio = seconds / results[(link, "bulk")]
        print(f"| {link} | {mode} | {seconds:.3f} | {ratio:.1f}x |")
    spawn, reconciled = process
    print(f"\ntrader process, spawn to trading: {spawn:.3f} s (reconciliation {reconciled:.3f} s)")
    worst = max(cancels)
    print(
        f"ambiguous cancel resolved after the API answers again: median "
        f"{statistics.median(cancels):.3f} s, worst {worst:.3f} s of {len(cancels)}\n"
    )
    bulk_slow = results[(f"+{LATENCY_MS} ms", "bulk")]
    bulk_direct = results[("direct", "bulk")]
    print("| goal | met |\n|---|---|")
    for label, met in (
        (
            (
                f"reconcile {IN_FLIGHT} in flight ≤ 1 s: {bulk_direct:.3f} s direct, "
                f"{bulk_slow:.3f} s at {LATENCY_MS} ms a request"
            ),
            max(bulk_direct, bulk_slow) <= 1.0,
        ),
        (f"ambiguous cancel resolved ≤ 1 s after the API answers ({worst:.3f} s)", worst <= 1.0),
    ):
        print(f"| {label} | {'yes' if met else 'no'} |")
    met = max(bulk_direct, bulk_slow) <= 1.0
    print(f"\nreconcile {IN_FLIGHT} in flight ≤ 1 s: {'yes' if met else 'no'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="Reconciliation and ambiguity resolution.")
    parser.add_argument("--quick", action="store_true", help="one run; skip the slowest case")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # each reconciled item and ambiguous cancel is logged
    return asyncio.run(_run(quick=args.quick))


if __name__ == "__main__":
    raise SystemExit(main())
