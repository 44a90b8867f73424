"""Operations: supervisor restarts, the kill switch, ``/metrics`` scrapes and what the operations
layer costs the ingest path, side by side in one run.

Run (after ``pip install -e .``)::

    python bench/operations.py           # 100 crashes, 20 kills, 500 scrapes, 1,000,000 ticks x3
    python bench/operations.py --quick   # 20 crashes, 3 kills, 100 scrapes, 200,000 ticks x2 (CI)
    python bench/operations.py --only kill --only metrics   # some of the cases
    python bench/operations.py --only throughput --ticks 400000 --runs 5

Every process is the real one: the exchange simulator (``strategylab exchange``, emitting as fast
as the node takes ticks) and the node (``strategylab node``) run as their own processes, as a user
runs them (the throughput case runs the node in this process, as ``bench/ingest.py`` does). Cases:

1. **supervisor**: a :class:`~strategylab.fault_tolerance.Supervisor` (``one_for_one``, in this
   process) supervises a real child OS process, a tiny Python TCP server whose readiness probe is
   :func:`~strategylab.fault_tolerance.tcp_ready`. The child is SIGKILLed again and again; each
   figure is from the ``kill()`` to the moment the supervisor has a new child observed healthy (its
   probe passed), the spawn of a fresh interpreter included. The restart intensity is set above
   the number of crashes (``intensity = crashes + 1`` within an hour) and the backoff to 0 s: the
   benchmark measures the restart machinery, not a policy's waiting (the default backoff adds
   10 ms to a first restart, doubling within the intensity period).
2. **kill switch**: ``strategylab node --status-port 0`` (admin token in its environment) with the
   default ``--max-queue`` (200,000) and a store that is the bottleneck (``--batch-size 500``: one
   fsync'd commit per 500 ticks), so that the ingest queue is (nearly) full when
   ``POST /admin/kill`` pulls the switch. Per kill: trigger → trading halted (from the kill report
   the node prints: its steps up to and including ``halt``), trigger → process exited with
   ``snapshot.json`` and ``UNCLEAN_SHUTDOWN`` written (wall clock here, from before the POST), and
   restart → ingest resumed (the same command spawned again on the same data directory, until its
   first status line with a tick stored; status lines every 20 ms). The restart after kill *i* is
   the node of kill *i+1*. Rows in parentheses break the figures down (each step of the report,
   the POST's round trip, the restarted process's first lines).
3. **/metrics**: ``GET /metrics`` scraped back to back while the node ingests at full rate, each
   scrape followed by ``GET /health/live``, which renders nothing: the floor any request meets in
   the node's busy event loop.
4. **throughput**: ingest throughput as ``bench/ingest.py`` measures "direct" (exchange process →
   feed → SQLite, from ``start()`` until every emitted tick is committed) for nodes that differ
   only in the operations layer: ``off`` (the node without it: no health monitor, supervisor,
   degradation or status service), ``monitor`` (as the node runs without ``--status-port``; full
   run only) and ``on`` (with the status service, ``status_port=0``). The variants alternate
   (off, on, off, on, ...) and each keeps its best run; ticks per CPU second of this process is
   shown beside ticks per second as a cross-check less sensitive to waiting for a core.

A case whose part is not built yet prints ``not available: <what>`` and its goals are MISSED with
that reason. Figures are milliseconds unless marked; percentiles are nearest-rank (the p99 of
fewer than 100 samples is their maximum). Goals marked "(cross-check)" are not the issue's own.
The exit status is 0 whatever the figures unless ``--check`` is given: then 1 when a goal is
missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from strategylab.fault_tolerance import (
    ChildSpec,
    ChildStatus,
    ProcessChild,
    RestartOutcome,
    Supervisor,
    SupervisorSnapshot,
    tcp_ready,
)

SYMBOLS: Final = ("AAA", "BBB", "CCC", "DDD")
KEY: Final = "6b6579"  # "key", hex; the children get it in their environment, never on argv
BATCH: Final = 20_000
CASES: Final = ("supervisor", "kill", "metrics", "throughput")
STATUS_INTERVAL: Final = 0.02
"""Seconds between the node's status lines (the resolution of "ingest resumed")."""
LIMIT: Final = 30.0
"""Real seconds any one wait may take before the benchmark gives up on that case."""
KILL_QUEUE: Final = 200_000
KILL_NODE_ARGS: Final = ("--max-queue", str(KILL_QUEUE), "--batch-size", "500")
"""The default queue bound (200,000 ticks) and a store that is the bottleneck (one fsync'd commit
per 500 ticks), so that the queue is full when the switch is pulled."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    """How much each case does."""

    crashes: int
    kills: int
    scrapes: int
    ticks: int
    runs: int
    variants: tuple[str, ...]
    """The throughput case's nodes (keys of :data:`VARIANTS`)."""


FULL: Final = Sizes(
    crashes=100,
    kills=20,
    scrapes=500,
    ticks=1_000_000,
    runs=3,
    variants=("off", "monitor", "on"),
)
QUICK: Final = Sizes(
    crashes=20, kills=3, scrapes=100, ticks=200_000, runs=2, variants=("off", "on")
)


class NotAvailableError(Exception):
    """A part a case measures is not there (yet): the message says which."""


# ------------------------------------------------------------------------------- figures


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(slots=True)
class Series:
    """Samples of one measured figure, in seconds."""

    name: str
    samples: list[float] = dataclasses.field(default_factory=list)

    def row(self) -> str:
        """A table row: n, p50, p99, max in milliseconds."""
        if not self.samples:
            return f"| {self.name} | 0 | - | - | - |"
        ms = [s * 1e3 for s in self.samples]
        return (
            f"| {self.name} | {len(ms)} | {percentile(ms, 50):,.1f} | "
            f"{percentile(ms, 99):,.1f} | {max(ms):,.1f} |"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Goal:
    """One goal of the issue: ``measured`` (None: not measured) against ``limit``."""

    label: str
    measured: float | None
    limit: float
    unit: str
    at_least: bool = False
    """True when the figure must be at least ``limit`` (a ratio), else at most."""
    note: str = ""
    judged: bool = True
    """False for a cross-check: shown, but not counted by ``--check``."""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def row(self) -> str:
        if self.measured is None:
            figure, verdict = f"not available: {self.note}", "MISSED"
        else:
            figure = f"{self.measured:,.1f} {self.unit}".rstrip()
            verdict = "MET" if self.met else "MISSED"
        return f"| {self.label} | {figure} | {verdict} |"


def p99(series: Series) -> float | None:
    return percentile(series.samples, 99) * 1e3 if series.samples else None


# ------------------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "STRATEGYLAB_SIGNING_KEY": KEY, **extra}


class Child:
    """A ``python -m strategylab ...`` process whose JSON stdout lines are read as they come,
    each with the ``time.perf_counter()`` it was read at."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.stderr: collections.deque[str] = collections.deque(maxlen=20)
        """The last lines of its stderr (drained all along: a full pipe would block it)."""
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._errors = asyncio.create_task(self._read_stderr())

    @classmethod
    async def spawn(cls, *args: str, env: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "strategylab",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process)

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict):
                    self.lines.append((time.perf_counter(), data))
            self._new.set()
        self._new.set()

    async def _read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # a line over the stream's limit: its rest is skipped
                continue
            if not line:
                return
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def line(
        self, predicate: Callable[[dict[str, Any]], bool], *, start: int = 0
    ) -> tuple[float, dict[str, Any]]:
        """The first line from index ``start`` on that ``predicate`` accepts, with its time.

        Raises :class:`NotAvailableError` when the process ends first (its stderr's last line).
        """
        seen = start
        while True:
            for at, data in self.lines[seen:]:
                if predicate(data):
                    return at, data
            seen = len(self.lines)
            if self._reader.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self.process.wait()
                        await self._errors
                last = self.stderr[-1] if self.stderr else ""
                raise NotAvailableError(f"strategylab exited {self.process.returncode}: {last}")
            self._new.clear()
            await self._new.wait()

    async def wait(self) -> int:
        code = await self.process.wait()
        await asyncio.gather(self._reader, self._errors)
        return code

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.gather(self._reader, self._errors)


async def start_exchange(root: Path, *, max_ticks: int | None = None) -> tuple[Child, int]:
    """The exchange process, emitting as fast as taken; its port."""
    args = [
        "exchange",
        *("--port", "0", "--data-dir", str(root), "--symbols", ",".join(SYMBOLS)),
        *("--tick-rate", "0", "--ticks-per-frame", "500", "--heartbeat-interval", "0.5"),
        # Per symbol: every tick of a throughput run, or more than a killed node's queue held.
        *("--retention", str(max_ticks or KILL_QUEUE)),
    ]
    if max_ticks is not None:
        args += ["--max-ticks", str(max_ticks)]
    exchange = await Child.spawn(*args, env=_env())
    try:
        async with asyncio.timeout(LIMIT):
            _, ready = await exchange.line(lambda d: "port" in d)
    except BaseException:
        await exchange.stop()
        raise
    return exchange, int(ready["port"])


async def start_node(
    data_dir: Path, port: int, token: str, *extra: str
) -> tuple[Child, str, float]:
    """A ``strategylab node`` with the status service on a free port and the admin token in its
    environment; its status URL and the time it was spawned."""
    spawned = time.perf_counter()
    node = await Child.spawn(
        "node",
        *("--exchange-url", f"http://127.0.0.1:{port}", "--data-dir", str(data_dir)),
        *("--symbols", ",".join(SYMBOLS), "--status-interval", str(STATUS_INTERVAL)),
        *("--status-port", "0"),
        *extra,
        env=_env(STRATEGYLAB_ADMIN_TOKEN=token),
    )
    try:
        async with asyncio.timeout(LIMIT):
            _, ready = await node.line(lambda d: d.get("event") == "ready" and "status_url" in d)
    except NotAvailableError as exc:
        await node.stop()
        raise NotAvailableError(f"strategylab node --status-port ({exc})") from None
    except TimeoutError:
        await node.stop()
        raise NotAvailableError(
            'strategylab node: no {"event": "ready", "status_url": ...} line'
        ) from None
    return node, str(ready["status_url"]).rstrip("/"), spawned


def _stored(data: dict[str, Any]) -> int:
    return int(data.get("ticks_stored", 0)) if data.get("event") == "status" else 0


# --------------------------------------------------------------------------- 1. supervisor

_SERVER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"""


async def bench_supervisor(crashes: int) -> tuple[Series, Series, list[str]]:
    """SIGKILL a supervised TCP server ``crashes`` times; crash → observed healthy again, as seen
    here and as the supervisor's own record says (exit observed → ready)."""
    port = _free_port()
    probe = tcp_ready("127.0.0.1", port)
    spec = ChildSpec(
        id="server",
        start=ProcessChild(argv=(sys.executable, "-c", _SERVER, str(port)), ready=probe),
        shutdown=2.0,
    )
    supervisor = Supervisor(
        [spec],
        name="bench",
        strategy="one_for_one",
        intensity=crashes + 1,  # the run's crashes must not escalate
        period=3600.0,
        backoff=lambda _restart: 0.0,
    )
    observed, recorded = (
        Series("crash → observed healthy (here)"),
        Series("exit observed → ready (supervisor's record)"),
    )
    notes: list[str] = []
    await supervisor.start()
    try:
        for i in range(crashes):
            pid = supervisor.snapshot().children[0].pid
            assert pid is not None

            def restarted(snap: SupervisorSnapshot, after: int = i) -> bool:
                child = snap.children[0]
                return snap.restarts_total > after and child.status is ChildStatus.RUNNING

            started = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(LIMIT):
                snap = await supervisor.wait_for(restarted)
            observed.samples.append(time.perf_counter() - started)
            record = snap.history[-1]
            if record.recovery_seconds is not None:
                recorded.samples.append(record.recovery_seconds)
            if not await probe():
                notes.append(f"crash {i}: the supervisor said ready but the port refused")
            if snap.children[0].pid == pid:
                notes.append(f"crash {i}: the same PID {pid} after the restart")
        history = supervisor.snapshot().history
        failed = sum(r.outcome is RestartOutcome.START_FAILED for r in history)
        if failed:
            notes.append(f"{failed} restarts failed to start and were retried")
    finally:
        await supervisor.stop()
    return observed, recorded, notes


# -------------------------------------------------------------------------- 2. kill switch


def _kill_report(data: dict[str, Any]) -> dict[str, Any] | None:
    """The kill report in a line, wherever the node put it (a dict with a ``steps`` list)."""
    if isinstance(data.get("steps"), list):
        return data
    for value in data.values():
        if isinstance(value, dict) and (found := _kill_report(value)) is not None:
            return found
    return None


def halt_seconds(report: dict[str, Any]) -> float | None:
    """Trigger → trading halted from a kill report's ``to_dict()``: its steps run one after the
    other from the trigger, so the steps up to and including ``halt`` (or the first one whose name
    starts with it); None when there is no such step."""
    total = 0.0
    for step in report["steps"]:
        total += float(step.get("duration_ms", 0.0)) / 1e3
        if str(step.get("name", "")).startswith("halt"):
            return total
    return None


@dataclasses.dataclass(slots=True)
class KillFigures:
    halt: Series = dataclasses.field(default_factory=lambda: Series("trigger → trading halted"))
    exited: Series = dataclasses.field(
        default_factory=lambda: Series("trigger → exited, snapshot + marker written")
    )
    resumed: Series = dataclasses.field(
        default_factory=lambda: Series("restart → first new tick stored")
    )
    post: Series = dataclasses.field(
        default_factory=lambda: Series("(POST /admin/kill round trip)")
    )
    post_halt: Series = dataclasses.field(
        default_factory=lambda: Series("(POST sent → halted, upper bound: round trip + halt)")
    )
    report: Series = dataclasses.field(
        default_factory=lambda: Series("(trigger → marker written, the report's duration)")
    )
    fresh_started: Series = dataclasses.field(
        default_factory=lambda: Series("(first start, nothing to resume → started line)")
    )
    restart_started: Series = dataclasses.field(
        default_factory=lambda: Series("(restart → started line)")
    )
    restart_ready: Series = dataclasses.field(
        default_factory=lambda: Series("(restart → ready line, status service up)")
    )
    steps: dict[str, Series] = dataclasses.field(default_factory=dict)
    """Each kill step's own duration, by step name."""
    queued: list[int] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


async def _ingesting(node: Child, at_least: int = 1) -> tuple[float, dict[str, Any]]:
    async with asyncio.timeout(LIMIT):
        return await node.line(lambda d: _stored(d) >= at_least)


async def bench_kill(root: Path, kills: int) -> KillFigures:
    """Pull the kill switch ``kills`` times over HTTP, restarting the node each time.

    Raises :class:`NotAvailableError` when the first node cannot be started or killed; a later
    failure ends the case with the figures so far and a note.
    """
    figures = KillFigures()
    exchange, port = await start_exchange(root / "exchange")
    token = secrets.token_urlsafe(24)
    data_dir = root / "node"
    node: Child | None = None
    try:
        async with aiohttp.ClientSession() as http:
            killer = _Killer(http, token, data_dir, figures)
            node, url, spawned = await start_node(data_dir, port, token, *KILL_NODE_ARGS)
            for i in range(kills + 1):
                try:
                    at, _ = await _ingesting(node)
                    _record_start(node, spawned, at, i, figures)
                    if i == kills:
                        break
                    await _fill_queue(node)
                    figures.queued.append(max((_queued(d) for _, d in node.lines[-3:]), default=0))
                    await killer.kill(node, url, i)
                    node, url, spawned = await start_node(data_dir, port, token, *KILL_NODE_ARGS)
                except (NotAvailableError, TimeoutError) as exc:
                    if i == 0:
                        raise
                    figures.notes.append(f"run {i} ended the case: {exc or 'timed out'}")
                    break
    finally:
        if node is not None:
            await node.stop()
        await exchange.stop()
    db = data_dir / "ticks.db"
    if db.exists():
        figures.notes.append(
            f"the store grew to {db.stat().st_size / 1e6:,.0f} MB over the run; a start runs "
            "PRAGMA quick_check over all of it, so later restarts take longer"
        )
    return figures


def _record_start(
    node: Child, spawned: float, ingesting: float, i: int, figures: KillFigures
) -> None:
    """The figures of node start ``i`` (0: the first, else the restart after kill ``i - 1``)."""

    def seen(event: str) -> float | None:
        return next((t - spawned for t, d in node.lines if d.get("event") == event), None)

    if i == 0:
        first = seen("started")
        if first is not None:
            figures.fresh_started.samples.append(first)
        return
    figures.resumed.samples.append(ingesting - spawned)
    for series, event in ((figures.restart_started, "started"), (figures.restart_ready, "ready")):
        at = seen(event)
        if at is not None:
            series.samples.append(at)
    if seen("resumed") is None:
        figures.notes.append(f'restart {i}: no {{"event": "resumed"}} line')


async def _fill_queue(node: Child) -> None:
    """Wait until a status line shows the queue at least 90 % full, for at most 5 s."""
    start = len(node.lines)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5.0):
            await node.line(lambda d: _queued(d) >= 0.9 * KILL_QUEUE, start=start)


def _queued(data: dict[str, Any]) -> int:
    return int(data.get("queued", 0)) if data.get("event") == "status" else 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Killer:
    """Pulls one node's kill switch over HTTP and records the figures."""

    http: aiohttp.ClientSession
    token: str
    data_dir: Path
    figures: KillFigures

    async def kill(self, node: Child, url: str, i: int) -> None:
        figures = self.figures
        before = len(node.lines)
        wall = time.time()
        started = time.perf_counter()
        async with self.http.post(
            f"{url}/admin/kill",
            json={"reason": f"bench kill {i}"},
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            if response.status >= 300:
                body = (await response.text())[:200]
                await node.stop()
                raise NotAvailableError(f"POST /admin/kill answered {response.status}: {body}")
        figures.post.samples.append(time.perf_counter() - started)
        async with asyncio.timeout(LIMIT):
            code = await node.wait()
        exited = time.perf_counter() - started
        files = (self.data_dir / "snapshot.json", self.data_dir / "UNCLEAN_SHUTDOWN")
        if all(p.exists() and p.stat().st_mtime >= wall - 1 for p in files):
            figures.exited.samples.append(exited)
        else:
            figures.notes.append(
                f"kill {i}: snapshot.json or UNCLEAN_SHUTDOWN missing (exit {code})"
            )
        report = next(
            (r for _, d in node.lines[before:] if (r := _kill_report(d)) is not None), None
        )
        halt = None if report is None else halt_seconds(report)
        if report is not None:
            figures.report.samples.append(float(report.get("duration_ms", 0.0)) / 1e3)
            for step in report["steps"]:
                name = str(step.get("name"))
                series = figures.steps.setdefault(name, Series(f"(step {name})"))
                series.samples.append(float(step.get("duration_ms", 0.0)) / 1e3)
                if step.get("outcome") != "ok":
                    figures.notes.append(f"kill {i}: step {name} {step.get('outcome')}")
        if halt is None:
            figures.notes.append(f"kill {i}: no kill report with a halt step on stdout")
        else:
            figures.halt.samples.append(halt)
            figures.post_halt.samples.append(figures.post.samples[-1] + halt)


# ------------------------------------------------------------------------------ 3. metrics


async def bench_metrics(root: Path, scrapes: int) -> tuple[Series, Series, list[str]]:
    """``GET /metrics`` ``scrapes`` times while the node ingests at full rate, each followed by a
    ``GET /health/live`` (a handler that renders nothing: the floor the node's busy event loop
    sets for any request)."""
    metrics, live = Series("GET /metrics while ingesting"), Series("(GET /health/live, the floor)")
    notes: list[str] = []
    exchange, port = await start_exchange(root / "exchange")
    try:
        node, url, _ = await start_node(root / "node", port, secrets.token_urlsafe(24))
        try:
            await _ingesting(node)
            first, began = max(_stored(d) for _, d in node.lines), time.perf_counter()
            body = b""
            async with aiohttp.ClientSession() as http:
                for _ in range(scrapes):
                    for path, series in (("/metrics", metrics), ("/health/live", live)):
                        started = time.perf_counter()
                        async with http.get(f"{url}{path}") as response:
                            data = await response.read()
                        series.samples.append(time.perf_counter() - started)
                        if response.status != 200:
                            raise NotAvailableError(f"GET {path} answered {response.status}")
                        if path == "/metrics":
                            body = data
            span = time.perf_counter() - began
            last = max(_stored(d) for _, d in node.lines)
            if b"strategylab_" not in body:
                notes.append("the scrape has no strategylab_ metric")
            notes.append(
                f"{len(body):,} bytes per scrape; the node stored {last - first:,} ticks "
                f"meanwhile ({(last - first) / span:,.0f} ticks/s)"
            )
        finally:
            await node.stop()
    finally:
        await exchange.stop()
    return metrics, live, notes


# --------------------------------------------------------------------------- 4. throughput

VARIANTS: Final = {
    "off": "operations layer off (no health monitor, supervisor or status service)",
    "monitor": "health monitor + supervisor + degradation, no status service",
    "on": "status service + health monitor ON (as --status-port 0 runs)",
}
"""The throughput case's nodes: ``off`` is the node without the operations layer issue 11 added
(its ``_start_operations`` skipped), ``monitor`` the node as it runs without ``--status-port``,
``on`` the node with its status service."""


def _node_class(variant: str) -> type[Any]:
    from strategylab.node import Node  # noqa: PLC0415 - only this case needs it

    if variant != "off":
        return Node
    if not hasattr(Node, "_start_operations"):
        raise NotAvailableError("Node._start_operations (a node without its operations layer)")

    class BareNode(Node):
        """The node as it was before the operations layer: feed → ingestor → store only."""

        async def _start_operations(self) -> None:
            return None

    return BareNode


async def _ingest_run(root: Path, ticks: int, variant: str) -> tuple[float, float]:
    """Ticks per second, node start → every emitted tick committed (bench/ingest.py's direct),
    and ticks per CPU second of this process (the node's threads included) over the same span."""
    from strategylab.node import NodeConfig  # noqa: PLC0415 - only this case needs it

    shutil.rmtree(root, ignore_errors=True)
    node_class = _node_class(variant)
    exchange, port = await start_exchange(root / "exchange", max_ticks=ticks)
    try:
        config = NodeConfig(
            exchange_url=f"ws://127.0.0.1:{port}/ws",
            symbols=SYMBOLS,
            data_dir=root / "node",
            signing_key=bytes.fromhex(KEY),
            batch_size=BATCH,
            stale_after=5.0,
            status_port=0 if variant == "on" else None,
        )
        node = node_class(config)
        async with aiohttp.ClientSession() as http:
            started, cpu = time.perf_counter(), time.process_time()
            await node.start()
            try:
                if (node.status_url is not None) != (variant == "on"):
                    raise NotAvailableError(f"{variant}: status_url is {node.status_url!r}")
                if (node.health_monitor is not None) != (variant != "off"):
                    raise NotAvailableError(f"{variant}: health monitor {node.health_monitor!r}")
                status_url = f"http://127.0.0.1:{port}/api/status"
                while True:
                    async with http.get(status_url) as response:
                        status = await response.json()
                    if status["ticks_emitted"] >= ticks:
                        break
                    await asyncio.sleep(0.05)  # polling the exchange, not standing in for work
                await node.wait_caught_up(status["last_seq"], timeout=300)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu
            finally:
                await node.aclose()
    finally:
        await exchange.stop()
    return ticks / elapsed, ticks / cpu


async def bench_throughput(
    root: Path, ticks: int, runs: int, variants: Sequence[str]
) -> dict[str, list[tuple[float, float]]]:
    """The ``variants`` in turn (off, monitor, on, off, ...) ``runs`` times each; every run's
    (ticks/s, ticks per CPU second)."""
    rates: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
    # The node in this process logs its degradation (the live chart shed while the queue is full)
    # as warnings; the standalone node writes them to its log file, not to this table.
    logging.getLogger("strategylab").setLevel(logging.ERROR)
    for _ in range(runs):
        for variant in variants:
            rates[variant].append(await _ingest_run(root / variant, ticks, variant))
    return rates


# ------------------------------------------------------------------------------------ main


@dataclasses.dataclass(slots=True)
class Results:
    tables: list[str] = dataclasses.field(default_factory=list)
    goals: list[Goal] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


HEADER: Final = "| figure | n | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|"


def _why(exc: BaseException) -> str:
    return str(exc) or f"a wait timed out after {LIMIT:g} s"


async def report_supervisor(sizes: Sizes, root: Path, out: Results) -> None:
    observed, recorded, notes = await bench_supervisor(sizes.crashes)
    out.tables.append(
        f"1. supervisor, one_for_one, a Python TCP server SIGKILLed {sizes.crashes} times "
        f"(intensity {sizes.crashes + 1} per 3600 s, backoff 0 s)\n\n"
        f"{HEADER}\n{observed.row()}\n{recorded.row()}"
    )
    out.notes += [f"supervisor: {n}" for n in notes]
    out.goals.append(
        Goal("supervisor: crash → observed healthy ≤ 500 ms (p99)", p99(observed), 500, "ms")
    )


_KILL_GOALS: Final = (
    ("kill switch: trigger → trading halted ≤ 50 ms (p99)", 50.0),
    ("kill switch: trigger → exited with snapshot + marker ≤ 2 s (p99, full queue)", 2000.0),
    ("kill switch: restart → ingest resumed ≤ 2 s (p99)", 2000.0),
)


async def report_kill(sizes: Sizes, root: Path, out: Results) -> None:
    try:
        kill = await bench_kill(root / "kill", sizes.kills)
    except (NotAvailableError, TimeoutError) as exc:
        out.tables.append(f"2. kill switch: not available: {_why(exc)}")
        out.goals += [
            Goal(label, None, limit, "ms", note=_why(exc)) for label, limit in _KILL_GOALS
        ]
        return
    queued = ", ".join(f"{q:,}" for q in kill.queued)
    out.tables.append(
        f"2. kill switch over POST /admin/kill, {sizes.kills} kills "
        f"(queue depth at the trigger: {queued} of {KILL_QUEUE:,})\n\n"
        f"{HEADER}\n{kill.halt.row()}\n{kill.exited.row()}\n{kill.resumed.row()}\n"
        + "\n".join(
            s.row()
            for s in (
                kill.post,
                kill.post_halt,
                kill.report,
                *kill.steps.values(),
                kill.fresh_started,
                kill.restart_started,
                kill.restart_ready,
            )
        )
    )
    out.notes += [f"kill switch: {n}" for n in kill.notes]
    for (label, limit), series in zip(
        _KILL_GOALS, (kill.halt, kill.exited, kill.resumed), strict=True
    ):
        out.goals.append(Goal(label, p99(series), limit, "ms", note="no sample (see the notes)"))
    out.goals.append(
        Goal(
            "(cross-check) kill switch: POST sent → trading halted ≤ 50 ms (p99, upper bound)",
            p99(kill.post_halt),
            50,
            "ms",
            note="no sample (see the notes)",
            judged=False,
        )
    )
    out.notes.append(
        "kill switch: a node has no risk engine, so its halt step is not applicable (a no-op); "
        "the report's clock starts when the HTTP handler pulls the switch, after the request "
        "waited for the node's busy event loop (the POST round trip bounds that wait)"
    )


async def report_metrics(sizes: Sizes, root: Path, out: Results) -> None:
    label = "/metrics scrape ≤ 10 ms (p99) while ingesting at full rate"
    try:
        scrapes, live, notes = await bench_metrics(root / "metrics", sizes.scrapes)
    except (NotAvailableError, TimeoutError) as exc:
        out.tables.append(f"3. /metrics: not available: {_why(exc)}")
        out.goals.append(Goal(label, None, 10, "ms", note=_why(exc)))
        return
    out.tables.append(
        f"3. GET /metrics, {sizes.scrapes} scrapes back to back\n\n{HEADER}\n{scrapes.row()}\n"
        f"{live.row()}"
    )
    out.notes += [f"/metrics: {n}" for n in notes]
    out.goals.append(Goal(label, p99(scrapes), 10, "ms"))


async def report_throughput(sizes: Sizes, root: Path, out: Results) -> None:
    label = "ingest with status service + health monitor ON ≥ 95 % of OFF"
    try:
        rates = await bench_throughput(root / "throughput", sizes.ticks, sizes.runs, sizes.variants)
    except (NotAvailableError, TimeoutError) as exc:
        out.tables.append(f"4. throughput: not available: {_why(exc)}")
        out.goals.append(Goal(label, None, 95, "%", at_least=True, note=_why(exc)))
        return
    best = {v: max(wall for wall, _ in r) for v, r in rates.items()}
    cpu = {v: max(c for _, c in r) for v, r in rates.items()}
    rows = "\n".join(
        f"| {VARIANTS[v]} | {best[v]:,.0f} | {best[v] / best['off']:.3f} | {cpu[v]:,.0f} | "
        f"{cpu[v] / cpu['off']:.3f} | " + ", ".join(f"{wall:,.0f}" for wall, _ in rates[v]) + " |"
        for v in rates
    )
    out.tables.append(
        f"4. ingest throughput, {sizes.ticks:,} ticks per run, variants alternated, best of "
        f"{sizes.runs}\n\n| node | best ticks/s | of off | best ticks/CPU-s | of off | "
        f"every run, ticks/s |\n|---|---:|---:|---:|---:|---|\n{rows}"
    )
    out.notes.append(
        "throughput: ticks/CPU-s is the same span over this process's CPU time (the node's "
        "threads included, the exchange's process not): the cost per tick, less sensitive than "
        "the wall clock to waiting for a core, not immune to sharing one; the goal is judged on "
        "ticks/s, and only a quiet machine gives a verdict within a few per cent"
    )
    out.goals.append(Goal(label, 100 * best["on"] / best["off"], 95, "%", at_least=True))
    out.goals.append(
        Goal(
            "(cross-check) ingest ticks per CPU second ON ≥ 95 % of OFF",
            100 * cpu["on"] / cpu["off"],
            95,
            "%",
            at_least=True,
            judged=False,
        )
    )


REPORTS: Final = {
    "supervisor": report_supervisor,
    "kill": report_kill,
    "metrics": report_metrics,
    "throughput": report_throughput,
}


async def _run(sizes: Sizes, cases: Sequence[str], root: Path) -> Results:
    out = Results()
    for case in CASES:  # always in this order, whatever order --only named them
        if case in cases:
            await REPORTS[case](sizes, root, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure, print the tables and the goals; 1 with ``--check`` when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="20 crashes, 3 kills, 100 scrapes, 200,000 ticks x2"
    )
    parser.add_argument(
        "--only", action="append", choices=CASES, help="Run only this case (repeatable)."
    )
    parser.add_argument("--ticks", type=int, default=None, help="Ticks per throughput run.")
    parser.add_argument("--runs", type=int, default=None, help="Throughput runs per variant.")
    parser.add_argument("--check", action="store_true", help="Exit 1 when a goal is missed.")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for flag, value in (("--ticks", args.ticks), ("--runs", args.runs)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1")
    sizes = dataclasses.replace(
        sizes, ticks=args.ticks or sizes.ticks, runs=args.runs or sizes.runs
    )
    cases = tuple(args.only or CASES)
    began, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="strategylab-bench-ops-") as tmp:
        results = asyncio.run(_run(sizes, cases, Path(tmp)))
    print(
        f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load average {load:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end (other work on the cores inflates the "
        "latencies and blurs the throughput ratio)\n"
    )
    for table in results.tables:
        print(table, end="\n\n")
    if results.notes:
        print("notes:")
        for note in results.notes:
            print(f"- {note}")
        print()
    print("| goal | measured | verdict |\n|---|---|---|")
    for goal in results.goals:
        print(goal.row())
    print(f"\n({time.perf_counter() - began:.1f} s in all)")
    missed = any(goal.met is not True for goal in results.goals if goal.judged)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
