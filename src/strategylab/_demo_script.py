"""The demo's run: the exchange, the node and the trader as processes, and the seeded faults.

The exchange simulator runs as its own process, the ingesting node as another, the trader as a
third, and a fault proxy (in this process) sits between the node and the exchange. While the
exchange emits a fixed number of ticks, :func:`run_children` injects the schedule that
``--seed`` drew (:func:`strategylab._demo_faults.plan_faults`): on the feed track a connection
reset, a partition, the proxy down, corrupted frames and bit flips, each once the node has stored
its point's number of ticks; on the orders track, 503 after processing for exactly the next N
orders, once the trader has sent its point's number of orders. Every fault is a chaos
:class:`~strategylab.chaos.Injector` used through :func:`~strategylab.chaos.injected` with a
:class:`~strategylab.chaos.HealGuard`, so it is healed however the run ends (Ctrl-C included).
Then it waits for the node to catch up and the trader to resolve every ambiguous order, and stops
the trader and the node, newest first. The live screen (:mod:`strategylab._demo_live`) follows it.

Waits are on what the children report (status lines), never on the clock; the only durations are
the faults' own holds, which are parameters of the faults.

Each child writes its own log file under its data directory; its stderr (a crash's traceback
included) goes to a 0600 file beside it (:func:`strategylab._demo_dir.stderr_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.text import Text

from strategylab._children import ChildProcesses
from strategylab._demo_dir import stderr_log, trading_dir
from strategylab._demo_faults import (
    FaultRecord,
    FaultSchedule,
    PlannedFault,
    build_injector,
    plan_faults,
)
from strategylab._demo_live import Progress
from strategylab._files import DIR_MODE, open_private
from strategylab._layout import DataLayout
from strategylab._logging import escape
from strategylab.chaos import ApiErrors, HealGuard, InjectorError, Proxy, injected
from strategylab.errors import StrategyLabError

__all__ = ["SYMBOLS", "DemoError", "Run", "run_children"]

SYMBOLS: Final = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT")
_MA: Final = "ma_crossover"
_READY_TIMEOUT: Final = 30.0
_POLL_INTERVAL: Final = 0.25
_POINT_TIMEOUT: Final = 60.0
"""Seconds a fault waits for its point in the stream before it is skipped (and says so)."""
_STRUCK_TIMEOUT: Final = 30.0
"""Seconds an orders-track fault waits for the trader to count its ambiguous orders."""
_SETTLE_TIMEOUT: Final = 60.0
"""Seconds the end waits for the node to catch up and the trader to resolve every order."""


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
    seed: int = 42
    """``--seed``: draws the fault schedule, the exchange's market and the proxy's choices."""
    schedule: FaultSchedule | None = None
    faults: list[FaultRecord] = field(default_factory=list)
    """What the run did with each planned fault, in the order they ended."""
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


class _Watch:
    """What the children's status lines say, and a way to wait for it to say something.

    ``changed`` is notified on every status line (and when the run ends); :meth:`until` waits
    for a predicate over :attr:`progress` without polling the clock."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.changed = asyncio.Condition()
        self.over = False
        """Set when the stream is over and caught up: no further order or tick will come."""

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(
        self, predicate: Callable[[], bool], within: float, *, end_when_over: bool = True
    ) -> bool:
        """True once ``predicate()`` holds; False after ``within`` seconds, or as soon as the
        run is over when ``end_when_over``."""
        try:
            async with asyncio.timeout(within), self.changed:
                await self.changed.wait_for(lambda: predicate() or (end_when_over and self.over))
        except TimeoutError:
            return False
        return predicate()

    @property
    def stored(self) -> int:
        return self.progress.stored

    @property
    def connected(self) -> bool:
        return bool(self.progress.status.get("connected", False))

    def trading(self, key: str) -> int:
        return int(self.progress.trading.get(key, 0))

    def caught_up(self, ticks: int) -> bool:
        last = self.progress.exchange_last_seq
        stored = self.progress.status.get("last_seq", {})
        # Acknowledged is not yet in SQLite while the node's store is failed over to its spool
        # (a stalled write on a loaded machine): wait for the spool to drain back, too.
        status = self.progress.status
        drained = (
            status.get("store_state", "primary") == "primary"
            and int(status.get("spool_pending", 0)) == 0
        )
        return (
            drained
            and self.progress.emitted >= ticks
            and all(int(stored.get(s, 0)) >= n for s, n in last.items())
        )


@dataclass
class _Faults:
    """The schedule's two tracks, each fault injected through :func:`injected` on ``guard``."""

    run: Run
    watch: _Watch
    guard: HealGuard
    proxy: Proxy
    base: str
    token: str
    active: list[str] = field(default_factory=list)

    def _show(self) -> None:
        progress = self.run.progress
        if self.active:
            progress.fault = self.run.phase = "fault: " + " + ".join(self.active)
        else:
            progress.fault = self.run.phase = "none (between faults)"

    def _injector(self, fault: PlannedFault, index: int) -> Any:
        return build_injector(
            fault, proxy=self.proxy, exchange_url=self.base, admin_token=self.token, index=index
        )

    def _fed(self, fault: PlannedFault) -> bool:
        """The node has stored ``fault``'s point and is connected (so that one fault's
        recovery is not the next one's starting state)."""
        return self.watch.stored >= fault.at and self.watch.connected

    def _sent(self, fault: PlannedFault) -> bool:
        return self.watch.trading("orders_sent") >= fault.at

    def _counted(self, fault: PlannedFault, before: int) -> bool:
        return self.watch.trading("ambiguous") >= before + (fault.count or 0)

    def _done(self, record: FaultRecord, label: str) -> None:
        self.run.faults.append(record)
        if record.injected_at is not None:
            self.run.progress.faults_done.append(label)

    async def feed_track(self, schedule: FaultSchedule) -> None:
        """Each feed fault once the node has stored its point's ticks (and is connected, so
        that one fault's recovery is not the next one's starting state), held its duration."""
        watch = self.watch
        for index, fault in enumerate(schedule.faults):
            if fault.track != "feed":
                continue
            record = FaultRecord(planned=fault)
            reached = await watch.until(partial(self._fed, fault), _POINT_TIMEOUT)
            if not reached:
                record.note = f"skipped: the node had stored {watch.stored:,} ticks"
                self._done(record, fault.label)
                continue
            injector = self._injector(fault, index)
            record.injected_at = watch.stored
            self.active.append(fault.label)
            self._show()
            started = time.monotonic()
            try:
                async with injected(injector, self.guard):
                    # The fault's own duration (a parameter of the fault, drawn from the seed).
                    await asyncio.sleep(fault.hold)
            finally:
                record.held_s = time.monotonic() - started
                record.details = injector.describe()
                self.active.remove(fault.label)
                self._show()
            self._done(record, fault.label)

    async def orders_track(self, schedule: FaultSchedule) -> None:
        """Each orders fault once the trader has sent its point's orders; healed once the
        trader has counted its ``count`` ambiguous outcomes (or the stream is over)."""
        watch = self.watch
        for index, fault in enumerate(schedule.faults):
            if fault.track != "orders":
                continue
            record = FaultRecord(planned=fault)
            if not await watch.until(partial(self._sent, fault), _POINT_TIMEOUT):
                record.note = f"skipped: the trader sent {watch.trading('orders_sent')} orders"
                self._done(record, fault.label)
                continue
            injector = self._injector(fault, index)
            assert isinstance(injector, ApiErrors)  # noqa: S101 - the orders track's kind
            before = watch.trading("ambiguous")
            record.injected_at = watch.trading("orders_sent")
            self.active.append(fault.label)
            self._show()
            started = time.monotonic()
            try:
                async with injected(injector, self.guard):
                    counted = await watch.until(
                        partial(self._counted, fault, before), _STRUCK_TIMEOUT
                    )
                    record.struck = await _orders_struck(injector)
                    if not counted:
                        record.note = (
                            f"the trader counted {watch.trading('ambiguous') - before} of "
                            f"{fault.count} ambiguous orders"
                        )
            finally:
                record.held_s = time.monotonic() - started
                record.details = injector.describe()
                self.active.remove(fault.label)
                self._show()
            self._done(record, fault.label)


async def _orders_struck(injector: ApiErrors) -> int | None:
    """How many orders the exchange says the counted fault has chosen (None if unknown)."""
    try:
        faults = await injector.active_faults()
    except InjectorError:
        return None
    return next(
        (int(f.get("orders_struck", 0)) for f in faults if f.get("kind") == "api_errors"), None
    )


async def run_children(  # noqa: C901, PLR0915 - one linear script, kept in one place
    run: Run,
    children: ChildProcesses,
    console: Console,
    *,
    token: str,
    key_file: Path,
    token_file: Path,
) -> None:
    """Start the exchange, the node and the trader, inject the seed's schedule (healing every
    fault however the run ends), wait for the node to catch up and the trader to resolve every
    order, and stop them. Fills ``run`` (its schedule, fault records, the node's and the
    trader's final lines). Raises :class:`DemoError` when a child does not start."""
    data_dir, ticks, progress = run.data_dir, run.ticks, run.progress
    schedule = run.schedule = plan_faults(run.seed, ticks)
    layout = DataLayout(data_dir)
    exchange_dir, node_dir = layout.exchange_dir.root, layout.node_dir.root
    book_dir = trading_dir(data_dir)
    book_dir.mkdir(mode=DIR_MODE, exist_ok=True)
    symbols = ",".join(SYMBOLS)
    console.print(f"fault schedule (--seed {run.seed}):")
    for line in schedule.lines():
        console.print(Text(f"  {line}"), soft_wrap=True)
    # Every child verifies (or signs) the feed with the run's key and logs at the run's level.
    shared = ("--signing-key-file", str(key_file), "--log-level", run.log_level)
    run.phase = "starting the exchange"
    exchange, ready = await _spawn(
        children, "exchange", stderr_log(data_dir, "exchange"), "exchange", *shared,
        *("--port", "0", "--data-dir", str(exchange_dir), "--symbols", symbols),
        *("--tick-rate", str(run.tick_rate), "--ticks-per-frame", "100"),
        *("--max-ticks", str(ticks), "--heartbeat-interval", "0.25"),
        *("--admin-token-file", str(token_file), "--seed", str(run.seed)),
        *("--retention", str(ticks)),
    )  # fmt: skip
    base = f"http://127.0.0.1:{ready['port']}"
    guard = HealGuard()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        Proxy(
            "exchange-ws", upstream=f"127.0.0.1:{ready['port']}", rng=random.Random(run.seed)
        ) as proxy,
    ):
        run.phase = "starting the node"
        node, first = await _spawn(
            children, "node", stderr_log(data_dir, "node"), "node", *shared,
            *("--exchange-url", f"ws://127.0.0.1:{proxy.listen_port}/ws"),
            *("--data-dir", str(node_dir), "--symbols", symbols),
            *("--status-interval", "0.1", "--stale-after", "1.0", "--connect-timeout", "1.0"),
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
            *("--status-interval", "0.1", "--max-position", "10"),
        )  # fmt: skip
        assert trader.stdout is not None  # noqa: S101
        console.print(
            f"started: exchange (pid {exchange.pid}, port {ready['port']}), node (pid "
            f"{node.pid}), trader (pid {trader.pid}); they stop when the demo stops"
        )
        watch = _Watch(progress)

        async def follow(stream: asyncio.StreamReader) -> None:
            async for line in _lines(stream):
                if line.get("event") == "status":
                    progress.on_node_status(line, time.monotonic())
                    await watch.notify()
                elif line.get("event") == "stopped":
                    run.stopped.update(line)
                elif line.get("event") == "ready":
                    _show_dashboard(console, line)

        async def follow_trading(stream: asyncio.StreamReader) -> None:
            async for line in _lines(stream):
                if line.get("event") == "status":
                    progress.trading = line
                    await watch.notify()
                elif line.get("event") == "stopped":
                    run.traded.update(line)

        async def poll_exchange(live: Live) -> None:
            # Paced by the screen, not by the faults: the numbers stay current during a fault.
            while True:
                before = progress.stored
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with http.get(f"{base}/api/status") as response:
                        if response.status == 200:
                            status = await response.json()
                            progress.on_exchange_status(status, time.monotonic(), before)
                            await watch.notify()
                live.update(progress.render(time.monotonic()))
                await asyncio.sleep(_POLL_INTERVAL)

        faults = _Faults(run=run, watch=watch, guard=guard, proxy=proxy, base=base, token=token)
        try:
            async with asyncio.TaskGroup() as tasks:
                follower = tasks.create_task(follow(node.stdout))
                trade_follower = tasks.create_task(follow_trading(trader.stdout))
                with Live(
                    progress.render(time.monotonic()), console=console, refresh_per_second=8
                ) as live:
                    poller = tasks.create_task(poll_exchange(live))
                    progress.fault = run.phase = "none (warming up)"
                    orders = tasks.create_task(faults.orders_track(schedule))
                    await faults.feed_track(schedule)
                    progress.fault = run.phase = "none (catching up)"
                    await watch.until(lambda: watch.caught_up(ticks), _SETTLE_TIMEOUT)
                    watch.over = True
                    await watch.notify()
                    await orders
                    progress.fault = run.phase = "none (resolving orders)"
                    watch.over = False
                    await watch.until(
                        lambda: watch.trading("unresolved") == 0 and watch.trading("inflight") == 0,
                        _SETTLE_TIMEOUT,
                    )
                    progress.fault = run.phase = "none (stopping)"
                    await children.stop(trader)
                    await trade_follower
                    await children.stop(node)
                    await follower
                    poller.cancel()
                    live.update(progress.render(time.monotonic()))
        finally:
            # injected() healed each fault already; this is for a fault caught mid-inject.
            for name, exc in await guard.heal_all():
                console.print(Text(f"could not heal {name}: {exc}"), soft_wrap=True)
        async with http.get(f"{base}/api/orders") as response:
            orders_at_exchange = await response.json()
        cids = [o["client_order_id"] for o in orders_at_exchange]
        run.traded["exchange_orders"] = len(cids)
        run.traded["duplicate_orders"] = len(cids) - len(set(cids))
