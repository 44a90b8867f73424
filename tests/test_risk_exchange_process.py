"""Working orders never make room, end to end: the exchange and the engine as real processes.

The engine process (``python -m strategylab trade --max-position 10``) runs
:class:`OverlappingBuys` against the exchange process: a SELL 10 limit far above the market
(it rests and never fills), a market BUY 10, and once that buy's fill is back a second market BUY
10. Netting the resting sell against the buys would admit the second one and the account would
hold 20 at the exchange; the worst case per side refuses it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.market._tick import Tick
from strategylab.strategy._strategy import (
    Fill,
    JSONValue,
    OrderRequest,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
)

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parent


class OverlappingBuys(Strategy):
    """A far resting SELL 10, then market BUY 10, then (after its fill) market BUY 10 again."""

    def __init__(self, name: str, symbols: tuple[str, ...]) -> None:
        super().__init__(name, symbols)
        self.step = "start"
        self.ticks = 0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Advance the script by one step when its condition holds."""
        self.ticks += 1
        if self.step == "start":
            price = round(tick.ask * 10.0, 2)
            ctx.submit(
                OrderRequest(
                    symbol=tick.symbol, side=Side.SELL, qty=10, type=OrderType.LIMIT, price=price
                )
            )
            self.step, self.ticks = "resting", 0
        elif self.step == "resting" and self.ticks >= 10:  # the sell is open by now
            ctx.submit(OrderRequest(symbol=tick.symbol, side=Side.BUY, qty=10))
            self.step = "first buy sent"
        elif self.step == "first buy filled":
            ctx.submit(OrderRequest(symbol=tick.symbol, side=Side.BUY, qty=10))
            self.step = "second buy sent"

    def on_fill(self, fill: Fill, ctx: StrategyContext) -> None:
        """The first buy's fill is back: the filled position is now 10."""
        del ctx
        if fill.side is Side.BUY and self.step == "first buy sent":
            self.step = "first buy filled"

    def state(self) -> dict[str, JSONValue]:
        """Where the script is."""
        return {"step": self.step}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        """Continue the script."""
        step = state.get("step", "start")
        self.step = step if isinstance(step, str) else "start"


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise AssertionError(f"process {proc.pid} exited ({proc.returncode}) early")
    data: dict[str, Any] = json.loads(line)
    return data


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    return proc.returncode


@pytest.fixture
async def exchange_port(tmp_path: Path) -> AsyncIterator[int]:
    """The exchange simulator as its own process; yields its HTTP port."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
        *("--tick-rate", "200", "--ticks-per-frame", "5", "--data-dir", str(tmp_path / "ex")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(10):
            announce = await _line(proc)
        assert announce["event"] == "listening"
        yield int(announce["port"])
    finally:
        assert await _stop(proc) == 0


async def _engine_until(
    proc: asyncio.subprocess.Process,
    http: aiohttp.ClientSession,
    base: str,
    done: Callable[[dict[str, Any]], bool],
) -> tuple[dict[str, Any], list[float]]:
    """Read status lines until ``done``; sample the exchange's position in A after each."""
    held: list[float] = []
    async with asyncio.timeout(20):
        while True:
            event = await _line(proc)
            if event["event"] != "status":
                continue
            async with http.get(f"{base}/api/positions") as response:
                positions = await response.json()
            held += [float(p["qty"]) for p in positions if p["symbol"] == "A"]
            if done(event):
                return event, held


@pytest.mark.timeout(60)
async def test_resting_sell_does_not_let_two_buys_through_to_the_exchange(
    exchange_port: int, tmp_path: Path
) -> None:
    """max_position 10, resting far SELL 10, two market BUY 10: the second never reaches the
    exchange and the exchange's position never exceeds 10."""
    base = f"http://127.0.0.1:{exchange_port}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    engine = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "trade", "--exchange-url", base),
        *("--book", str(tmp_path / "book.db"), "--symbols", "A", "--max-position", "10"),
        *("--strategy", "over=test_risk_exchange_process:OverlappingBuys"),
        *("--status-interval", "0.05"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        async with aiohttp.ClientSession() as http:
            status, held = await _engine_until(
                engine,
                http,
                base,
                lambda s: s["orders_rejected"] >= 1 or s["orders_filled"] >= 2,
            )
            async with http.get(f"{base}/api/orders") as response:
                orders = await response.json()
            async with http.get(f"{base}/api/positions") as response:
                final = {p["symbol"]: p["qty"] for p in await response.json()}
    finally:
        code = await _stop(engine)
    assert code == 0
    assert status["orders_rejected"] == 1
    assert status["orders_filled"] == 1
    assert status["positions"] == {"over": {"A": 10.0}}
    assert final == {"A": 10.0}
    assert held
    assert max(held) <= 10.0
    assert sorted((o["side"], o["type"], o["status"]) for o in orders) == [
        ("buy", "market", "filled"),
        ("sell", "limit", "open"),
    ]
