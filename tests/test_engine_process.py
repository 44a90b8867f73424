"""The engine as a process: SIGKILL with resting and in-flight orders, restart, reconcile."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from strategylab.clock import SYSTEM_CLOCK
from strategylab.exchange._faults import parse_fault
from strategylab.market import Exchange, ExchangeConfig
from strategylab.trading._positions import PositionStore


async def spawn(port: int, db: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade"),
        "--exchange-url",
        f"http://127.0.0.1:{port}",
        "--book",
        str(db),
        "--strategy",
        "bids=strategylab.strategy._examples:RestingBids",
        "--symbols",
        "A",
        *("--param", "every=40", "--param", "count=4"),
        "--status-interval",
        "0.05",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def next_event(proc: asyncio.subprocess.Process, event: str, limit: float = 10.0) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"engine exited ({proc.returncode}) before {event!r}")
            data = json.loads(line)
            if data.get("event") == event:
                return data


async def status_until(proc: asyncio.subprocess.Process, done: Any, limit: float = 10.0) -> Any:
    async with asyncio.timeout(limit):
        while True:
            status = await next_event(proc, "status", limit)
            if done(status):
                return status


@pytest.mark.timeout(40)
async def test_sigkill_with_open_and_inflight_orders_is_reconciled(tmp_path: Path) -> None:
    """After SIGKILL the restarted engine adopts the in-flight order and matches the exchange."""
    exchange = Exchange(ExchangeConfig(symbols=("A",), tick_rate=200, data_dir=tmp_path / "ex"))
    await exchange.start()
    db = tmp_path / "book.db"
    try:
        first = await spawn(exchange.port, db)
        try:
            await next_event(first, "trading")
            await status_until(first, lambda s: s["open_orders"] >= 2)
            body = {"kind": "api_errors", "duration": 60.0, "status": 503, "phase": "after"}
            exchange.faults.set(parse_fault(body, SYSTEM_CLOCK.monotonic()))
            await status_until(first, lambda s: s["inflight"] >= 1)
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        exchange.faults.clear()
        killed = PositionStore(db)
        inflight_at_kill = [o.cid for o in killed.orders(frozenset({"inflight"}))]
        killed.close()
        assert inflight_at_kill

        second = await spawn(exchange.port, db)
        try:
            reconciled = await next_event(second, "reconciled")
            await next_event(second, "trading")
        finally:
            second.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await second.wait()
        assert code == 0
        items = {i["key"]: i for i in reconciled["items"] if i["what"] == "inflight_order"}
        for cid in inflight_at_kill:
            assert items[cid]["action"] == "adopted: marked open"
        store = PositionStore(db)
        assert store.orders(frozenset({"inflight"})) == []
        book_open = {o.cid for o in store.orders(frozenset({"open"}))}
        exchange_open = {o.client_order_id for o in exchange.book.orders("open")}
        assert book_open == exchange_open
        assert len(exchange_open) >= 3
        counts = [o.client_order_id for o in exchange.book.orders()]
        assert len(counts) == len(set(counts))
        store.close()
    finally:
        await exchange.stop()
