"""The demo's scripted run: the exchange, the node and the trader as processes, and the faults.

The exchange simulator runs as its own process, the ingesting node as another, the trader as a
third, and a fault proxy (in this process) sits between the node and the exchange. While the
exchange emits a fixed number of ticks, :func:`run_children` resets the connection, partitions
it, drops it, corrupts frames at the exchange, answers order requests with 503 after processing
them, and flips bits on the wire; then it waits for the node to catch up and stops the trader
and the node, newest first. The live screen (:mod:`strategylab._demo_live`) follows it all.

Each child writes its own log file under its data directory; its stderr (a crash's traceback
included) goes to a 0600 file beside it (:func:`strategylab._demo_dir.stderr_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.text import Text

from strategylab._children import ChildProcesses
from strategylab._demo_dir import stderr_log, trading_dir
from strategylab._demo_live import Progress
from strategylab._files import DIR_MODE, open_private
from strategylab._layout import DataLayout
from strategylab._logging import escape
from strategylab.chaos import Proxy
from strategylab.errors import StrategyLabError

__all__ = ["SYMBOLS", "DemoError", "Run", "run_children"]

SYMBOLS: Final = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT")
_MA: Final = "ma_crossover"
_READY_TIMEOUT: Final = 30.0
_POLL_INTERVAL: Final = 0.25


class DemoError(StrategyLabError):
    """The demo could not set itself up (a child process did not start)."""


@dataclass
class Run:
    """What one run knows, for the report and for an interruption's account of itself."""

    data_dir: Path
    ticks: int
    tick_rate: int
    progress: Progress
    log_level: str = "warning"
    """The children's ``--log-level`` (``debug``, ``info``, ``warning``, ``error``)."""
    stopped: dict[str, Any] = field(default_factory=dict)
    traded: dict[str, Any] = field(default_factory=dict)
    phase: str = "setting up"
    interrupted_during: str | None = None


async def _spawn(
    children: ChildProcesses, name: str, log: Path, *args: str
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start ``python -m strategylab ARGS``, its stderr (warnings) to ``log``; read its first
    JSON line."""
    # 0600 and never through a symlink: the children's warnings may name paths and peers.
    with os.fdopen(open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as stderr:
        process = await children.start(
            name,
            sys.executable,
            "-m",
            "strategylab",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None  # noqa: S101 - PIPE was asked for
    async with asyncio.timeout(_READY_TIMEOUT):
        line = await process.stdout.readline()
    if not line:
        code = await children.stop(process)
        raise DemoError(
            f"`strategylab {args[0]}` exited with {code} before it was ready; see {log}"
        )
    return process, json.loads(line)


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects a child prints, one a line; anything else is skipped."""
    async for raw in stream:
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict):
                yield line


def _show_dashboard(console: Console, line: dict[str, Any]) -> None:
    """Print the node's dashboard URL when ``line`` is its ``ready`` line with a status URL
    (a node without a status service prints none, and nothing is shown)."""
    url = line.get("status_url")
    if line.get("event") == "ready" and isinstance(url, str) and url.startswith("http://"):
        console.print(Text(f"node dashboard: {escape(url)}"), soft_wrap=True)


@contextlib.asynccontextmanager
async def _toxic(proxy: Proxy, kind: str, **attributes: Any) -> AsyncIterator[None]:
    # Both directions: a partition cuts the subscription requests as well as the data.
    down = proxy.add_toxic(kind, stream="downstream", **attributes)
    up = proxy.add_toxic(kind, stream="upstream", **attributes)
    try:
        yield
    finally:
        proxy.remove_toxic(down.name)
        proxy.remove_toxic(up.name)


async def run_children(  # noqa: C901, PLR0915 - one linear script, kept in one place
    run: Run,
    children: ChildProcesses,
    console: Console,
    *,
    token: str,
    key_file: Path,
    token_file: Path,
) -> None:
    data_dir, ticks, progress = run.data_dir, run.ticks, run.progress
    layout = DataLayout(data_dir)
    exchange_dir, node_dir = layout.exchange_dir.root, layout.node_dir.root
    book_dir = trading_dir(data_dir)
    book_dir.mkdir(mode=DIR_MODE, exist_ok=True)
    symbols = ",".join(SYMBOLS)
    # Every child verifies (or signs) the feed with the run's key and logs at the run's level.
    shared = ("--signing-key-file", str(key_file), "--log-level", run.log_level)
    run.phase = "starting the exchange"
    exchange, ready = await _spawn(
        children, "exchange", stderr_log(data_dir, "exchange"), "exchange", *shared,
        *("--port", "0", "--data-dir", str(exchange_dir), "--symbols", symbols),
        *("--tick-rate", str(run.tick_rate), "--ticks-per-frame", "100"),
        *("--max-ticks", str(ticks), "--heartbeat-interval", "0.25"),
        *("--admin-token-file", str(token_file), "--seed", "42", "--retention", str(ticks)),
    )  # fmt: skip
    base = f"http://127.0.0.1:{ready['port']}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        Proxy("exchange-ws", upstream=f"127.0.0.1:{ready['port']}") as proxy,
    ):

        async def exchange_fault(kind: str, seconds: float, rate: float) -> None:
            body = {"kind": kind, "duration": seconds, "rate": rate}
            async with http.post(f"{base}/admin/faults", json=body) as response:
                response.raise_for_status()

        run.phase = "starting the node"
        node, first = await _spawn(
            children, "node", stderr_log(data_dir, "node"), "node", *shared,
            *("--exchange-url", f"ws://127.0.0.1:{proxy.listen_port}/ws"),
            *("--data-dir", str(node_dir), "--symbols", symbols),
            *("--status-interval", "0.25", "--stale-after", "1.0", "--connect-timeout", "1.0"),
            *("--status-port", "0"),
        )  # fmt: skip
        _show_dashboard(console, first)
        assert node.stdout is not None  # noqa: S101
        # The trading path: a moving-average crossover on AAPL, orders to the exchange's API.
        run.phase = "starting the trader"
        trader, _ = await _spawn(
            children, "trader", stderr_log(data_dir, "trading"), "trade", *shared,
            *("--exchange-url", base, "--book", str(book_dir / "book.db")),
            *("--strategy", f"ma-aapl={_MA}", "--symbols", "AAPL"),
            *("--param", "fast=20", "--param", "slow=200", "--param", "qty=1"),
            *("--status-interval", "0.25", "--max-position", "10"),
        )  # fmt: skip
        assert trader.stdout is not None  # noqa: S101
        console.print(
            f"started: exchange (pid {exchange.pid}, port {ready['port']}), node (pid "
            f"{node.pid}), trader (pid {trader.pid}); they stop when the demo stops"
        )

        async def follow(stream: asyncio.StreamReader) -> None:
            async for line in _lines(stream):
                if line.get("event") == "status":
                    progress.on_node_status(line, time.monotonic())
                elif line.get("event") == "stopped":
                    run.stopped.update(line)
                elif line.get("event") == "ready":
                    _show_dashboard(console, line)

        async def follow_trading(stream: asyncio.StreamReader) -> None:
            async for line in _lines(stream):
                if line.get("event") == "status":
                    progress.trading = line
                elif line.get("event") == "stopped":
                    run.traded.update(line)

        async def poll_exchange(live: Live) -> None:
            # Paced by the screen, not by the faults: the numbers stay current during a fault.
            while True:
                before = progress.stored
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with http.get(f"{base}/api/status") as response:
                        # An injected api_errors fault answers 503: keep the last reading.
                        if response.status == 200:
                            status = await response.json()
                            progress.on_exchange_status(status, time.monotonic(), before)
                live.update(progress.render(time.monotonic()))
                await asyncio.sleep(_POLL_INTERVAL)

        async def reset() -> None:
            async with _toxic(proxy, "reset_peer", timeout=0):
                await asyncio.sleep(0.5)

        async def partition() -> None:
            async with _toxic(proxy, "blackhole"):
                await asyncio.sleep(2.0)

        async def drop() -> None:
            await proxy.disable()
            await asyncio.sleep(1.5)
            await proxy.enable()

        async def corrupt_frames() -> None:
            await exchange_fault("corrupt_frames", 2.0, 0.05)
            await asyncio.sleep(2.0)

        async def api_errors() -> None:
            # Half the order requests are processed, then answered 503: ambiguous outcomes.
            body = {"kind": "api_errors", "duration": 1.5, "rate": 0.5, "status": 503}
            async with http.post(f"{base}/admin/faults", json={**body, "phase": "after"}) as r:
                r.raise_for_status()
            await asyncio.sleep(1.5)

        async def bit_flips() -> None:
            down = proxy.add_toxic("corrupt", stream="downstream", rate=0.000_002)
            try:
                await asyncio.sleep(2.0)
            finally:
                proxy.remove_toxic(down.name)

        faults: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("connection reset", reset),
            ("partition 2 s", partition),
            ("connection dropped 1.5 s", drop),
            ("corrupted frames", corrupt_frames),
            ("order API 503 after processing", api_errors),
            ("bit flips on the wire", bit_flips),
        ]
        async with asyncio.TaskGroup() as tasks:
            follower = tasks.create_task(follow(node.stdout))
            trade_follower = tasks.create_task(follow_trading(trader.stdout))
            with Live(
                progress.render(time.monotonic()), console=console, refresh_per_second=8
            ) as live:
                poller = tasks.create_task(poll_exchange(live))
                progress.fault = run.phase = "none (warming up)"
                await asyncio.sleep(1.5)
                for name, inject in faults:
                    progress.fault = run.phase = f"fault: {name}"
                    await inject()
                    progress.faults_done.append(name)
                    progress.fault = run.phase = "none (recovering)"
                    await asyncio.sleep(1.5)
                progress.fault = run.phase = "none (catching up)"
                deadline = time.monotonic() + 60.0
                while time.monotonic() < deadline:
                    last = progress.exchange_last_seq
                    stored = progress.status.get("last_seq", {})
                    if progress.emitted >= ticks and all(
                        int(stored.get(s, 0)) >= n for s, n in last.items()
                    ):
                        break
                    await asyncio.sleep(_POLL_INTERVAL)
                progress.fault = run.phase = "none (stopping)"
                await children.stop(trader)
                await trade_follower
                await children.stop(node)
                await follower
                poller.cancel()
                live.update(progress.render(time.monotonic()))
        async with http.get(f"{base}/api/orders") as response:
            orders = await response.json()
        cids = [o["client_order_id"] for o in orders]
        run.traded["exchange_orders"] = len(cids)
        run.traded["duplicate_orders"] = len(cids) - len(set(cids))
