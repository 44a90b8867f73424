"""The lab's pipeline under test: the exchange, two fault proxies and the node, as real processes.

:class:`Pipeline` starts, in a work directory, the exchange simulator (``python -m strategylab
exchange``), a fault proxy in front of its market-data WebSocket and another in front of its HTTP
order API (both :class:`~strategylab.chaos.Proxy` objects in this process, every direction), and
the node (``python -m strategylab node``) fed through the first proxy, with its status service and
a trader child whose orders go through the second. Every child is started under
:class:`strategylab._children.ChildProcesses`, so none outlives the lab however it ends.

What the lab's injectors and scenarios need is exposed here: the proxies, the exchange's HTTP base
and an admin helper, the node's status URL and PIDs, its data files, and cheap real observations:
:meth:`Pipeline.status` (the node's ``/status``), :meth:`Pipeline.live`/:meth:`Pipeline.ready`
(its health routes) and :meth:`Pipeline.caught_up` (the node's acknowledged watermark per symbol
against what the exchange had emitted when asked). The node's stdout lines (``status``,
``resumed``, ``stopped``...) are kept in a bounded buffer, each with the monotonic time it arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp

from strategylab._children import ChildGuard, ChildProcesses
from strategylab._files import make_private_dir, open_private
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import StrategyLabError

from ._proxy import Proxy

__all__ = [
    "DEFAULT_SYMBOLS",
    "ExtraNode",
    "NodeLine",
    "Pipeline",
    "PipelineConfig",
    "PipelineError",
]

DEFAULT_SYMBOLS: Final = ("AAPL", "MSFT", "GOOG", "AMZN", "TSLA")
_LINES_KEPT: Final = 2000
_HTTP_TIMEOUT: Final = 1.0
_MEMORY_BUDGET: Final = "192M"
"""The node's ``--memory-budget`` in the lab (its RSS alone is ~75 MB: under 75 % of it)."""
_DEGRADATION_HOLD: Final = 1.0
"""The node's ``--degradation-hold`` in the lab, seconds."""
_EXTRA_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,39}")
"""An extra node's name: its data directory, stderr file and dashboard name."""
_RESERVED_NAMES: Final = frozenset({"node", "exchange", "trading", "integrity"})


class PipelineError(StrategyLabError):
    """The pipeline could not start or be driven (a child exited, never got ready, a call failed);
    the message names the child and where its stderr went."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    """How the lab's pipeline runs.

    ``tick_rate`` is ticks/s over all symbols (1500 over 5 symbols keeps 2 cores comfortable);
    ``retention`` is ticks kept per symbol for replay, large enough that a restarted node never
    falls out of the exchange's history during a lab run. ``postgres`` is a DSN for the node's
    store (SQLite in the node's data directory otherwise). Raises :class:`ValueError` naming a
    field that is out of range.
    """

    work_dir: Path
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    tick_rate: float = 1500.0
    retention: int = 1_000_000
    seed: int = 42
    postgres: str | None = None
    trader: bool = True
    ready_timeout: float = 30.0
    stop_timeout: float = 10.0
    stale_after: float = 1.0
    connect_timeout: float = 1.0
    status_interval: float = 0.25
    extra_node_args: tuple[str, ...] = ()
    """More ``strategylab node`` arguments (for a test that breaks recovery on purpose)."""

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("symbols=(): name at least one symbol")
        for name in ("tick_rate", "ready_timeout", "stop_timeout", "stale_after"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}={value!r}: must be > 0")
        for name in ("connect_timeout", "status_interval"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}={value!r}: must be > 0 (seconds)")
        if self.retention < 1:
            raise ValueError(f"retention={self.retention!r}: must be >= 1 (ticks per symbol)")


@dataclass(frozen=True, slots=True)
class NodeLine:
    """One JSON line the node printed, and the monotonic time the lab read it."""

    t: float
    event: str
    data: Mapping[str, Any]


class Pipeline:
    """exchange → feed proxy → node (status service, SQLite or PostgreSQL store, trader child).

    Use as ``async with Pipeline(config) as p:``; leaving the block stops the node (SIGTERM, newest
    child first), the proxies and the exchange. Raises :class:`PipelineError` when a child does not
    get ready within ``config.ready_timeout`` seconds.
    """

    def __init__(self, config: PipelineConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self._clock = clock
        self.work_dir = config.work_dir
        self.exchange_dir = config.work_dir / "exchange"
        self.node_dir = config.work_dir / "node"
        self.trading_dir = config.work_dir / "trading"
        self.token_file = config.work_dir / "admin.token"
        self.key_file = config.work_dir / "signing.key"
        self.admin_token = ""
        self._guard: ChildGuard | None = None
        self._children: ChildProcesses | None = None
        self._exchange: asyncio.subprocess.Process | None = None
        self._node: asyncio.subprocess.Process | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._node_reader: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws_proxy: Proxy | None = None
        self._api_proxy: Proxy | None = None
        self.exchange_port = 0
        self.status_url = ""
        self.lines: collections.deque[NodeLine] = collections.deque(maxlen=_LINES_KEPT)
        """The node's stdout lines, oldest first (bounded; every start of the node appends)."""
        self.last_status: NodeLine | None = None
        """The node's latest ``status`` line."""
        self.node_starts = 0
        self.node_exits: list[int] = []
        """Exit statuses of the node processes that ended, in order."""
        self._extras: dict[str, ExtraNode] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the exchange, the proxies and the node; return once the node is ready."""
        cfg = self.config
        make_private_dir(cfg.work_dir)
        for directory in (self.exchange_dir, self.trading_dir):
            make_private_dir(directory)
        self.admin_token = secrets.token_hex(16)
        _write_secret(self.token_file, self.admin_token)
        _write_secret(self.key_file, secrets.token_hex(32))
        self._guard = ChildGuard()
        self._children = ChildProcesses(self._guard, stop_timeout=cfg.stop_timeout)
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT),
        )
        symbols = ",".join(cfg.symbols)
        self._exchange, ready = await self._spawn(
            "exchange", "listening", "exchange",
            *("--port", "0", "--data-dir", str(self.exchange_dir), "--symbols", symbols),
            *("--tick-rate", str(cfg.tick_rate), "--heartbeat-interval", "0.25"),
            *("--retention", str(cfg.retention), "--seed", str(cfg.seed)),
            *("--admin-token-file", str(self.token_file)),
            *("--signing-key-file", str(self.key_file)),
        )  # fmt: skip
        self._drain(self._exchange)
        self.exchange_port = int(ready["port"])
        upstream = f"127.0.0.1:{self.exchange_port}"
        self._ws_proxy = Proxy("lab-feed", upstream=upstream, connect_timeout=2.0)
        self._api_proxy = Proxy("lab-api", upstream=upstream, connect_timeout=2.0)
        await self._ws_proxy.start()
        await self._api_proxy.start()
        await self.start_node()

    async def aclose(self) -> None:
        """Stop the node, the proxies and the exchange (idempotent)."""
        children = self._children
        try:
            if children is not None:
                for extra in list(self._extras.values()):
                    await extra.stop()
                if self._node is not None:
                    await self._stop_node_process(signal.SIGTERM)
                await children.aclose()
            for proxy in (self._api_proxy, self._ws_proxy):
                if proxy is not None:
                    await proxy.stop()
            for task in list(self._readers):
                task.cancel()
            for task in list(self._readers):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._http is not None:
                await self._http.close()
        finally:
            self._http = None
            self._children = None
            self._exchange = None
            if self._guard is not None:
                self._guard.close()
                self._guard = None

    # ------------------------------------------------------------------ the node

    @property
    def node_running(self) -> bool:
        """True while a node process started by this pipeline has not exited."""
        return self._node is not None and self._node.returncode is None

    async def start_node(self) -> None:
        """Start the node (resuming from its data directory if it ran before); return once it
        printed its ``ready`` line. Raises :class:`PipelineError` if it is already running or
        exits first."""
        if self.node_running:
            raise PipelineError("start_node(): the node is already running")
        cfg = self.config
        args = [
            "node",
            *("--feed-url", f"ws://127.0.0.1:{self.ws_proxy.listen_port}/ws"),
            *("--exchange-url", f"http://127.0.0.1:{self.api_proxy.listen_port}"),
            *("--data-dir", str(self.node_dir), "--symbols", ",".join(cfg.symbols)),
            *("--status-port", "0", "--admin-token-file", str(self.token_file)),
            *("--signing-key-file", str(self.key_file)),
            *("--status-interval", str(cfg.status_interval)),
            *("--stale-after", str(cfg.stale_after)),
            *("--connect-timeout", str(cfg.connect_timeout)),
            # Categories 5 and 7: a memory budget for the memory trigger (the node's own RSS is
            # ~75 MB, under the 75 % restore mark), the ballast route, and a 1 s hold so that a
            # shed or restore takes ~1-2 s rather than 5-10 s.
            *("--memory-budget", _MEMORY_BUDGET, "--chaos-agent"),
            *("--degradation-hold", str(_DEGRADATION_HOLD)),
        ]
        if cfg.postgres is not None:
            args += ["--postgres", cfg.postgres]
        if cfg.trader:
            args += [
                *("--strategy", "ma-aapl=ma_crossover"),
                *("--book", str(self.trading_dir / "book.db")),
                *("--param", "fast=5", "--param", "slow=20", "--param", "qty=1"),
            ]
        args += list(cfg.extra_node_args)
        process, ready = await self._spawn("node", "ready", *args)
        self._node = process
        self.node_starts += 1
        self.status_url = str(ready["status_url"])
        assert process.stdout is not None  # noqa: S101 - PIPE was asked for
        task = asyncio.get_running_loop().create_task(
            self._follow_node(process.stdout), name="lab-node-lines"
        )
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        self._node_reader = task

    async def start_extra_node(
        self,
        name: str,
        *,
        postgres: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> ExtraNode:
        """Start a second node process (no trader) fed through the same feed proxy as the main
        node, in its own data directory ``WORK/NAME``, with its own status service; return once
        it printed its ``ready`` line.

        ``postgres`` (a ``postgresql://`` URL) is its store, SQLite in its data directory
        otherwise; ``extra_args`` are more ``strategylab node`` arguments. It runs under the
        pipeline's :class:`~strategylab._children.ChildProcesses` (it never outlives the lab) and
        is stopped by :meth:`ExtraNode.stop` or when the pipeline closes. Raises
        :class:`ValueError` for a name that is not ``[a-z][a-z0-9_-]{0,39}`` or is one of the
        pipeline's own (``node``, ``exchange``, ``trading``, ``integrity``), and
        :class:`PipelineError` when one of that name is running or it exits before ready.
        """
        if not isinstance(name, str) or not _EXTRA_NAME.fullmatch(name) or name in _RESERVED_NAMES:
            raise ValueError(
                f"name={name!r}: must match [a-z][a-z0-9_-]{{0,39}} and not be one of "
                f"{sorted(_RESERVED_NAMES)}"
            )
        if postgres is not None and not postgres.startswith(("postgresql://", "postgres://")):
            raise ValueError("postgres: must be a postgresql:// URL (the value is not shown)")
        running = self._extras.get(name)
        if running is not None and running.running:
            raise PipelineError(f"start_extra_node(): {name!r} is already running")
        cfg = self.config
        data_dir = self.work_dir / name
        args = [
            "node",
            *("--feed-url", f"ws://127.0.0.1:{self.ws_proxy.listen_port}/ws"),
            *("--exchange-url", f"http://127.0.0.1:{self.api_proxy.listen_port}"),
            *("--data-dir", str(data_dir), "--symbols", ",".join(cfg.symbols)),
            *("--status-port", "0", "--admin-token-file", str(self.token_file)),
            *("--signing-key-file", str(self.key_file)),
            *("--status-interval", str(cfg.status_interval)),
            *("--stale-after", str(cfg.stale_after)),
            *("--connect-timeout", str(cfg.connect_timeout)),
            *("--name", name),
        ]
        if postgres is not None:
            args += ["--postgres", postgres]
        args += list(extra_args)
        process, ready = await self._spawn(name, "ready", *args)
        extra = ExtraNode(
            self,
            name,
            process,
            data_dir=data_dir,
            store=postgres if postgres is not None else str(data_dir / "ticks.db"),
            status_url=str(ready["status_url"]),
        )
        self._extras[name] = extra
        return extra

    async def stop_node(self) -> int:
        """SIGTERM the node and wait for it (SIGKILL after ``stop_timeout``); its exit status."""
        return await self._stop_node_process(signal.SIGTERM)

    async def kill_node(self) -> int:
        """SIGKILL the node (no clean-up runs) and reap it; its exit status (-9)."""
        return await self._stop_node_process(signal.SIGKILL)

    async def restart_node(self, *, kill: bool = False) -> None:
        """Stop (or with ``kill``, SIGKILL) the node and start it again; it resumes from its
        data directory (marker and snapshot)."""
        await (self.kill_node() if kill else self.stop_node())
        await self.start_node()

    async def wait_node_exit(self, timeout: float) -> int | None:  # noqa: ASYNC109 - a bound, not a scope
        """Wait at most ``timeout`` seconds for the node to exit by itself; its exit status, or
        ``None`` if it is still running (or was never started)."""
        node = self._node
        if node is None:
            return None
        try:
            async with asyncio.timeout(timeout):
                await node.wait()
        except TimeoutError:
            return None
        return await self._stop_node_process(signal.SIGTERM)

    async def _stop_node_process(self, sig: signal.Signals) -> int:
        """Signal the node (unless it exited already), reap it, read its last lines."""
        node = self._node
        if node is None or self._children is None:
            raise PipelineError("the node is not running")
        code = await self._children.stop(node, sig)
        reader, self._node_reader = self._node_reader, None
        if reader is not None:
            # Its last lines (``stopped``) are read to the end of the pipe.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(reader)
        self.node_exits.append(code)
        self._node = None
        return code

    async def _follow_node(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            line = NodeLine(self._clock.monotonic(), str(data.get("event", "")), data)
            self.lines.append(line)
            if line.event == "status":
                self.last_status = line

    # ------------------------------------------------------------------ children

    async def _spawn(
        self, name: str, expect: str, *args: str
    ) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
        """``python -m strategylab ARGS``, stderr to WORK/NAME.stderr; wait for the JSON line
        whose event is ``expect`` (lines before it are kept for the node)."""
        assert self._children is not None  # noqa: S101 - started by start()
        log = self.stderr_path(name)
        with os.fdopen(open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as err:
            process = await self._children.start(
                name, sys.executable, "-m", "strategylab", *args,
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        assert process.stdout is not None  # noqa: S101 - PIPE was asked for
        try:
            async with asyncio.timeout(self.config.ready_timeout):
                while True:
                    raw = await process.stdout.readline()
                    if not raw:
                        code = await self._children.stop(process)
                        raise PipelineError(
                            f"{name} exited with {code} before it was ready; see {log}"
                        )
                    with contextlib.suppress(ValueError):
                        data = json.loads(raw)
                        if isinstance(data, dict):
                            if name == "node":
                                self.lines.append(
                                    NodeLine(self._clock.monotonic(), str(data.get("event")), data)
                                )
                            if data.get("event") == expect:
                                return process, data
        except TimeoutError:
            await self._children.stop(process)
            raise PipelineError(
                f"{name} was not ready within {self.config.ready_timeout} s; see {log}"
            ) from None

    def _drain(self, process: asyncio.subprocess.Process) -> None:
        """Read (and drop) a child's further stdout, so it never blocks on a full pipe."""

        async def drain(stream: asyncio.StreamReader) -> None:
            while await stream.read(65536):
                pass

        assert process.stdout is not None  # noqa: S101
        task = asyncio.get_running_loop().create_task(drain(process.stdout))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    def stderr_path(self, name: str) -> Path:
        """Where the child ``name``'s stderr goes."""
        return self.work_dir / f"{name}.stderr"

    # ------------------------------------------------------------------ what others need

    @property
    def ws_proxy(self) -> Proxy:
        """The fault proxy between the node (and its trader) and the exchange's feed."""
        if self._ws_proxy is None:
            raise PipelineError("the pipeline is not started")
        return self._ws_proxy

    @property
    def api_proxy(self) -> Proxy:
        """The fault proxy between the trader and the exchange's HTTP order API."""
        if self._api_proxy is None:
            raise PipelineError("the pipeline is not started")
        return self._api_proxy

    @property
    def exchange_url(self) -> str:
        """The exchange's HTTP base, reached directly (not through a proxy)."""
        return f"http://127.0.0.1:{self.exchange_port}"

    @property
    def exchange_pid(self) -> int | None:
        return None if self._exchange is None else self._exchange.pid

    @property
    def node_pid(self) -> int | None:
        """The running node's PID (``None`` when it is down)."""
        return self._node.pid if self.node_running and self._node is not None else None

    @property
    def store_path(self) -> Path | None:
        """The node's SQLite store (``None`` with a PostgreSQL store)."""
        return None if self.config.postgres is not None else self.node_dir / "ticks.db"

    @property
    def store(self) -> str:
        """The store as the checker opens it: the SQLite path, or the PostgreSQL DSN."""
        return self.config.postgres or str(self.node_dir / "ticks.db")

    @property
    def spool_dir(self) -> Path:
        return self.node_dir / "spool"

    @property
    def acks_path(self) -> Path:
        return self.node_dir / "acks.jsonl"

    @property
    def audit_path(self) -> Path:
        return self.node_dir / "audit.jsonl"

    @property
    def audit_anchor_path(self) -> Path:
        return self.node_dir / "audit.anchor.jsonl"

    @property
    def ledger_path(self) -> Path:
        """The exchange's emitted log (every tick it emitted, the checker's reference)."""
        return self.exchange_dir / "emitted.log"

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise PipelineError("the pipeline is not started")
        return self._http

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def exchange_admin(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the exchange's admin API (``POST /admin/faults`` ...) with the admin token; the
        decoded JSON answer. Raises :class:`PipelineError` naming the call on a non-2xx answer."""
        url = f"{self.exchange_url}{path}"
        async with self.http.request(
            method, url, json=None if body is None else dict(body), headers=self._auth()
        ) as response:
            text = await response.text()
            if response.status >= 300:
                raise PipelineError(f"{method} {path}: {response.status} {text[:200]}")
            return json.loads(text) if text else None

    async def exchange_status(self) -> dict[str, Any]:
        """The exchange's ``/api/status`` (``last_seq`` per symbol, ``ticks_emitted``...).
        Raises :class:`PipelineError` when it does not answer 200 (an ``api_errors`` fault)."""
        async with self.http.get(f"{self.exchange_url}/api/status") as response:
            if response.status != 200:
                raise PipelineError(f"exchange /api/status answered {response.status}")
            data = await response.json()
        if not isinstance(data, dict):
            raise PipelineError("exchange /api/status: not a JSON object")
        return data

    async def status(self) -> dict[str, Any]:
        """The node's ``/status`` JSON. Raises :class:`PipelineError` when the node is down or
        does not answer 200 within a second."""
        if not self.node_running:
            raise PipelineError("the node is not running")
        try:
            async with self.http.get(f"{self.status_url}/status") as response:
                if response.status != 200:
                    raise PipelineError(f"node /status answered {response.status}")
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PipelineError(f"node /status: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise PipelineError("node /status: not a JSON object")
        return data

    async def _health(self, route: str) -> tuple[bool, str]:
        if not self.node_running:
            return False, "node down"
        try:
            async with self.http.get(f"{self.status_url}/health/{route}") as response:
                body = await response.text()
                return response.status == 200, f"{response.status} {body[:160]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    async def live(self) -> tuple[bool, str]:
        """``/health/live`` answered 200 (never raises)."""
        return await self._health("live")

    async def ready(self) -> tuple[bool, str]:
        """``/health/ready`` answered 200 (never raises)."""
        return await self._health("ready")

    async def caught_up(self, allowance: float = 0.5) -> tuple[bool, str]:
        """Whether the node has acknowledged (stored durably) every tick the exchange had
        emitted when asked: the exchange's ``last_seq`` per symbol is read first, then the
        node's ``ingest.acked`` watermark per symbol is polled (every 50 ms, for at most
        ``allowance`` seconds: the frames in flight) until it reaches it. Never raises."""
        return await self._caught_up(self.status, allowance)

    async def _caught_up(
        self, status: Callable[[], Awaitable[dict[str, Any]]], allowance: float
    ) -> tuple[bool, str]:
        """:meth:`caught_up` for the node whose ``/status`` ``status`` reads."""
        try:
            emitted = (await self.exchange_status()).get("last_seq", {})
        except (PipelineError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return False, f"exchange: {exc}"
        deadline = self._clock.monotonic() + allowance
        while True:
            try:
                acked = (await status()).get("ingest", {}).get("acked", {})
            except PipelineError as exc:
                return False, str(exc)
            behind = {
                s: int(n) - int(acked.get(s, 0))
                for s, n in emitted.items()
                if int(acked.get(s, 0)) < int(n)
            }
            if not behind:
                return True, "caught up"
            if self._clock.monotonic() >= deadline:
                shown = ", ".join(f"{s} {d}" for s, d in sorted(behind.items()))
                return False, f"behind: {shown}"
            await self._clock.asleep(0.05)

    async def trader_pid(self) -> int | None:
        """The node's trader child's PID from ``/status`` (``None`` when none runs)."""
        try:
            status = await self.status()
        except PipelineError:
            return None
        pid = status.get("extra", {}).get("trader", {}).get("pid")
        return pid if isinstance(pid, int) else None

    def recovery_errors(self) -> int | None:
        """The recovery manager's error count from the latest status line (``None`` before
        one)."""
        if self.last_status is None:
            return None
        value = self.last_status.data.get("recovery", {}).get("errors")
        return value if isinstance(value, int) else None


class ExtraNode:
    """A second node process of a :class:`Pipeline` (:meth:`Pipeline.start_extra_node`): fed
    through the same feed proxy, its own data directory, store and status service, no trader.

    Its stdout lines are kept in :attr:`lines` (bounded) and its latest ``status`` line in
    :attr:`last_status`. The observations mirror the pipeline's: :meth:`status`,
    :meth:`live`, :meth:`ready`, :meth:`caught_up`.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        name: str,
        process: asyncio.subprocess.Process,
        *,
        data_dir: Path,
        store: str,
        status_url: str,
    ) -> None:
        self.pipeline = pipeline
        self.name = name
        self.data_dir = data_dir
        self.store = store
        """The store as the checker opens it: the PostgreSQL URL, or the SQLite path."""
        self.status_url = status_url
        self.lines: collections.deque[NodeLine] = collections.deque(maxlen=_LINES_KEPT)
        self.last_status: NodeLine | None = None
        self.exit_code: int | None = None
        """Its exit status once :meth:`stop` reaped it."""
        self._process = process
        assert process.stdout is not None  # noqa: S101 - PIPE was asked for
        self._reader = asyncio.get_running_loop().create_task(
            self._follow(process.stdout), name=f"lab-{name}-lines"
        )

    @property
    def running(self) -> bool:
        """True while its process has not exited."""
        return self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """Its PID while it runs."""
        return self._process.pid if self.running else None

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def acks_path(self) -> Path:
        return self.data_dir / "acks.jsonl"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.jsonl"

    async def _follow(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            line = NodeLine(self.pipeline._clock.monotonic(), str(data.get("event", "")), data)  # noqa: SLF001 - its own pipeline
            self.lines.append(line)
            if line.event == "status":
                self.last_status = line

    async def status(self) -> dict[str, Any]:
        """Its ``/status`` JSON. Raises :class:`PipelineError` naming it when it is down or
        does not answer 200 within a second."""
        if not self.running:
            raise PipelineError(f"{self.name} is not running")
        try:
            async with self.pipeline.http.get(f"{self.status_url}/status") as response:
                if response.status != 200:
                    raise PipelineError(f"{self.name} /status answered {response.status}")
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PipelineError(f"{self.name} /status: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise PipelineError(f"{self.name} /status: not a JSON object")
        return data

    async def _health(self, route: str) -> tuple[bool, str]:
        if not self.running:
            return False, f"{self.name} down"
        try:
            async with self.pipeline.http.get(f"{self.status_url}/health/{route}") as response:
                body = await response.text()
                return response.status == 200, f"{response.status} {body[:160]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    async def live(self) -> tuple[bool, str]:
        """``/health/live`` answered 200 (never raises)."""
        return await self._health("live")

    async def ready(self) -> tuple[bool, str]:
        """``/health/ready`` answered 200 (never raises)."""
        return await self._health("ready")

    async def caught_up(self, allowance: float = 0.5) -> tuple[bool, str]:
        """As :meth:`Pipeline.caught_up`, for this node's ``ingest.acked``. Never raises."""
        return await self.pipeline._caught_up(self.status, allowance)  # noqa: SLF001 - its own pipeline

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal it (SIGTERM: a clean stop; SIGKILL after the pipeline's ``stop_timeout``),
        reap it and read its last lines; its exit status (idempotent)."""
        children = self.pipeline._children  # noqa: SLF001 - its own pipeline
        if children is not None:
            self.exit_code = await children.stop(self._process, sig)
        else:
            self.exit_code = await self._process.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._reader)
        self._reader.cancel()
        return self.exit_code


def _write_secret(path: Path, value: str) -> None:
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as out:
        out.write(value)
