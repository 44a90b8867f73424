"""``strategylab demo``: the market-data path under real faults, then an integrity check.

The exchange simulator runs as its own process, the ingesting node as another, and a fault proxy
(in this process) sits between them. While the exchange emits a fixed number of ticks, the demo
resets the connection, partitions it, drops it, corrupts frames at the exchange and flips bits on
the wire. Then it waits for the node to catch up, stops both processes, and compares the exchange's
log of every tick it emitted with the node's SQLite store and its acknowledgements. The exit code
is 0 only when nothing was lost, duplicated, corrupted or left missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape as markup_escape
from rich.table import Table

from strategylab._logging import escape
from strategylab._secrets import write_secret_file
from strategylab.chaos import IntegrityReport, Proxy, check
from strategylab.errors import StrategyLabError
from strategylab.market._sqlite_store import SQLiteTickStore

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT")
_MA = "strategylab.market._builtin_strategies:MovingAverageCrossover"
_READY_TIMEOUT = 30.0


class DemoError(StrategyLabError):
    """The demo could not set itself up (a child process did not start)."""


@dataclass
class _Progress:
    status: dict[str, Any] = field(default_factory=dict)
    trading: dict[str, Any] = field(default_factory=dict)
    fault: str = "warming up"
    faults_done: list[str] = field(default_factory=list)
    emitted: int = 0

    def render(self, total: int) -> Group:
        s = self.status
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("emitted by the exchange", f"{self.emitted:,} / {total:,}")
        table.add_row("stored by the node", f"{s.get('ticks_stored', 0):,}")
        table.add_row("ticks/s", f"{s.get('ticks_per_s', 0):,.0f}")
        table.add_row("connected", str(s.get("connected", False)))
        table.add_row("reconnects", str(s.get("reconnects", 0)))
        table.add_row("CRC errors / gaps", f"{s.get('crc_errors', 0)} / {s.get('gaps', 0)}")
        table.add_row("errors / recoveries", f"{s.get('errors', 0)} / {s.get('recoveries', 0)}")
        t = self.trading
        table.add_row(
            "orders sent / filled",
            f"{t.get('orders_sent', 0)} / {t.get('orders_filled', 0)} "
            f"(risk {t.get('risk_state', '?')})",
        )
        table.add_row("fault now", self.fault)
        table.add_row("faults done", ", ".join(self.faults_done) or "none yet")
        return Group(table)


async def _spawn(log: Path, *args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start a ``python -m`` child, its stderr (warnings) to ``log``; read its first JSON line."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    assert process.stdout is not None  # noqa: S101 - PIPE was asked for
    async with asyncio.timeout(_READY_TIMEOUT):
        line = await process.stdout.readline()
    if not line:
        code = await process.wait()
        raise DemoError(
            f"`strategylab {args[1]}` exited with {code} before it was ready; see {log}"
        )
    return process, json.loads(line)


async def _stop(process: asyncio.subprocess.Process, deadline: float = 30.0) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(deadline):
            return await process.wait()
    except TimeoutError:
        process.kill()
        return await process.wait()


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


async def _run(data_dir: Path, ticks: int, tick_rate: int, console: Console) -> int:
    exchange_dir, node_dir = data_dir / "exchange", data_dir / "node"
    trading_dir = data_dir / "trading"
    trading_dir.mkdir(parents=True, exist_ok=True)
    for stale in (exchange_dir, node_dir, trading_dir / "book.db"):
        shutil.rmtree(stale, ignore_errors=True)  # a new exchange numbers from 1 again
    for stale_book in trading_dir.glob("book.db*"):
        stale_book.unlink()
    for log in (data_dir / "exchange.log", data_dir / "node.log", data_dir / "trading.log"):
        log.unlink(missing_ok=True)
    key, token = secrets.token_hex(32), secrets.token_hex(16)
    # Children get the secrets through 0600 files, never argv (/proc/PID/cmdline is public).
    key_file = write_secret_file(data_dir / "signing.key", key)
    token_file = write_secret_file(data_dir / "admin.token", token)
    try:
        return await _run_children(
            data_dir,
            ticks,
            tick_rate,
            console,
            token=token,
            key_file=key_file,
            token_file=token_file,
        )
    finally:
        key_file.unlink(missing_ok=True)
        token_file.unlink(missing_ok=True)


async def _run_children(  # noqa: C901, PLR0915 - one linear script, kept in one place
    data_dir: Path,
    ticks: int,
    tick_rate: int,
    console: Console,
    *,
    token: str,
    key_file: Path,
    token_file: Path,
) -> int:
    exchange_dir, node_dir = data_dir / "exchange", data_dir / "node"
    trading_dir = data_dir / "trading"
    symbols = ",".join(SYMBOLS)
    exchange, ready = await _spawn(
        data_dir / "exchange.log",
        "strategylab",
        "exchange",
        *("--port", "0", "--data-dir", str(exchange_dir), "--symbols", symbols),
        *("--tick-rate", str(tick_rate), "--ticks-per-frame", "100", "--max-ticks", str(ticks)),
        *("--heartbeat-interval", "0.25", "--signing-key-file", str(key_file)),
        *("--admin-token-file", str(token_file)),
        *("--seed", "42", "--retention", str(ticks)),
    )
    base = f"http://127.0.0.1:{ready['port']}"
    progress = _Progress()
    stopped: dict[str, Any] = {}
    traded: dict[str, Any] = {}
    node: asyncio.subprocess.Process | None = None
    trader: asyncio.subprocess.Process | None = None
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        Proxy("exchange-ws", upstream=f"127.0.0.1:{ready['port']}") as proxy,
    ):

        async def exchange_status() -> dict[str, Any]:
            async with http.get(f"{base}/api/status") as response:
                status: dict[str, Any] = await response.json()
            progress.emitted = int(status.get("ticks_emitted", 0))
            return status

        async def exchange_fault(kind: str, seconds: float, rate: float) -> None:
            body = {"kind": kind, "duration": seconds, "rate": rate}
            async with http.post(f"{base}/admin/faults", json=body) as response:
                response.raise_for_status()

        try:
            node, _ = await _spawn(
                data_dir / "node.log",
                "strategylab",
                "node",
                *("--exchange-url", f"ws://127.0.0.1:{proxy.listen_port}/ws"),
                *("--data-dir", str(node_dir), "--symbols", symbols),
                *("--signing-key-file", str(key_file)),
                *("--status-interval", "0.25", "--stale-after", "1.0", "--connect-timeout", "1.0"),
            )
            assert node.stdout is not None  # noqa: S101
            # The trading path: a moving-average crossover on AAPL, orders to the exchange's API.
            trader, _ = await _spawn(
                data_dir / "trading.log",
                "strategylab", "trade",
                *("--exchange-url", base, "--db", str(trading_dir / "book.db")),
                *("--strategy", f"ma-aapl={_MA}", "--symbols", "AAPL"),
                *("--params", json.dumps({"fast": 20, "slow": 200, "qty": 1})),
                *("--status-interval", "0.25", "--max-position", "10"),
                *("--signing-key-file", str(key_file)),
            )  # fmt: skip
            assert trader.stdout is not None  # noqa: S101

            async def follow(stream: asyncio.StreamReader) -> None:
                async for raw in stream:
                    line = json.loads(raw)
                    if line.get("event") == "status":
                        progress.status = line
                    elif line.get("event") == "stopped":
                        stopped.update(line)

            async def follow_trading(stream: asyncio.StreamReader) -> None:
                async for raw in stream:
                    line = json.loads(raw)
                    if line.get("event") == "status":
                        progress.trading = line
                    elif line.get("event") == "stopped":
                        traded.update(line)

            faults: list[tuple[str, Callable[[], Awaitable[None]]]] = []

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

            faults = [
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
                with Live(progress.render(ticks), console=console, refresh_per_second=8) as live:

                    async def wait(seconds: float) -> None:
                        end = time.monotonic() + seconds
                        while time.monotonic() < end:
                            await exchange_status()
                            live.update(progress.render(ticks))
                            await asyncio.sleep(0.25)  # screen refresh pacing, not a stand-in

                    progress.fault = "none (warming up)"
                    await wait(1.5)
                    for name, inject in faults:
                        progress.fault = name
                        live.update(progress.render(ticks))
                        await inject()
                        progress.faults_done.append(name)
                        progress.fault = "none (recovering)"
                        await wait(1.5)
                    progress.fault = "none (catching up)"
                    deadline = time.monotonic() + 60.0
                    while time.monotonic() < deadline:
                        status = await exchange_status()
                        last = {k: int(v) for k, v in status.get("last_seq", {}).items()}
                        stored = progress.status.get("last_seq", {})
                        done = progress.emitted >= ticks and all(
                            int(stored.get(s, 0)) >= n for s, n in last.items()
                        )
                        live.update(progress.render(ticks))
                        if done:
                            break
                        await asyncio.sleep(0.25)
                    progress.fault = "none (stopping)"
                    live.update(progress.render(ticks))
                    await _stop(trader)
                    await trade_follower
                    await _stop(node)
                    await follower
            async with http.get(f"{base}/api/orders") as response:
                orders = await response.json()
            cids = [o["client_order_id"] for o in orders]
            traded["exchange_orders"] = len(cids)
            traded["duplicate_orders"] = len(cids) - len(set(cids))
        finally:
            for child in (trader, node):
                if child is not None and child.returncode is None:
                    await _stop(child)
            await _stop(exchange)

    report = await _check(exchange_dir, node_dir)
    console.print()
    _print_report(console, report, stopped, progress.faults_done)
    _print_trading(console, traded)
    trading_ok = traded.get("duplicate_orders", 1) == 0 and traded.get("inflight", 1) == 0
    if report.ok and trading_ok:
        console.print("[green]zero lost, zero duplicated, zero corrupted, nothing missing")
        return 0
    console.print("[red]integrity check failed" if not report.ok else "[red]trading check failed")
    return 1


async def _check(exchange_dir: Path, node_dir: Path) -> IntegrityReport:
    store = SQLiteTickStore(node_dir / "ticks.db", on_corruption="raise")
    await store.open()
    try:
        return await check(
            exchange_dir / "emitted.log", store, node_dir / "acks.jsonl", require_complete=True
        )
    finally:
        await store.aclose()


def _print_report(
    console: Console, report: IntegrityReport, stopped: dict[str, Any], faults: list[str]
) -> None:
    integrity = Table(title=f"integrity: exchange log vs store ({report.elapsed_s:.2f} s)")
    columns = {"emitted": "emitted", "stored": "stored", "acknowledged": "acked", "lost": "lost",
               "missing": "missing", "duplicated": "dup", "unexpected": "unexp",
               "corrupted": "corrupt", "gap_count": "gaps"}  # fmt: skip
    integrity.add_column("symbol")
    for heading in columns.values():
        integrity.add_column(heading, justify="right")
    for row in report.symbols:
        integrity.add_row(row.symbol, *(f"{getattr(row, c):,}" for c in columns))
    totals = [report.emitted, report.stored, report.acknowledged, report.lost.count,
              report.missing.count, report.duplicated.count, report.unexpected.count,
              report.corrupted.count, report.gap_count]  # fmt: skip
    integrity.add_row("total", *(f"{n:,}" for n in totals), style="bold")
    console.print(integrity)
    feed = Table(title="feed and node")
    feed.add_column("measure")
    feed.add_column("value", justify="right")
    for label, key in (
        ("ticks stored", "ticks_stored"),
        ("reconnects", "reconnects"),
        ("CRC errors (frames dropped, then replayed)", "crc_errors"),
        ("gaps detected and replayed", "gaps"),
        ("duplicates dropped", "duplicates"),
        ("invalid ticks quarantined", "invalid_ticks"),
        ("ticks declared lost by the feed", "lost_ticks"),
    ):
        feed.add_row(label, f"{stopped.get(key, 0):,}")
    feed.add_row("faults injected", ", ".join(faults))
    console.print(feed)
    recovery = stopped.get("recovery", {})
    table = Table(title="recovery statistics (the node's ErrorRecoveryManager)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("errors reported", str(recovery.get("errors", 0)))
    table.add_row("recoveries succeeded / failed", f"{recovery.get('succeeded', 0)} / "
                  f"{recovery.get('failed', 0)}")  # fmt: skip
    table.add_row("success rate", f"{recovery.get('success_rate', 0.0):.0%}")
    table.add_row(
        "recovery time p50 / p95 / p99 (ms)",
        f"{recovery.get('p50_ms', 0):.0f} / {recovery.get('p95_ms', 0):.0f} / "
        f"{recovery.get('p99_ms', 0):.0f}",
    )
    table.add_row("by error type", _pairs(recovery.get("by_type", {})))
    table.add_row("by strategy", _pairs(recovery.get("by_strategy", {})))
    table.add_row(
        "SLA compliance",
        ", ".join(f"{k} {v:.0%}" for k, v in recovery.get("sla_compliance", {}).items()),
    )
    console.print(table)


def _print_trading(console: Console, traded: dict[str, Any]) -> None:
    table = Table(title="trading (moving-average crossover on AAPL)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, key in (
        ("orders sent", "orders_sent"),
        ("orders filled", "orders_filled"),
        ("refused by the risk engine", "orders_rejected"),
        ("ambiguous outcomes (each resolved by asking the exchange)", "ambiguous"),
        ("resent with the same client order id", "resent"),
        ("still in flight at the end", "inflight"),
        ("open orders at the end", "open_orders"),
        ("orders at the exchange", "exchange_orders"),
        ("duplicate orders at the exchange", "duplicate_orders"),
    ):
        table.add_row(label, str(traded.get(key, "?")))
    table.add_row("risk state", f"{traded.get('risk_state', '?')} {traded.get('risk_reason', '')}")
    positions = traded.get("positions", {})
    table.add_row(
        "positions",
        ", ".join(f"{s}: {q:g}" for p in positions.values() for s, q in p.items()) or "flat",
    )
    for strategy in traded.get("strategies", []):
        state = (
            "enabled"
            if strategy.get("enabled")
            else f"disabled ({strategy.get('disabled_reason')})"
        )
        table.add_row(
            f"strategy {strategy.get('name')}", f"{state}, {strategy.get('failures', 0)} failures"
        )
    console.print(table)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "none"


def run_demo(*, data_dir: Path, ticks: int, tick_rate: int) -> int:
    """Run the demonstration; 0 only when the integrity check finds nothing wrong."""
    console = Console()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(data_dir, ticks, tick_rate, console))
    except (OSError, TimeoutError, DemoError) as exc:
        # The message may carry a child's or a peer's text: no markup, no control characters.
        console.print(f"[red]strategylab demo: error: {markup_escape(escape(str(exc)))}")
        return 1
