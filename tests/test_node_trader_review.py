"""Review fixes of the node's trader child that need no node: a trader run under a parent never
blocks on its pipes, and ``--book`` inside ``--data-dir`` (at any depth) is refused.

A real exchange and a real ``strategylab trade`` process whose parent (this test) holds the
channel's FIFO and the trader's stdout pipe without reading them, as a SIGSTOPped node would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.market import Exchange, ExchangeConfig

pytestmark = pytest.mark.integration

BIDS = "bids=strategylab.strategy._examples:RestingBids"
PIPE_BYTES = 65536


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=100, data_dir=tmp_path / "ex"))
    await ex.start()
    yield ex
    await ex.stop()


async def orders_at(exchange: Exchange) -> int:
    """How many orders the exchange holds open (its own answer)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{exchange.url}/api/orders", params={"status": "open"}) as response,
    ):
        assert response.status == 200
        return len(await response.json())


def queued(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is ``fd``."""
    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


async def until(predicate: Callable[[], Awaitable[bool]], limit: float) -> None:
    """Poll a condition on another process (no event to await), bounded by ``limit``."""
    async with asyncio.timeout(limit):
        while not await predicate():  # noqa: ASYNC110 - another process: nothing to await
            await asyncio.sleep(0.05)


def lines_of(data: bytes) -> list[dict[str, Any]]:
    """The whole JSON lines in ``data`` (blank lines skipped)."""
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


@pytest.mark.timeout(60)
async def test_a_trader_keeps_trading_while_its_parent_reads_neither_pipe(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Both the channel and stdout full and unread (a stopped node): the trader keeps placing
    orders at the exchange, drops lines instead of blocking (counted in its status lines, whole
    lines only), and still stops gracefully on SIGTERM (exit 0)."""
    fifo = tmp_path / "trader.channel"
    os.mkfifo(fifo, 0o600)
    channel = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    read_out, write_out = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade", "--exchange-url", exchange.url),
        *("--book", str(tmp_path / "trader" / "book.db"), "--symbols", "A"),
        *("--strategy", BIDS, "--param", "every=5", "--param", "count=100000"),
        *("--param", "fraction=0.01", "--status-interval", "0.005"),
        stdout=write_out,
        env={**os.environ, "STRATEGYLAB_PARENT_CHANNEL": str(fifo)},
    )
    os.close(write_out)
    try:

        async def both_full() -> bool:
            return min(queued(channel), queued(read_out)) > PIPE_BYTES - 8192

        await until(both_full, 30)
        before = await orders_at(exchange)

        async def more_orders() -> bool:
            return await orders_at(exchange) >= before + 10

        await until(more_orders, 15)  # trading on while nothing reads its lines
        assert proc.returncode is None

        data = b""
        while len(data) < 4 * PIPE_BYTES:  # drain the backlog, then read newer lines
            try:
                data += os.read(channel, PIPE_BYTES)
            except BlockingIOError:
                await asyncio.sleep(0.05)
        statuses = [line for line in lines_of(data) if line["event"] == "status"]
        dropped = [s["dropped_lines"]["channel"] for s in statuses]
        assert dropped == sorted(dropped)
        assert dropped[-1] > 0
        assert statuses[-1]["dropped_lines"]["stdout"] > 0
        assert statuses[-1]["orders_sent"] > statuses[0]["orders_sent"]

        proc.terminate()
        os.set_blocking(read_out, False)

        async def exited() -> bool:
            for fd in (channel, read_out):  # read on, as a node would once resumed
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, PIPE_BYTES)
            return proc.returncode is not None

        await until(exited, 20)
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(channel)
        os.close(read_out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inside", ["spool/book.db", "logs/book.db", "a/b/c/book.db"])
async def test_a_book_anywhere_inside_the_data_dir_is_refused(tmp_path: Path, inside: str) -> None:
    """``node --book DATA_DIR/...`` at any depth: exit 2, one line naming --book, nothing run."""
    data_dir = tmp_path / "node"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "node", "--exchange-url", "http://127.0.0.1:9"),
        *("--data-dir", str(data_dir), "--symbols", "A", "--strategy", "ma_crossover"),
        *("--book", str(data_dir / inside)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert "--book" in text
    assert "inside --data-dir" in text
    assert "Traceback" not in text
    assert out == b""
    assert not (data_dir / inside).exists()
