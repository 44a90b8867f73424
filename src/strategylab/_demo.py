"""``strategylab demo``: the market-data path under real faults, then an integrity check.

The exchange simulator runs as its own process, the ingesting node as another, and a fault proxy
(in this process) sits between them. While the exchange emits a fixed number of ticks, the demo
resets the connection, partitions it, drops it, corrupts frames at the exchange and flips bits on
the wire. Then it waits for the node to catch up, stops both processes, and compares the exchange's
log of every tick it emitted with the node's SQLite store and its acknowledgements. The exit code
is 0 only when nothing was lost, duplicated, corrupted or left missing.

**The data directory is the user's.** The demo clears only what it created: it writes a marker
(``.strategylab-demo``, listing the names it owns) into a directory it creates or finds empty, and
on a later run it clears only the entries that the marker lists, without following a symlink.
A non-empty directory without the marker is refused (exit 2, one line naming it).

**Its children never outlive it** (:mod:`strategylab._children`): each is tied to the demo's life
(``PR_SET_PDEATHSIG`` or a watchdog) and runs in its own process group. SIGTERM, SIGINT (Ctrl-C)
or SIGHUP stops them in order (trader, node, exchange), says what was interrupted and what state
is safe, and exits 128 + the signal number; a second signal kills them at once.

**Its numbers say what they are.** Rates are over the last :data:`RATE_WINDOW` seconds, not
lifetime averages. "Stored" is the node's count as of just before the exchange reported "emitted",
so it can never show above it. The link's state comes from the node's status lines *and* from
whether ticks are arriving, since during a partition the node still counts itself connected until
it declares the feed stale. Tables are laid out to fit the terminal (80 columns included) and
never cut a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape as markup_escape
from rich.table import Table

from strategylab._children import ChildGuard, ChildProcesses, cancel_on_signals
from strategylab._files import DIR_MODE, create_private_file, open_private
from strategylab._logging import escape
from strategylab._secrets import write_secret_file
from strategylab.chaos import CheckInputError, IntegrityReport, Proxy, check_sqlite
from strategylab.errors import StrategyLabError
from strategylab.market import StoreCorruptedError

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT")
_MA = "strategylab.strategy._builtin:MovingAverageCrossover"
_READY_TIMEOUT = 30.0

MARKER: Final = ".strategylab-demo"
"""The file that says a data directory is the demo's, and which of its entries the demo owns."""
OWNED: Final = (
    "exchange",
    "node",
    "trading",
    "exchange.log",
    "node.log",
    "trading.log",
    "signing.key",
    "admin.token",
)
"""Every name the demo creates in its data directory; nothing else there is ever removed."""
RATE_WINDOW: Final = 2.0
"""Seconds over which the live rates are measured."""
STALL_AFTER: Final = 1.0
"""Seconds without a stored tick, while ticks are due, after which the link is shown as silent."""
STATUS_STALE_AFTER: Final = 2.0
"""Seconds without a status line from the node after which its state is shown as unknown."""
_POLL_INTERVAL: Final = 0.25
_USAGE: Final = 2


class DemoError(StrategyLabError):
    """The demo could not set itself up (a child process did not start)."""


class DataDirError(StrategyLabError):
    """``--data-dir`` names a directory the demo must not clear (a usage error: exit 2)."""


# ------------------------------------------------------------------------------ data directory


def _marker_names(marker: Path) -> list[str]:
    """The owned names a marker lists; :class:`DataDirError` if it is not the demo's marker."""
    refused = DataDirError(
        f"{marker}: not a marker written by `strategylab demo`; refusing to clear {marker.parent}"
    )
    try:
        regular = stat.S_ISREG(marker.lstat().st_mode)  # a symlinked marker is not trusted
        data = json.loads(marker.read_text(encoding="utf-8")) if regular else None
    except (OSError, ValueError):
        raise refused from None
    names = data.get("owned") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("tool") != "strategylab demo":
        raise refused
    if not isinstance(names, list):
        raise refused
    # Only names the demo itself uses: a marker cannot make it delete "../x" or "/".
    return [name for name in names if name in OWNED]


def _remove(path: Path) -> None:
    """Remove ``path`` without following a symlink: a link is unlinked, never its target."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        # rmtree never follows a symlink inside the tree (and refuses one at the top).
        shutil.rmtree(path)
    else:
        path.unlink()


def _write_marker(data_dir: Path) -> None:
    marker = data_dir / MARKER
    create_private_file(marker)  # refuses a planted symlink
    body = {"tool": "strategylab demo", "owned": list(OWNED)}
    marker.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def prepare_data_dir(data_dir: Path) -> None:
    """Make ``data_dir`` ready for a fresh run without touching anything the demo did not create.

    A missing directory is created (0700) and an empty one adopted, each with the marker; in a
    directory carrying the marker, the entries it lists are removed (a symlink itself, never its
    target). Raises :class:`DataDirError`, naming the path, for a symlink, a non-directory, a
    non-empty directory without the marker, or a name the demo needs that it does not own.
    """
    try:
        info = data_dir.lstat()
    except FileNotFoundError:
        data_dir.mkdir(mode=DIR_MODE, parents=True)
        _write_marker(data_dir)
        return
    if stat.S_ISLNK(info.st_mode):
        raise DataDirError(f"{data_dir}: a symlink; give the directory it points to")
    if not stat.S_ISDIR(info.st_mode):
        raise DataDirError(f"{data_dir}: exists and is not a directory")
    entries = {entry.name for entry in os.scandir(data_dir)}
    if not entries:
        _write_marker(data_dir)
        return
    if MARKER not in entries:
        raise DataDirError(
            f"{data_dir}: not empty and not created by `strategylab demo` (no {MARKER}); "
            "refusing to clear it: give a new or empty directory"
        )
    for name in _marker_names(data_dir / MARKER):
        _remove(data_dir / name)
    foreign = sorted(name for name in OWNED if os.path.lexists(data_dir / name))
    if foreign:
        raise DataDirError(
            f"{data_dir / foreign[0]}: in the way and not created by `strategylab demo`; "
            "refusing to remove it"
        )
    _write_marker(data_dir)


# ------------------------------------------------------------------------------------ progress


def _rate(samples: Sequence[tuple[float, int]], now: float, window: float) -> float | None:
    """Count per second over the samples of the last ``window`` seconds; None until there are
    two samples at least half a window apart."""
    recent = [(t, n) for t, n in samples if now - t <= window]
    if len(recent) < 2 or recent[-1][0] - recent[0][0] < window / 2:
        return None
    (t0, n0), (t1, n1) = recent[0], recent[-1]
    return max(n1 - n0, 0) / (t1 - t0)


@dataclass
class _Progress:
    """What the live screen shows, fed with explicit times (so a test can replay any sequence)."""

    total: int
    window: float = RATE_WINDOW
    status: dict[str, Any] = field(default_factory=dict)
    """The node's latest status line."""
    status_at: float | None = None
    trading: dict[str, Any] = field(default_factory=dict)
    fault: str = "warming up"
    faults_done: list[str] = field(default_factory=list)
    emitted: int = 0
    emitted_at: float | None = None
    generating: bool = True
    exchange_last_seq: dict[str, int] = field(default_factory=dict)
    shown_stored: int = 0
    """The node's stored count as of just before the exchange reported :attr:`emitted`."""
    grew_at: float | None = None
    """When the node's stored count last grew."""
    stored_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    emitted_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def stored(self) -> int:
        """The node's stored count in its latest status line."""
        return int(self.status.get("ticks_stored", 0))

    def on_node_status(self, line: dict[str, Any], now: float) -> None:
        """A status line from the node."""
        if self.status_at is None or int(line.get("ticks_stored", 0)) > self.stored:
            self.grew_at = now
        self.status, self.status_at = line, now
        self.stored_samples.append((now, self.stored))

    def on_exchange_status(self, status: dict[str, Any], now: float, stored_before: int) -> None:
        """The exchange's ``/api/status``, asked after the node had stored ``stored_before``."""
        self.emitted = int(status.get("ticks_emitted", self.emitted))
        self.generating = bool(status.get("generating", self.generating))
        self.exchange_last_seq = {k: int(v) for k, v in status.get("last_seq", {}).items()}
        self.emitted_at = now
        self.emitted_samples.append((now, self.emitted))
        # Counts only grow and the node stores only what was emitted, so a count read before the
        # exchange was asked is <= what the exchange answers: the pair is consistent.
        self.shown_stored = stored_before

    def link(self, now: float) -> str:
        """The link to the exchange as the node's status lines and its progress show it."""
        if self.status_at is None:
            return "unknown (no status from the node yet)"
        age = now - self.status_at
        if age > STATUS_STALE_AFTER:
            return f"unknown (no status from the node for {age:.1f} s)"
        if not self.status.get("connected", False):
            return f"down, reconnecting ({self.status.get('reconnects', 0)} reconnects so far)"
        if not self.generating and self.shown_stored >= self.emitted:
            return "up, idle (every emitted tick is stored)"
        silent = now - (self.grew_at if self.grew_at is not None else self.status_at)
        if silent > STALL_AFTER:
            return f"silent for {silent:.1f} s (the node has not declared it stale yet)"
        return "up, ticks arriving"

    def render(self, now: float) -> Group:
        """The live screen."""
        s = self.status
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        emitted = f"{self.emitted:,} / {self.total:,}"
        if self.emitted_at is not None and now - self.emitted_at > STATUS_STALE_AFTER:
            emitted += f" (as of {now - self.emitted_at:.0f} s ago)"
        table.add_row("emitted by the exchange", emitted)
        table.add_row("stored by the node", f"{self.shown_stored:,}")
        window = f"{self.window:g} s"
        for label, samples in (
            (f"emitted/s, last {window}", self.emitted_samples),
            (f"stored/s, last {window}", self.stored_samples),
        ):
            rate = _rate(samples, now, self.window)
            table.add_row(label, "measuring" if rate is None else f"{rate:,.0f}")
        table.add_row("link to the exchange", self.link(now))
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


# ------------------------------------------------------------------------------------ children


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


@dataclass
class _Run:
    """What one run knows, for the report and for an interruption's account of itself."""

    data_dir: Path
    ticks: int
    tick_rate: int
    progress: _Progress
    stopped: dict[str, Any] = field(default_factory=dict)
    traded: dict[str, Any] = field(default_factory=dict)
    phase: str = "setting up"
    interrupted_during: str | None = None


async def _run(run: _Run, children: ChildProcesses, console: Console) -> int:
    data_dir = run.data_dir
    key, token = secrets.token_hex(32), secrets.token_hex(16)
    # Children get the secrets through 0600 files, never argv (/proc/PID/cmdline is public).
    key_file = write_secret_file(data_dir / "signing.key", key)
    token_file = write_secret_file(data_dir / "admin.token", token)
    try:
        try:
            await _run_children(
                run, children, console, token=token, key_file=key_file, token_file=token_file
            )
        except asyncio.CancelledError:
            run.interrupted_during = run.phase
            raise
        finally:
            run.phase = "stopping the processes"
            await children.aclose()
    finally:
        key_file.unlink(missing_ok=True)
        token_file.unlink(missing_ok=True)
    run.phase = "checking integrity"
    report = await _check(data_dir / "exchange", data_dir / "node")
    console.print()
    _print_report(console, report, run.stopped, run.progress.faults_done)
    _print_trading(console, run.traded)
    trading_ok = run.traded.get("duplicate_orders", 1) == 0 and run.traded.get("inflight", 1) == 0
    if report.ok and trading_ok:
        console.print("[green]zero lost, zero duplicated, zero corrupted, nothing missing")
        return 0
    console.print("[red]integrity check failed" if not report.ok else "[red]trading check failed")
    return 1


async def _run_children(  # noqa: C901, PLR0915 - one linear script, kept in one place
    run: _Run,
    children: ChildProcesses,
    console: Console,
    *,
    token: str,
    key_file: Path,
    token_file: Path,
) -> None:
    data_dir, ticks, progress = run.data_dir, run.ticks, run.progress
    exchange_dir, node_dir = data_dir / "exchange", data_dir / "node"
    trading_dir = data_dir / "trading"
    trading_dir.mkdir(mode=DIR_MODE, exist_ok=True)
    symbols = ",".join(SYMBOLS)
    run.phase = "starting the exchange"
    exchange, ready = await _spawn(
        children,
        "exchange",
        data_dir / "exchange.log",
        "exchange",
        *("--port", "0", "--data-dir", str(exchange_dir), "--symbols", symbols),
        *("--tick-rate", str(run.tick_rate), "--ticks-per-frame", "100"),
        *("--max-ticks", str(ticks)),
        *("--heartbeat-interval", "0.25", "--signing-key-file", str(key_file)),
        *("--admin-token-file", str(token_file)),
        *("--seed", "42", "--retention", str(ticks)),
    )
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
        node, _ = await _spawn(
            children,
            "node",
            data_dir / "node.log",
            "node",
            *("--exchange-url", f"ws://127.0.0.1:{proxy.listen_port}/ws"),
            *("--data-dir", str(node_dir), "--symbols", symbols),
            *("--signing-key-file", str(key_file)),
            *("--status-interval", "0.25", "--stale-after", "1.0", "--connect-timeout", "1.0"),
        )
        assert node.stdout is not None  # noqa: S101
        # The trading path: a moving-average crossover on AAPL, orders to the exchange's API.
        run.phase = "starting the trader"
        trader, _ = await _spawn(
            children, "trader", data_dir / "trading.log", "trade",
            *("--exchange-url", base, "--db", str(trading_dir / "book.db")),
            *("--strategy", f"ma-aapl={_MA}", "--symbols", "AAPL"),
            *("--params", json.dumps({"fast": 20, "slow": 200, "qty": 1})),
            *("--status-interval", "0.25", "--max-position", "10"),
            *("--signing-key-file", str(key_file)),
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


async def _check(exchange_dir: Path, node_dir: Path) -> IntegrityReport:
    # Read-only, like `strategylab check`: the demo's own store is evidence, not scratch.
    return await check_sqlite(
        exchange_dir / "emitted.log",
        node_dir / "ticks.db",
        node_dir / "acks.jsonl",
        require_complete=True,
    )


# -------------------------------------------------------------------------------------- report


def _width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(10_000)).maximum


def fitted_tables(
    console: Console,
    title: str,
    labels: Sequence[str],
    columns: Sequence[tuple[str, Sequence[str]]],
) -> list[Table]:
    """``labels`` down the side and ``columns`` across, as as many tables as it takes to fit the
    console's width: columns move to a further table rather than being squeezed, so a number is
    never wrapped or cut (``no_wrap``). Each column is ``(heading, one cell per label)``."""

    def build(part: Sequence[tuple[str, Sequence[str]]], heading: str) -> Table:
        table = Table(title=heading, box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("", no_wrap=True)
        for name, _cells in part:
            table.add_column(name, justify="right", no_wrap=True)
        for i, label in enumerate(labels):
            table.add_row(label, *(cells[i] for _name, cells in part))
        return table

    tables: list[Table] = []
    part: list[tuple[str, Sequence[str]]] = []
    for column in columns:
        wider = [*part, column]
        if part and _width(console, build(wider, title)) > console.width:
            tables.append(build(part, title if not tables else f"{title} (continued)"))
            part = [column]
        else:
            part = wider
    if part or not tables:
        tables.append(build(part, title if not tables else f"{title} (continued)"))
    return tables


_MEASURES: Final = (
    ("emitted", "emitted"),
    ("stored", "stored"),
    ("acknowledged", "acknowledged"),
    ("lost", "lost"),
    ("missing", "missing"),
    ("duplicated", "duplicated"),
    ("unexpected", "unexpected"),
    ("corrupted", "corrupted"),
    ("quarantined", "quarantined"),
    ("gaps", "gap_count"),
)


def integrity_tables(console: Console, report: IntegrityReport) -> list[Table]:
    """The integrity report, a row per measure and a column per symbol, fitted to the console."""
    columns: list[tuple[str, Sequence[str]]] = [
        (row.symbol, [f"{getattr(row, attr):,}" for _label, attr in _MEASURES])
        for row in report.symbols
    ]
    totals = [report.emitted, report.stored, report.acknowledged, report.lost.count,
              report.missing.count, report.duplicated.count, report.unexpected.count,
              report.corrupted.count, report.quarantined.count, report.gap_count]  # fmt: skip
    columns.append(("total", [f"{n:,}" for n in totals]))
    title = f"integrity: exchange log vs store ({report.elapsed_s:.2f} s)"
    return fitted_tables(console, title, [label for label, _attr in _MEASURES], columns)


def _two_columns(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right", no_wrap=True)
    for label, value in rows:
        table.add_row(label, value)
    return table


def _print_report(
    console: Console, report: IntegrityReport, stopped: dict[str, Any], faults: list[str]
) -> None:
    for table in integrity_tables(console, report):
        console.print(table)
    console.print(
        _two_columns(
            "feed and node",
            [
                (label, f"{stopped.get(key, 0):,}")
                for label, key in (
                    ("ticks stored", "ticks_stored"),
                    ("reconnects", "reconnects"),
                    ("CRC errors (frames dropped, then replayed)", "crc_errors"),
                    ("gaps detected and replayed", "gaps"),
                    ("duplicates dropped", "duplicates"),
                    ("invalid ticks quarantined", "invalid_ticks"),
                    ("ticks declared lost by the feed", "lost_ticks"),
                )
            ],
        )
    )
    console.print(f"faults injected: {', '.join(faults) or 'none'}")
    recovery = stopped.get("recovery", {})
    console.print(
        _two_columns(
            "recovery statistics (the node's ErrorRecoveryManager)",
            [
                ("errors reported", f"{recovery.get('errors', 0):,}"),
                (
                    "recoveries succeeded / failed",
                    f"{recovery.get('succeeded', 0):,} / {recovery.get('failed', 0):,}",
                ),
                ("success rate", f"{recovery.get('success_rate', 0.0):.0%}"),
                (
                    "recovery time p50 / p95 / p99 (ms)",
                    " / ".join(
                        f"{recovery.get(k, 0):,.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")
                    ),
                ),
            ],
        )
    )
    for label, counts in (
        ("recoveries by error type", recovery.get("by_type", {})),
        ("recoveries by strategy", recovery.get("by_strategy", {})),
    ):
        console.print(f"{label}: {_pairs(counts)}")
    sla = recovery.get("sla_compliance", {})
    console.print(
        "SLA compliance: " + (", ".join(f"{k} {v:.0%}" for k, v in sla.items()) or "none")
    )


def _print_trading(console: Console, traded: dict[str, Any]) -> None:
    rows = [
        (label, str(traded.get(key, "?")))
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
        )
    ]
    console.print(_two_columns("trading (moving-average crossover on AAPL)", rows))
    risk = f"{traded.get('risk_state', '?')} {traded.get('risk_reason', '')}".rstrip()
    positions = traded.get("positions", {})
    held = ", ".join(f"{s}: {q:g}" for p in positions.values() for s, q in p.items()) or "flat"
    lines = [f"risk state: {risk}", f"positions: {held}"]
    for strategy in traded.get("strategies", []):
        state = (
            "enabled"
            if strategy.get("enabled")
            else f"disabled ({strategy.get('disabled_reason')})"
        )
        lines.append(
            f"strategy {strategy.get('name')}: {state}, {strategy.get('failures', 0)} failures"
        )
    for line in lines:
        # Text from a child (a rejection reason, an exception): no markup, no control characters.
        console.print(markup_escape(escape(line)))


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "none"


def _shown(path: Path) -> str:
    """A path for the console: control characters escaped, no markup."""
    return markup_escape(escape(str(path)))


def _print_interrupted(
    console: Console, run: _Run, children: ChildProcesses, received: Sequence[signal.Signals]
) -> None:
    data_dir = run.data_dir
    console.line()  # the live display's last line may not end one
    phase = run.interrupted_during or run.phase
    console.print(f"[yellow]interrupted by {received[0].name} while {phase}")
    if not children.stopped:
        console.print("no process had been started yet: nothing to stop, nothing to check")
        return
    stops = ", ".join(f"{name} (exit {code})" for name, code in children.stopped)
    console.print(f"stopped, in this order: {stops}")
    started = {name for name, _code in children.stopped}
    killed = [name for name, code in children.stopped if code == -signal.SIGKILL]
    if killed:
        console.print(f"killed without a clean stop: {', '.join(killed)}")
    if "node" not in started:
        console.print("the node had not started: no tick was stored, nothing to check")
        return
    node = data_dir / "node"
    console.print(
        f"safe: every tick the node acknowledged is committed in {_shown(node / 'ticks.db')} "
        "(it acknowledges only after the commit, even when killed). The run is incomplete, so "
        "nothing was verified; check what was stored with:"
    )
    console.print(
        f"  strategylab check {_shown(data_dir / 'exchange' / 'emitted.log')} "
        f"{_shown(node / 'ticks.db')} --acks {_shown(node / 'acks.jsonl')}",
        soft_wrap=True,
    )
    if "trader" in started:
        console.print(
            "safe: the trading book is reconciled with the exchange's orders when a trader "
            "next starts."
        )
    console.print("The next demo run clears only what the demo created.")


async def _amain(run: _Run, console: Console, guard: ChildGuard) -> int:
    children = ChildProcesses(guard)
    with cancel_on_signals(on_repeat=children.kill) as received:
        try:
            return await _run(run, children, console)
        except asyncio.CancelledError:
            if not received:
                raise
            # Our own cancellation, from the signal handler: acknowledged, reported, and turned
            # into the conventional exit status.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            _print_interrupted(console, run, children, received)
            return 128 + int(received[0])


def _error(message: str) -> None:
    """One line on stderr: escaped, since it may carry a path, a child's or a peer's text."""
    sys.stderr.write(f"strategylab demo: error: {escape(message)}\n")


def run_demo(*, data_dir: Path, ticks: int, tick_rate: int) -> int:
    """Run the demonstration; 0 only when the integrity check finds nothing wrong, 2 for a data
    directory the demo must not clear, 128 + N when signal N interrupted it."""
    try:
        prepare_data_dir(data_dir)
    except DataDirError as exc:
        _error(f"--data-dir {exc}")
        return _USAGE
    except OSError as exc:
        _error(f"--data-dir {data_dir}: {exc.strerror or exc}")
        return 1
    console = Console()
    run = _Run(data_dir=data_dir, ticks=ticks, tick_rate=tick_rate, progress=_Progress(total=ticks))
    try:
        with ChildGuard() as guard:
            return asyncio.run(_amain(run, console, guard))
    except (OSError, TimeoutError, DemoError, CheckInputError, StoreCorruptedError) as exc:
        _error(str(exc))
        return 1
