"""A trader SIGKILLed with many orders in flight restarts and trades soon, over a slow link."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from strategylab.chaos import Proxy
from strategylab.clock import SYSTEM_CLOCK
from strategylab.exchange._faults import parse_fault
from strategylab.market import Exchange, ExchangeConfig
from strategylab.trading._positions import PositionStore

LATENCY_MS = 300
"""Added to every answer on the restarted trader's link: one lookup per order would take
0.3 s x the orders in flight."""


async def spawn(url: str, db: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade", "--exchange-url", url, "--book", str(db)),
        *("--strategy", "bids=strategylab.strategy._examples:RestingBids", "--symbols", "A"),
        *(
            *("--param", "every=1", "--param", "count=30", "--param", "start_after=50"),
            "--status-interval",
            "0.05",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def next_event(proc: asyncio.subprocess.Process, event: str, limit: float = 15.0) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"engine exited ({await proc.wait()}) before {event!r}")
            data = json.loads(line)
            if data.get("event") == event:
                return data


async def restart_through_latency(exchange: Exchange, db: Path) -> tuple[list[Any], float]:
    """Restart the trader behind a latency proxy: its reconciled items, seconds to trading."""
    async with (
        Proxy("order-api", upstream=f"127.0.0.1:{exchange.port}") as proxy,
        proxy.toxic("latency", stream="downstream", latency=LATENCY_MS),
    ):
        started = time.monotonic()
        second = await spawn(f"http://127.0.0.1:{proxy.listen_port}", db)
        try:
            reconciled = await next_event(second, "reconciled")
            await next_event(second, "trading")
            to_trading = time.monotonic() - started
        finally:
            second.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                code = await second.wait()
    assert code == 0
    return list(reconciled["items"]), to_trading


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_restart_with_orders_in_flight_trades_again_within_bound(tmp_path: Path) -> None:
    """20+ orders in flight at SIGKILL (the exchange took them, answered 503): the restart over
    a link adding 300 ms per answer reconciles every one and trades within 5 s."""
    exchange = Exchange(ExchangeConfig(symbols=("A",), tick_rate=500, data_dir=tmp_path / "ex"))
    await exchange.start()
    db = tmp_path / "book.db"
    try:
        first = await spawn(exchange.url, db)
        try:
            await next_event(first, "trading")
            body = {"kind": "api_errors", "duration": 120.0, "status": 503, "phase": "after"}
            exchange.faults.set(parse_fault(body, SYSTEM_CLOCK.monotonic()))
            last: dict[str, Any] = {}
            try:
                async with asyncio.timeout(15):
                    while (last := await next_event(first, "status"))["inflight"] < 20:
                        pass
            except TimeoutError:
                raise AssertionError(f"never 20 orders in flight: {last}") from None
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        exchange.faults.clear()
        killed = PositionStore(db)
        inflight_at_kill = {o.cid for o in killed.orders(frozenset({"inflight"}))}
        killed.close()
        assert len(inflight_at_kill) >= 20

        reconciled, to_trading = await restart_through_latency(exchange, db)
        assert to_trading < 5.0, f"trading again only after {to_trading:.1f} s"
        # Each one resolved: adopted if the exchange took it (before the breaker opened), else
        # voided (the breaker failed it fast: it never left the trader).
        items = {i["key"]: i["action"] for i in reconciled if i["what"] == "inflight_order"}
        assert set(items) == inflight_at_kill
        taken = {o.client_order_id for o in exchange.book.orders()} & inflight_at_kill
        assert taken
        assert {k for k, a in items.items() if a == "adopted: marked open"} == taken
        store = PositionStore(db)
        try:
            assert store.orders(frozenset({"inflight"})) == []
            book_open = {o.cid for o in store.orders(frozenset({"open"}))}
        finally:
            store.close()
        assert book_open == {o.client_order_id for o in exchange.book.orders("open")}
        counts = Counter(o.client_order_id for o in exchange.book.orders())
        assert set(counts.values()) == {1}
    finally:
        await exchange.stop()
