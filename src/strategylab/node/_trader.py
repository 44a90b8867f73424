"""The trader process (``strategylab trade``): one strategy engine fed live from the exchange.

``strategylab trade --exchange-url http://127.0.0.1:P --book PATH --strategy [NAME=]ma_crossover
--symbols A,B`` (run by :func:`run_trader_process` over a :class:`TraderConfig`) prints JSON
lines: ``reconciled`` (the items, the ``seconds`` it took and the ``risk_state`` then),
``resumed`` after an unclean shutdown, ``trading``, a ``status`` every ``--status-interval``
seconds, ``security_violation`` for each forged frame, and ``stopped`` on SIGTERM (exit 0), or
``kill_switch`` when forged frames crossed the threshold (exit
:data:`~strategylab.trading.EXIT_KILL_SWITCH`). Its log goes to ``logs/trader.log`` beside the
book.

The kill switch (:mod:`._trader_kill`) halts trading, cancels the open orders at the exchange,
flushes the book, writes ``snapshot.json`` and stops the feed, the engine and the order client,
then leaves ``UNCLEAN_SHUTDOWN``, all beside the book. The next start verifies the snapshot (a
damaged one: exit 1, naming the file), keeps the risk engine HALTED until reconciliation has
finished, prints ``resumed`` (what the snapshot held and how the reconciled book compares), and
only then removes the marker and trades.

Under a parent (the node runs the trader as a supervised child, :mod:`._trader_child`), the
environment variable :data:`PARENT_CHANNEL_ENV` names a FIFO the parent reads: every line printed
is also written there (after a ``hello`` line with the PID), and SIGUSR1 pulls the kill switch at
once (source ``api``, reason :data:`PARENT_KILL_REASON`): trading is halted in the handler itself,
a ``halted`` line follows, then the steps above run and the process exits 3. A SIGUSR1 that
arrives before trading began (while reconciling) is remembered: the kill switch is pulled as soon
as the engine is reconciled, and nothing trades. SIGTERM stays a graceful stop (exit 0).
Under a parent no write blocks the trader: the channel and stdout (when it is a pipe) are
non-blocking, a line that would block is dropped, and each ``status`` line counts the drops so
far (``dropped_lines``: ``stdout``, ``channel``). A stopped or slow parent never stops trading.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from strategylab._files import UnsafePathError, make_private_dir, refuse_unsafe_dirs
from strategylab._layout import DataLayout
from strategylab._logging import configure_logging, escape
from strategylab._validate import integer, seconds
from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import (
    AuditIntegrityError,
    AuditLog,
    AuditSink,
    ErrorRecoveryManager,
    ErrorReporter,
    KillReport,
    SnapshotError,
    TriggerSource,
    clear_unclean,
)
from strategylab.market import Feed, FeedConfig, StoreCorruptedError
from strategylab.strategy import BUILTIN_STRATEGIES, Strategy
from strategylab.trading import (
    EngineConfig,
    OrderApiError,
    OrderClient,
    PositionStore,
    RiskEngine,
    RiskLimits,
    StrategyEngine,
    StrategyFactory,
)

from ._trader_child import PARENT_CHANNEL_ENV
from ._trader_kill import (
    RESUME_HOLD,
    Resumption,
    TraderKill,
    resume_state,
    snapshot_differences,
    trader_kill_switch,
)

if TYPE_CHECKING:
    from strategylab.distributed import RedisBreakerBackend

__all__ = [
    "PARENT_CHANNEL_ENV",
    "PARENT_KILL_REASON",
    "SHARED_BREAKER_COMPONENT",
    "TraderConfig",
    "load_factory",
    "run_engine",
    "run_trader_process",
    "shared_breaker_prefix",
    "shared_breaker_status",
]

_log = logging.getLogger("strategylab.market.engine")

PARENT_KILL_REASON: Final = "the parent node pulled its kill switch"
"""The reason of a kill switch pulled by the parent's SIGUSR1."""


class _LineWriter:
    """Whole lines to a pipe without ever blocking: a line that would block is dropped (and
    counted); a line the pipe took only in part is finished before the next one is written,
    so the reader never sees a torn line from this process."""

    __slots__ = ("dropped", "fd", "pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""
        self.dropped = 0

    def write(self, data: bytes) -> None:
        """Write ``data`` (one line) now or drop it; ``OSError`` other than EAGAIN propagates."""
        try:
            if self.pending:
                self.pending = self.pending[os.write(self.fd, self.pending) :]
                if self.pending:
                    self.dropped += 1
                    return
            written = os.write(self.fd, data)
        except BlockingIOError:
            self.dropped += 1
            return
        self.pending = data[written:]


class _ParentLink:
    """The parent's channel (a FIFO's write end, or None), the trader's stdout when a parent
    drains it (never blocking either: a parent that stops reading, or is stopped, must not stop
    the trader), and whether the parent asked for the kill switch (SIGUSR1) before the engine
    could act on it."""

    __slots__ = ("channel", "kill_requested", "stdout")

    def __init__(self) -> None:
        self.channel: _LineWriter | None = None
        self.stdout: _LineWriter | None = None
        self.kill_requested = False

    def dropped(self) -> dict[str, int]:
        """Lines dropped so far because a pipe was full: ``stdout`` and ``channel``."""
        return {
            "stdout": 0 if self.stdout is None else self.stdout.dropped,
            "channel": 0 if self.channel is None else self.channel.dropped,
        }

    def open(self, path: str) -> None:
        """Open the FIFO at ``path`` for writing (a parent must hold its read end), say hello;
        make stdout non-blocking when it is a pipe (a terminal's is shared: left alone)."""
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(1).st_mode):
                sys.stdout.flush()
                os.set_blocking(1, False)
                self.stdout = _LineWriter(1)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            _log.warning("parent channel %s cannot be opened: %s", path, exc)
            return
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            _log.warning("parent channel %s is not a FIFO; not used", path)
            return
        self.channel = _LineWriter(fd)  # stays O_NONBLOCK: a full FIFO drops lines
        self.send(json.dumps({"event": "hello", "pid": os.getpid()}))

    def print(self, line: str) -> None:
        """``line`` to stdout: never blocking under a parent, else as ``print`` would."""
        out = self.stdout
        if out is None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            out.write((line + "\n").encode())

    def send(self, line: str) -> None:
        """Write ``line`` (one JSON object) to the parent; a newline before it ends any partial
        line a killed predecessor left. A parent gone closes the channel."""
        channel = self.channel
        if channel is None:
            return
        try:
            channel.write(("\n" + line + "\n").encode())
        except OSError:
            self.channel = None
            os.close(channel.fd)

    def request_kill(self, _signum: int = 0, _frame: object = None) -> None:
        """The SIGUSR1 handler until the engine trades: remember the request."""
        self.kill_requested = True


_parent = _ParentLink()


def load_factory(
    spec: str, symbols: tuple[str, ...], params: Mapping[str, object]
) -> StrategyFactory:
    """``[NAME=]STRATEGY`` → a factory of the strategy ``NAME`` on ``symbols`` with ``params``.

    ``STRATEGY`` is a built-in name (``ma_crossover``, ``mean_reversion``: the names ``backtest``
    and ``optimize`` take) or ``module:Class`` (a :class:`~strategylab.strategy.Strategy`
    subclass). ``NAME`` is the strategy's name in the book; default: the built-in name or the
    class name. A class whose first parameter is ``symbol`` (as the built-ins) is called
    ``Class(symbols[0], name=NAME, **params)``, any other ``Class(NAME, symbols, **params)``.

    Raises :class:`ConfigurationError` (key ``strategy``) for a malformed spec, an unknown
    built-in or a class that is not a strategy; ``ImportError`` or ``AttributeError`` for a
    module or class that cannot be found. The factory is not called here.
    """
    name, sep, target = spec.partition("=")
    if not sep:
        name, target = "", spec
    elif not name.strip():
        raise ConfigurationError("strategy", spec, "NAME= must not be empty")
    name, target = name.strip(), target.strip()
    module_name, colon, attr = target.partition(":")
    cls: object
    if not colon:
        cls = BUILTIN_STRATEGIES.get(target)
        if cls is None:
            raise ConfigurationError(
                "strategy",
                spec,
                f"must be a built-in strategy ({', '.join(sorted(BUILTIN_STRATEGIES))}) or "
                "module:Class, optionally after NAME=",
            )
        default_name = target
    else:
        if not module_name or not attr:
            raise ConfigurationError("strategy", spec, "must look like [NAME=]module:Class")
        cls = getattr(importlib.import_module(module_name), attr)
        default_name = attr
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigurationError("strategy", spec, f"{target} is not a Strategy subclass")
    instance = name or default_name

    # The built-ins take ``(symbol, ..., name=)``; the engine's examples ``(name, symbols, ...)``.
    first = next(iter(inspect.signature(cls).parameters), "")
    make: Callable[..., Strategy] = cls

    def factory() -> Strategy:
        if first == "symbol":
            return make(symbols[0], name=instance, **params)
        return make(instance, symbols, **params)

    return factory


@dataclass(frozen=True, slots=True, kw_only=True)
class TraderConfig:
    """Everything ``strategylab trade`` needs; validated on construction.

    ``exchange_url`` is the exchange's ``http(s)://HOST:PORT``; ``feed_url`` its market-data
    WebSocket (default: ``exchange_url`` + ``/ws``). ``book`` is the engine's SQLite order book
    (its audit log beside it). ``strategies`` are ``[NAME=]STRATEGY`` specs (:func:`load_factory`),
    each built with ``params``. Intervals, windows and holds are seconds; ``security_hold``
    defaults to ``violation_window``. Raises :class:`ConfigurationError` naming the command-line
    flag (``--book``, ``--status-interval``, ...).
    """

    exchange_url: str
    book: Path
    strategies: tuple[str, ...]
    symbols: tuple[str, ...]
    params: Mapping[str, object] = field(default_factory=dict)
    feed_url: str | None = None
    status_interval: float = 1.0
    state_interval: float = 1.0
    max_retry_after: float = 30.0
    max_order_notional: float = 1_000_000.0
    max_position: float = 1_000.0
    max_violations: int = 5
    violation_window: float = 60.0
    security_hold: float | None = None
    signing_key: bytes | None = field(default=None, repr=False)  # a secret
    audit_key: bytes | None = field(default=None, repr=False)  # a secret
    # --- shared breakers (issue 14, H6): the order API's breaker shared cluster-wide ---------
    cluster: str | None = None
    """``--cluster NAME`` (1..64 of A-Z a-z 0-9 . _ -); with ``redis_url`` the order API's
    breaker is shared with every trader of the cluster (:func:`shared_breaker_prefix`)."""
    redis_url: str | None = None
    """``--redis URL`` (``redis://``, ``rediss://`` or ``unix://``); needs ``cluster``."""
    # --- end shared breakers ----------------------------------------------------------------

    def __post_init__(self) -> None:
        if not self.symbols or not all(self.symbols):
            raise ConfigurationError("--symbols", ",".join(self.symbols), "must name a symbol")
        if not self.strategies:
            raise ConfigurationError("--strategy", "", "give at least one")
        book = Path(self.book)
        if not book.name or book.name in {".", ".."} or book.is_dir():
            raise ConfigurationError(
                "--book", str(book), "must name a database file, not a directory"
            )
        for flag in ("status_interval", "state_interval", "max_retry_after", "violation_window"):
            seconds("--" + flag.replace("_", "-"), getattr(self, flag))
        if self.security_hold is not None:
            seconds("--security-hold", self.security_hold)
        integer("--max-violations", self.max_violations, minimum=1)
        _urls(self.exchange_url, self.feed_url)
        _check_cluster(self.cluster, self.redis_url)  # shared breakers (issue 14, H6)

    @property
    def base_url(self) -> str:
        """The exchange's HTTP base URL, without a final ``/``."""
        return _urls(self.exchange_url, self.feed_url)[0]

    @property
    def ws_url(self) -> str:
        """The market data's WebSocket URL."""
        return _urls(self.exchange_url, self.feed_url)[1]


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="seconds")


def _emit(event: str, **data: object) -> None:
    line = json.dumps({"event": event, **data})
    _parent.print(line)
    _parent.send(line)


async def run_engine(
    engine: StrategyEngine,
    ws_url: str,
    *,
    stop: asyncio.Event | None = None,
    status_interval: float = 1.0,
    signing_key: bytes | None = None,
    max_violations: int = 5,
    violation_window: float = 60.0,
    layout: DataLayout | None = None,
    audit: AuditSink | None = None,
    shared: RedisBreakerBackend | None = None,
) -> int:
    """Start ``engine`` (reconcile), feed it from ``ws_url`` until ``stop``, SIGTERM/SIGINT or the
    kill switch. Returns the exit code: 0, or
    :data:`~strategylab.trading.EXIT_KILL_SWITCH` (the kill switch's report's).

    With ``signing_key``, market data whose HMAC does not verify never reaches a strategy: each
    forged frame holds trading (:meth:`StrategyEngine.on_security_violation`), and
    ``max_violations`` of them within ``violation_window`` seconds pull the kill switch (see
    :mod:`strategylab.node._trader_kill`: halt, cancel, flush, ``snapshot.json``, stop,
    ``UNCLEAN_SHUTDOWN``, in ``layout``, default: the book's directory; each step audited to
    ``audit``).

    After an unclean shutdown (the marker in ``layout``) the snapshot is verified before anything
    connects, the risk engine stays HALTED until reconciliation has finished, a ``resumed`` line
    says what was restored, and only then is the marker removed and trading begins. Raises
    :class:`~strategylab.fault_tolerance.SnapshotError` naming the file for a damaged snapshot.

    ``shared`` is the backend sharing the order API's breaker with the cluster (issue 14): each
    ``status`` line's ``breaker`` then carries ``shared`` (:func:`shared_breaker_status`), and a
    ``breaker_shared`` line says when it falls back to local state or re-joins.
    """
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    layout = layout if layout is not None else DataLayout(engine.store.path.parent)
    resumption = await _start(engine, layout)
    try:
        if resumption is not None:
            _resumed(engine, layout, resumption)
        feed, kill = _guarded_feed(
            engine,
            ws_url,
            signing_key=signing_key,
            max_violations=max_violations,
            violation_window=violation_window,
            layout=layout,
            audit=audit,
        )
    except BaseException:
        await engine.aclose()
        raise
    report: KillReport | None = None
    cluster = _ClusterHalt.from_environment(engine)  # the cluster kill switch (issue 14, H2)
    try:
        installed = _install_signals(loop, done.set, lambda: _parent_kill(engine, kill))
        cluster.install(loop)  # and reads the node's file once: a halted cluster never trades
        if _parent.kill_requested:  # asked while reconciling: never start trading
            _parent_kill(engine, kill)
        pulled = kill.pulled
        if not pulled.is_set():
            await feed.start()
            _emit("trading", pid=os.getpid())
        shared_watch = _SharedWatch(shared)  # shared breakers (issue 14, H6)
        while not done.is_set() and not pulled.is_set():
            parented = _parent.channel is not None or _parent.stdout is not None
            extra = {"dropped_lines": _parent.dropped()} if parented else {}
            shared_watch.changed()
            _emit("status", **shared_watch.status(engine.status().to_dict()), **extra)
            waiters = (asyncio.ensure_future(done.wait()), asyncio.ensure_future(pulled.wait()))
            try:
                await asyncio.wait(waiters, timeout=status_interval, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if kill.task is not None:  # a signal during the emergency shutdown does not cut it
            report = await asyncio.shield(kill.task)
    finally:
        _remove_signals(loop, installed)
        await cluster.close(loop)
        await feed.stop()
        await engine.aclose()
    if report is not None:
        _emit("kill_switch", **kill.record.line(report), status=engine.status().to_dict())
        return report.exit_code
    _emit("stopped", **engine.status().to_dict())
    return 0


# --- shared breakers (issue 14, H6) ----------------------------------------------------------

SHARED_BREAKER_COMPONENT: Final = "breaker-backend"
"""The component the backend's fallback (Redis unreachable) is reported under."""
_CLUSTER_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


def shared_breaker_prefix(cluster: str) -> str:
    """The Redis key prefix of ``cluster``'s shared breakers, ``strategylab:cluster:{cluster}:
    breaker`` (beside the cluster kill switch's keys; two clusters never share a key)."""
    return f"strategylab:cluster:{cluster}:breaker"


def _check_cluster(cluster: str | None, redis_url: str | None) -> None:
    """``--cluster`` and ``--redis``: both or neither; :class:`ConfigurationError` names the
    flag."""
    if cluster is not None and not (isinstance(cluster, str) and _CLUSTER_NAME.fullmatch(cluster)):
        raise ConfigurationError("--cluster", cluster, "must be 1..64 of A-Z a-z 0-9 . _ -")
    if redis_url is not None and not (
        isinstance(redis_url, str) and redis_url.startswith(("redis://", "rediss://", "unix://"))
    ):
        raise ConfigurationError(
            "--redis", redis_url, "must be a redis://, rediss:// or unix:// URL"
        )
    if (cluster is None) != (redis_url is None):
        flag, value = ("--redis", redis_url) if cluster is None else ("--cluster", cluster)
        other = "--cluster NAME" if cluster is None else "--redis URL"
        raise ConfigurationError(flag, value, f"needs {other} (the breaker is shared by both)")


async def _shared_breakers(
    config: TraderConfig, manager: ErrorRecoveryManager
) -> RedisBreakerBackend | None:
    """The backend sharing the order API's breaker with the cluster (None without ``--cluster``).

    Made off the loop: with Redis down its constructor waits up to ``2 x timeout + 0.5`` s for a
    subscription and then starts degraded (local breakers, reported to ``manager`` under
    :data:`SHARED_BREAKER_COMPONENT`, re-joined when Redis is back)."""
    if config.cluster is None or config.redis_url is None:
        return None
    from strategylab.distributed import RedisBreakerBackend  # noqa: PLC0415 - only in a cluster

    reporter = ErrorReporter(manager, component=SHARED_BREAKER_COMPONENT)
    return await asyncio.to_thread(
        RedisBreakerBackend,
        config.redis_url,
        prefix=shared_breaker_prefix(config.cluster),
        reporter=reporter,
        loop=asyncio.get_running_loop(),
    )


def shared_breaker_status(shared: RedisBreakerBackend) -> dict[str, object]:
    """The backend for a status line: ``prefix``, ``degraded`` (True: Redis unreachable, the
    breaker runs on its local state), ``health`` (``healthy``/``degraded``) and its counters
    (:class:`~strategylab.distributed.RedisBreakerMetrics`: ``adopted``, ``published``,
    ``fallbacks``, ``rejoins``, ...)."""
    metrics = asdict(shared.metrics())
    return {"prefix": shared.prefix, "health": shared.health().value, **metrics}


class _SharedWatch:
    """The status loop's view of the backend: ``breaker.shared`` in each status line, and a
    ``breaker_shared`` line (``state``: ``local`` or ``shared``) when it falls back or re-joins."""

    __slots__ = ("_degraded", "_shared")

    def __init__(self, shared: RedisBreakerBackend | None) -> None:
        self._shared = shared
        self._degraded = False

    def changed(self) -> None:
        shared = self._shared
        if shared is None or shared.degraded == self._degraded:
            return
        self._degraded = shared.degraded
        _emit(
            "breaker_shared",
            state="local" if self._degraded else "shared",
            **shared_breaker_status(shared),
        )

    def status(self, data: dict[str, Any]) -> dict[str, Any]:
        shared = self._shared
        if shared is not None and isinstance(data.get("breaker"), dict):
            data["breaker"] = {**data["breaker"], "shared": shared_breaker_status(shared)}
        return data


# --- end shared breakers -----------------------------------------------------------------------


# --- the cluster kill switch (issue 14, H2) --------------------------------------------------

CLUSTER_HALT_ENV: Final = "STRATEGYLAB_CLUSTER_HALT"
"""The environment variable naming the node's cluster halt file (JSON ``{"halted", "kill_id",
"reason"}``) that the trader obeys; SIGUSR2 from the node says it changed."""
CLUSTER_HOLD: Final = "cluster_kill"
"""The risk engine's hold key while the cluster kill switch is pulled."""


class _ClusterHalt:
    """The trader's side of the cluster kill: on SIGUSR2 (and once at start, before trading) it
    reads the node's halt file; halted: the risk engine holds (:data:`CLUSTER_HOLD`: every new
    order refused, in the signal's handler), a ``cluster_halted`` line, then every open order of
    the engine cancelled at the exchange (``cluster_cancelled``); cleared: the hold is lifted
    (``cluster_resumed``). An unreadable file halts (the safe side). The process stays up."""

    def __init__(self, engine: StrategyEngine, path: Path | None) -> None:
        self.engine = engine
        self.path = path
        self.tasks: set[asyncio.Future[None]] = set()

    @classmethod
    def from_environment(cls, engine: StrategyEngine) -> _ClusterHalt:
        """From ``$STRATEGYLAB_CLUSTER_HALT``; without it, one that does nothing."""
        path = os.environ.get(CLUSTER_HALT_ENV)
        return cls(engine, Path(path) if path else None)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.path is None:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGUSR2, self.apply)
        self.apply()

    async def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.path is None:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGUSR2)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        for task in list(self.tasks):
            task.cancel()

    def apply(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            data = {"halted": False}
        except (OSError, ValueError) as exc:
            data = {"halted": True, "reason": f"cluster halt file unreadable: {exc}"}
        if not isinstance(data, dict):
            data = {"halted": True, "reason": "cluster halt file is not an object"}
        risk = self.engine.risk
        held = CLUSTER_HOLD in risk.holds
        if data.get("halted") and not held:
            risk.hold(CLUSTER_HOLD, f"cluster kill: {data.get('reason')}")
            _emit(
                "cluster_halted",
                kill_id=data.get("kill_id"),
                at=data.get("at"),
                monotonic=time.monotonic(),
                risk_state=risk.state.value,
            )
            task = asyncio.ensure_future(self._cancel())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif not data.get("halted") and held:
            risk.release(CLUSTER_HOLD)
            _emit("cluster_resumed", risk_state=risk.state.value)

    async def _cancel(self) -> None:
        try:
            deadline = self.engine.config.close_deadline
            cancelled, left, complete = await self.engine.cancel_everything(deadline)
        except Exception as exc:  # reported, never fatal: the hold stays
            _log.exception("cluster kill: cancelling the open orders failed")
            _emit("cluster_cancelled", complete=False, error=str(exc))
            return
        _emit("cluster_cancelled", cancelled=cancelled, left_open=left, complete=complete)


def _install_signals(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None], parent_kill: Callable[[], None]
) -> list[signal.Signals]:
    """SIGTERM and SIGINT: ``stop`` (graceful); SIGUSR1: ``parent_kill``. The ones installed
    (none off the main thread)."""
    installed: list[signal.Signals] = []
    for sig, handler in (
        (signal.SIGTERM, stop),
        (signal.SIGINT, stop),
        (signal.SIGUSR1, parent_kill),
    ):
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError, ValueError):
            break
        installed.append(sig)
    return installed


def _remove_signals(loop: asyncio.AbstractEventLoop, installed: list[signal.Signals]) -> None:
    for sig in installed:
        loop.remove_signal_handler(sig)
    if signal.SIGUSR1 in installed:  # removing it restored the default action: termination
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGUSR1, _parent.request_kill)


def _parent_kill(engine: StrategyEngine, kill: TraderKill) -> None:
    """The parent's SIGUSR1: halted here, before the kill switch's task first runs (its own
    halt step repeats it), so that the parent hears of it at once; then the kill switch."""
    _parent.kill_requested = True
    if kill.task is not None:
        return
    engine.trading = False
    engine.risk.halt(f"kill switch: {PARENT_KILL_REASON}")
    _emit("halted", source="parent", pid=os.getpid(), risk_state=engine.risk.state.value)
    kill.pull(PARENT_KILL_REASON, TriggerSource.PARENT)


async def _start(engine: StrategyEngine, layout: DataLayout) -> Resumption | None:
    """Reconcile and start ``engine``: after an unclean shutdown, HALTED until then. The
    verified unclean shutdown (None after a clean one); the engine is closed on an error."""
    try:
        resumption = resume_state(layout)  # before anything connects: a damaged one stops here
        if resumption is not None:
            engine.risk.hold(
                RESUME_HOLD,
                f"unclean shutdown ({resumption.marker.reason}): no trading until reconciled",
            )
        await engine.start()
    except BaseException:
        await engine.aclose()  # the client session and the book, opened before reconciling
        raise
    _emit(
        "reconciled",
        items=[i.to_dict() for i in engine.reconciliation],
        seconds=round(engine.reconcile_seconds, 6),
        risk_state=engine.risk.state.value,
    )
    return resumption


def _resumed(engine: StrategyEngine, layout: DataLayout, resumption: Resumption) -> None:
    """Reconciled after an unclean shutdown: say what was restored, remove the marker, lift the
    hold. The marker goes only now, so a crash before this point resumes again."""
    snapshot = resumption.snapshot
    positions = engine.status().positions
    differences = snapshot_differences(snapshot, positions)
    if differences:
        _log.warning(
            "resumed: the reconciled book differs from the snapshot: %s", json.dumps(differences)
        )
    _emit(
        "resumed",
        reason=resumption.marker.reason,
        snapshot_time=None if snapshot is None else snapshot.time,
        positions=None if snapshot is None else snapshot.body()["positions"],
        open_orders=None if snapshot is None else snapshot.body()["open_orders"],
        last_sequence=None if snapshot is None else dict(snapshot.last_sequence),
        marker=str(resumption.marker.path),
        snapshot=None if snapshot is None else str(layout.snapshot),
        book_positions=positions,
        differences=differences,
        risk_state=engine.risk.state.value,
    )
    clear_unclean(layout, resumption.marker)
    engine.risk.release(RESUME_HOLD)


def _guarded_feed(
    engine: StrategyEngine,
    ws_url: str,
    *,
    signing_key: bytes | None,
    max_violations: int,
    violation_window: float,
    layout: DataLayout,
    audit: AuditSink | None,
) -> tuple[Feed, TraderKill]:
    """The engine's feed and kill switch: each forged frame holds trading (and is printed);
    past the threshold, the feed pulls the kill switch, which halts trading at once."""

    def on_violation(error: BaseException) -> None:
        engine.on_security_violation(error)
        _emit(
            "security_violation",
            reason=str(error),
            violations=engine.security_violations,
            risk_reason=engine.risk.reason,
        )

    async def kill_switch(error: BaseException) -> None:
        # The shutdown runs in the kill switch's own task (its first step halts trading); this
        # one, the feed's, stops taking data from a link that is being forged meanwhile (its
        # stop:feed step later finds the feed stopped).
        kill.pull(str(error) or type(error).__name__, TriggerSource.SECURITY_VIOLATION)
        await feed.stop()

    config = FeedConfig(
        urls=(ws_url,),
        symbols=tuple(engine._by_symbol),  # noqa: SLF001 - our own engine
        signing_key=signing_key,
        max_violations=max_violations,
        violation_window=violation_window,
    )
    feed = Feed(config, engine, kill_switch=kill_switch, on_violation=on_violation)
    kill = trader_kill_switch(engine, feed, layout=layout, audit=audit)
    engine.feed_health = feed.health
    return feed, kill


def _book_failure(exc: Exception, db: Path) -> str:
    """The one line for a damaged book, audit log or snapshot (which it names)."""
    if isinstance(exc, SnapshotError):
        return f"cannot resume after an unclean shutdown: {exc}"
    if isinstance(exc, AuditIntegrityError):
        return f"audit log damaged: {exc}"
    if isinstance(exc, sqlite3.Error):
        return f"{db}: {exc}"
    return str(exc)


def check_strategies(config: TraderConfig) -> None:
    """Build every ``--strategy`` of ``config`` once (as the trader does at start), without
    running anything: :class:`ConfigurationError` naming ``--strategy`` or ``--param``."""
    _factories(config)


def _factories(config: TraderConfig) -> list[StrategyFactory]:
    """The ``--strategy`` factories, each built once so that bad ``--param``s fail at start,
    not at the first tick; :class:`ConfigurationError` names the flag."""
    shown_params = " ".join(f"{k}={v}" for k, v in config.params.items()) or "(none)"
    factories = []
    for spec in config.strategies:
        try:
            factory = load_factory(spec, config.symbols, config.params)
        except (ConfigurationError, ImportError, AttributeError) as exc:
            reason = exc.reason if isinstance(exc, ConfigurationError) else str(exc)
            raise ConfigurationError("--strategy", spec, reason) from None
        try:
            factory()
        except (TypeError, ValueError) as exc:
            raise ConfigurationError("--param", shown_params, f"{spec}: {exc}") from None
        factories.append(factory)
    return factories


def _urls(exchange_url: str, feed_url: str | None) -> tuple[str, str]:
    """The exchange's HTTP base and the feed's WebSocket URL (default: the exchange's ``/ws``)."""
    if not exchange_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            "--exchange-url",
            exchange_url,
            "must start with http:// or https:// (the feed's ws:// URL is --feed-url)",
        )
    base = exchange_url.rstrip("/")
    if feed_url is None:
        return base, base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    if not feed_url.startswith(("ws://", "wss://")):
        raise ConfigurationError("--feed-url", feed_url, "must start with ws:// or wss://")
    return base, feed_url


def run_trader_process(config: TraderConfig, *, log_level: int = logging.WARNING) -> int:
    """Run ``config`` as the ``strategylab trade`` process: build the strategies, log to stderr
    and ``logs/trader.log`` beside the book, reconcile, trade until a signal. Errors are one line.

    Returns the exit code: 0 after a clean shutdown; 1 when the exchange cannot be reached to
    reconcile or the book or its audit log is damaged; 2 for bad options (a strategy or parameter
    that does not build, a book whose stored strategy configuration is refused, a file planted
    where a book file belongs); :data:`EXIT_KILL_SWITCH` when the kill switch was pulled.
    """
    try:
        factories = _factories(config)
        limits = RiskLimits(
            max_order_notional=config.max_order_notional, max_position=config.max_position
        )
        window = config.violation_window
        engine_config = EngineConfig(
            state_interval=config.state_interval,
            security_hold=window if config.security_hold is None else config.security_hold,
        )
    except ConfigurationError as exc:
        return _fail(exc.as_option(), 2)  # the flag the user typed, not the field of RiskLimits
    book = Path(config.book)
    base = config.base_url

    async def run() -> int:
        make_private_dir(book.parent)  # 0700, every missing parent too; never a symlink
        # Keyed and anchored as the node's: the head goes to a second file and to stdout.
        with AuditLog(
            book.with_suffix(".audit.jsonl"),
            key=config.audit_key,
            anchor=book.with_suffix(".audit.anchor.jsonl"),
            on_anchor=lambda seq, digest: _emit("audit_anchor", seq=seq, hash=digest),
        ) as audit:
            manager = ErrorRecoveryManager(audit=audit)
            shared = await _shared_breakers(config, manager)  # issue 14, H6 (None: no cluster)
            try:
                client = OrderClient(
                    base, manager=manager, max_retry_after=config.max_retry_after, shared=shared
                )
                engine = StrategyEngine(
                    factories,
                    client=client,
                    db=book,
                    risk=RiskEngine(limits),
                    manager=manager,
                    config=engine_config,
                    audit=audit,
                )
                return await run_engine(
                    engine,
                    config.ws_url,
                    status_interval=config.status_interval,
                    signing_key=config.signing_key,
                    max_violations=config.max_violations,
                    violation_window=window,
                    audit=audit,
                    shared=shared,
                )
            finally:
                if shared is not None:  # its threads and connections end with the trader
                    await asyncio.to_thread(shared.close)

    parent = os.environ.get(PARENT_CHANNEL_ENV)
    if parent:
        # Before anything slow: SIGUSR1's default action would end the process.
        with contextlib.suppress(ValueError):  # not the main thread: no parent protocol
            signal.signal(signal.SIGUSR1, _parent.request_kill)
            # The cluster kill's nudge; its file is read before trading starts anyway.
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        _parent.open(parent)
    try:
        log_file = DataLayout(book.parent).log_file("trader")
        refuse_unsafe_dirs(book.parent, log_file.parent)  # before the log is created there
        # A file that is not an order book (a tick store) is refused before anything is written
        # into it or beside it: the audit log, the log file.
        PositionStore(book).close()
        configure_logging(log_level, sys.stderr, log_file=log_file)
        if parent:
            _warm_logging()
        return asyncio.run(run())
    except UnsafePathError as exc:  # something planted where a book file belongs: as the node
        return _fail(exc, 2)
    except (StoreCorruptedError, AuditIntegrityError, sqlite3.Error, SnapshotError) as exc:
        return _fail(_book_failure(exc, book), 1)
    except ConfigurationError as exc:  # refused at start, e.g. the book's strategies differ
        return _fail(exc, 2)
    except (OSError, aiohttp.ClientError, OrderApiError, TimeoutError, CircuitOpenError) as exc:
        # Reconciliation must reach the exchange before anything trades.
        return _fail(f"cannot connect to {base} to reconcile: {_unreachable(exc)}", 1)


def _warm_logging() -> None:
    """Build the log formatters now: their first record imports structlog (about 0.1 s), and
    that record must not be the halt's, whose latency the parent measures."""
    record = logging.LogRecord("strategylab", logging.INFO, __file__, 0, "warm-up", None, None)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.format(record)


def _unreachable(exc: BaseException) -> str:
    """Why the exchange could not be reached: the breaker's last failure, not "circuit open"."""
    if isinstance(exc, CircuitOpenError) and exc.last_failure is not None:
        exc = exc.last_failure
    return str(exc) or type(exc).__name__


def _fail(error: object, code: int) -> int:
    sys.stderr.write(f"strategylab trade: error: {escape(str(error))}\n")
    return code
