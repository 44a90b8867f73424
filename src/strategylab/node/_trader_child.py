"""The node's optional strategy engine: ``strategylab trade`` as a supervised child process.

:class:`TraderChild` turns a :class:`~._trader.TraderConfig` into a
:class:`~strategylab.fault_tolerance.ChildSpec` of the node's supervisor (a
:class:`~strategylab.fault_tolerance.ProcessChild`: ready on its ``trading`` line, so only once
it has reconciled; restarted with backoff when it dies, its exit status recorded; past the
restart intensity the supervisor escalates and the node pulls its kill switch), and keeps the
node's view of it.

The protocol with the child (decided here):

- **Secrets** go in the child's environment (``STRATEGYLAB_SIGNING_KEY`` as hex,
  ``STRATEGYLAB_AUDIT_KEY``), never in its argv (``/proc/PID/cmdline`` is world-readable).
- **Its lines**: the child's stdout is the supervisor's (piped, drained, for readiness); the
  child also copies every line to a FIFO in the node's data directory
  (:data:`CHANNEL_NAME`, mode 0600, named by ``$STRATEGYLAB_PARENT_CHANNEL``), after a ``hello``
  line with its PID. The node reads it without blocking and keeps, per incarnation, the events
  seen, the last ``status`` (risk state, positions, open orders), ``halted`` and ``kill_switch``.
  The node holds a write end too, so that the read end never sees end-of-file between children.
- **Halt**: SIGUSR1. The child halts in the signal's handler, prints ``halted``, then runs its
  own kill switch (cancel its open orders at the exchange, flush, ``snapshot.json`` and
  ``UNCLEAN_SHUTDOWN`` beside its book), prints ``kill_switch`` (``cancelled``, ``left_open``,
  ``complete``, ``snapshot``, ``snapshot_sha256``) and exits 3. SIGTERM stays a graceful stop.
- **Liveness**: the child prints a ``status`` line every status interval; a child from which no
  line came for :func:`liveness_window` seconds (``max(3 x interval, 2 s)``) is unresponsive
  (stopped, hung, stuck in a write): the health check, polled by the supervisor, SIGKILLs it
  (which ends even a stopped process), and the supervisor restarts it and records its exit.
- **Kill deadlines**: the kill's ``cancel_orders`` step waits for the child's own kill switch's
  report; a child that has not confirmed by then (or never halted: hung) is SIGKILLed, and the
  step fails saying its orders may still be open at the exchange. A dead child's step fails too:
  nothing could cancel its orders (the exchange lists what its last run left).
- **No restart during a kill**: :meth:`TraderChild.hold_restarts` closes a gate that the child's
  ``restore_state`` hook (run by the supervisor before every restart) waits at; the node stops
  the supervisor at the end of its shutdown, which cancels the waiting restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from strategylab.fault_tolerance import (
    ChildSpec,
    HealthCheck,
    HealthState,
    ProbeKind,
    ProcessChild,
)

if TYPE_CHECKING:
    from ._trader import TraderConfig

__all__ = [
    "CHANNEL_NAME",
    "CHILD_ID",
    "TraderChild",
    "TraderIncarnation",
    "liveness_window",
    "shared_breaker_health_check",
    "trader_argv",
]

_log = logging.getLogger("strategylab.node._node")

PARENT_CHANNEL_ENV: Final = "STRATEGYLAB_PARENT_CHANNEL"
"""The environment variable naming the FIFO a trader run by a node copies its lines to (defined
here, not in :mod:`._trader`, so that a node without a trader never imports the trading stack)."""
CHILD_ID: Final = "trader"
"""The trader's id among the node supervisor's children."""
CHANNEL_NAME: Final = "trader.channel"
"""The FIFO in the node's data directory that the trader copies its lines to."""
READY_LINE: Final = '"event": "trading"'
"""What the trader's ``trading`` line contains (``json.dumps``'s separators)."""
_MAX_BUFFER: Final = 1 << 20
"""Bytes of one unfinished line kept at most; a longer one is dropped."""
_KEPT_EVENTS: Final = 64
_KEPT_INCARNATIONS: Final = 16
_MIN_SILENCE: Final = 2.0
"""Seconds of silence on the channel a trader is always allowed (its status interval may be
shorter than a busy loop's hiccup)."""
_KILL_WAIT: Final = 1.0
"""Seconds the liveness check waits, after its SIGKILL, for the supervisor to see the exit."""
NOT_RUNNING: Final = (
    "trader not running: nothing it could cancel; orders of its last run, if any, are listed "
    "by the exchange"
)
KILLED: Final = "trader did not confirm; killed; its orders may still be open at the exchange"


def liveness_window(status_interval: float) -> float:
    """Seconds without a line on the channel after which a trader printing a ``status`` line
    every ``status_interval`` seconds is unresponsive: ``max(3 x status_interval, 2 s)``."""
    return max(3.0 * status_interval, _MIN_SILENCE)


def trader_argv(config: TraderConfig, *, log_level: int) -> list[str]:
    """The ``strategylab trade`` command line for ``config`` (no secret in it)."""
    argv = [
        sys.executable,
        "-m",
        "strategylab",
        "trade",
        *("--exchange-url", config.base_url, "--feed-url", config.ws_url),
        *("--book", str(Path(config.book).absolute())),
        *("--symbols", ",".join(config.symbols)),
    ]
    for spec in config.strategies:
        argv += ["--strategy", spec]
    for name, value in config.params.items():
        shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["--param", f"{name}={shown}"]
    numbers: dict[str, object] = {
        "--status-interval": config.status_interval,
        "--state-interval": config.state_interval,
        "--max-retry-after": config.max_retry_after,
        "--max-order-notional": config.max_order_notional,
        "--max-position": config.max_position,
        "--max-violations": config.max_violations,
        "--violation-window": config.violation_window,
    }
    if config.security_hold is not None:
        numbers["--security-hold"] = config.security_hold
    for flag, number in numbers.items():
        argv += [flag, repr(number)]
    if config.cluster is not None and config.redis_url is not None:
        # Shared breakers (issue 14, H6): the node's own --cluster and --redis, as it was given
        # them (its argv shows the URL already).
        argv += ["--cluster", config.cluster, "--redis", config.redis_url]
    argv += ["--log-level", logging.getLevelName(log_level).lower()]
    return argv


def _environment(
    config: TraderConfig, channel: Path, cluster_halt: Path | None = None
) -> dict[str, str]:
    """The child's environment: ours, the secrets of ``config``, the channel's path, and the
    cluster halt file (``$STRATEGYLAB_CLUSTER_HALT``) of a node in a cluster."""
    env = dict(os.environ)
    env.pop("STRATEGYLAB_CLUSTER_HALT", None)
    if cluster_halt is not None:
        env["STRATEGYLAB_CLUSTER_HALT"] = str(cluster_halt)
    if config.signing_key is not None:
        env["STRATEGYLAB_SIGNING_KEY"] = config.signing_key.hex()  # even-length hex: the bytes
    else:
        env.pop("STRATEGYLAB_SIGNING_KEY", None)  # the node verifies nothing: neither does it
    if config.audit_key is not None:
        env["STRATEGYLAB_AUDIT_KEY"] = config.audit_key.decode("utf-8", "surrogateescape")
    env[PARENT_CHANNEL_ENV] = str(channel)
    return env


class TraderIncarnation:
    """One trader process as the node saw it through the channel (from its ``hello``)."""

    def __init__(self, pid: int, now: float) -> None:
        self.pid = pid
        self.last_line = now
        """When the node last read a line of it (the loop's clock, seconds)."""
        self.events: collections.deque[str] = collections.deque(maxlen=_KEPT_EVENTS)
        """The events it printed, oldest first (bounded)."""
        self.started_with: list[str] = []
        """The events it printed before its first ``status``: ``reconciled``, ``resumed`` after
        an unclean shutdown, ``trading``."""
        self.status: dict[str, Any] | None = None
        """Its last ``status`` line."""
        self.trading = asyncio.Event()
        self.halted = asyncio.Event()
        self.finished = asyncio.Event()
        """Set by its ``kill_switch`` or ``stopped`` line (its last)."""
        self.kill_line: dict[str, Any] | None = None
        self.resumed: dict[str, Any] | None = None
        self.cluster: dict[str, dict[str, Any]] = {}
        """Its last ``cluster_halted``, ``cluster_cancelled``, ``cluster_resumed`` lines."""

    def on_line(self, data: Mapping[str, Any]) -> None:
        event = str(data.get("event"))
        self.events.append(event)
        if not self.trading.is_set() and event not in {"status", "audit_anchor"}:
            self.started_with.append(event)
        if event == "status":
            self.status = dict(data)
        elif event == "trading":
            self.trading.set()
        elif event == "halted":
            self.halted.set()
        elif event == "resumed":
            self.resumed = dict(data)
        elif event in {"cluster_halted", "cluster_cancelled", "cluster_resumed"}:
            self.cluster[event] = dict(data)
        elif event in {"kill_switch", "stopped"}:
            status = data.get("status") if event == "kill_switch" else data
            if isinstance(status, Mapping):
                self.status = {"event": "status", **status}
            if event == "kill_switch":
                self.kill_line = dict(data)
                self.halted.set()
            self.finished.set()

    @property
    def risk_state(self) -> str | None:
        """The risk state it last reported (``halted`` once it said so)."""
        if self.halted.is_set():
            return "halted"
        status = self.status
        return None if status is None else str(status.get("risk_state"))


class TraderChild:
    """The trader as the node's supervised child (see the module docstring).

    ``channel`` is the FIFO's path (in the node's data directory); ``ready_timeout`` the seconds a
    (re)start may take to reconcile and trade; ``shutdown`` the seconds a graceful stop may take
    before SIGKILL; ``running_pid()`` the PID of the trader process the supervisor runs now (the
    liveness check SIGKILLs only that one). Build it, :meth:`open` it on the node's loop before
    the supervisor starts, add :meth:`spec` to the supervisor's children, :meth:`close` it when
    the node closes.
    """

    def __init__(
        self,
        config: TraderConfig,
        *,
        channel: Path,
        log_level: int = logging.WARNING,
        ready_timeout: float = 30.0,
        shutdown: float = 5.0,
        running_pid: Callable[[], int | None] | None = None,
    ) -> None:
        self.config = config
        self._running_pid = running_pid
        self.window = liveness_window(config.status_interval)
        """Seconds of silence on the channel after which the trader is unresponsive."""
        self.unresponsive: list[dict[str, Any]] = []
        """The traders the liveness check SIGKILLed (``pid``, ``silent_s``), oldest first."""
        self.target: int | None = None
        """The trader process the node's kill found running (None: none, or no kill)."""
        self.channel = channel
        self._log_level = log_level
        self._ready_timeout = ready_timeout
        self._shutdown = shutdown
        self._rfd: int | None = None
        self._wfd: int | None = None
        self._buffer = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: TraderIncarnation | None = None
        self._by_pid: dict[int, TraderIncarnation] = {}
        self._gate = asyncio.Event()
        self._gate.set()
        self._changed = asyncio.Event()
        self.signalled: int | None = None
        """The PID sent SIGUSR1 by :meth:`halt` (None before)."""
        self.halt_seconds: float | None = None
        """Seconds from :meth:`halt`'s start to the child's ``halted`` line (None: not measured)."""
        self.kill_note: str | None = None
        """What the node's kill found when the trader did not run its own kill switch."""
        self.cluster_halt: Path | None = None
        """The cluster halt file the trader obeys (set before :meth:`spec`; None: no cluster)."""

    # ------------------------------------------------------------------ the child

    def spec(self) -> ChildSpec:
        """The supervisor's child: ``strategylab trade`` under the node, ready once trading."""
        process = ProcessChild(
            argv=trader_argv(self.config, log_level=self._log_level),
            ready_line=READY_LINE,
            ready=self._alive,
            env=_environment(self.config, self.channel, self.cluster_halt),
            stop_signal=signal.SIGTERM,
        )
        return ChildSpec(
            id=CHILD_ID,
            start=process,
            shutdown=self._shutdown,
            health_interval=min(self.window / 4, 0.5),
            health_timeout=_KILL_WAIT + 1.0,
            ready_timeout=self._ready_timeout,
            ready_interval=0.05,
            save_state=self._save_state,
            restore_state=self._restore_state,
        )

    async def _alive(self) -> bool:
        """The liveness check (readiness too, after the ``trading`` line): a line of the current
        trader read within :attr:`window` seconds. A silent trader that is the one the supervisor
        runs is SIGKILLed here (a stopped process ends too), its exit then awaited a moment, so
        that the supervisor records it. During a kill the kill owns the trader: always True."""
        inc = self._current
        if inc is None:
            return False
        if self.restarts_held:
            return True
        loop = asyncio.get_running_loop()
        silent = loop.time() - inc.last_line
        if silent <= self.window:
            return True
        running = None if self._running_pid is None else self._running_pid()
        if running != inc.pid:
            return False  # not (or no longer) the process the supervisor runs: never killed here
        _log.error(
            "trader %d: no line on its channel for %.1fs (limit %.1fs): unresponsive, SIGKILL",
            inc.pid,
            silent,
            self.window,
        )
        self.unresponsive.append({"pid": inc.pid, "silent_s": round(silent, 3)})
        del self.unresponsive[:-_KEPT_INCARNATIONS]
        with contextlib.suppress(ProcessLookupError):
            os.kill(inc.pid, signal.SIGKILL)
        await asyncio.sleep(_KILL_WAIT)  # its exit, with its status, ends the watch first
        return False

    def _save_state(self) -> dict[str, Any] | None:
        """The last status of the incarnation that ended (shown until the next one reports)."""
        current = self._current
        return None if current is None else current.status

    async def _restore_state(self, _state: object) -> None:
        """Before every restart: wait while a kill holds restarts (for ever: the supervisor is
        stopped at the end of the node's shutdown, which cancels this wait)."""
        await self._gate.wait()

    def hold_restarts(self) -> None:
        """From now on, a restart of the trader waits (the node's kill switch is running)."""
        self._gate.clear()

    @property
    def restarts_held(self) -> bool:
        """True once :meth:`hold_restarts` was called."""
        return not self._gate.is_set()

    # ------------------------------------------------------------------ the channel

    def open(self) -> None:
        """Create the FIFO (0600; whatever was at its name is replaced) and read it on the
        running loop. ``OSError`` when it cannot be made."""
        path = self.channel
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(path.lstat().st_mode):
                raise IsADirectoryError(f"{path}: a directory where the trader's FIFO belongs")
            path.unlink()
        os.mkfifo(path, 0o600)
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        self._rfd = os.open(path, os.O_RDONLY | flags)
        self._wfd = os.open(path, os.O_WRONLY | flags)  # no end-of-file between two children
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._rfd, self._readable)

    def close(self) -> None:
        """Stop reading, close the FIFO and remove it (safe to repeat)."""
        rfd, self._rfd = self._rfd, None
        wfd, self._wfd = self._wfd, None
        if rfd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(rfd)
            os.close(rfd)
        if wfd is not None:
            os.close(wfd)
        with contextlib.suppress(FileNotFoundError):
            if rfd is not None:
                self.channel.unlink()

    def _readable(self) -> None:
        fd = self._rfd
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            _log.error("trader channel: read failed: %s", exc)
            return
        buffer = self._buffer + data
        *lines, rest = buffer.split(b"\n")
        self._buffer = rest if len(rest) <= _MAX_BUFFER else b""
        for line in lines:
            if line.strip():
                try:
                    self._on_line(line)
                except Exception:  # a line we cannot use must not stop the reading
                    _log.exception("trader channel: a line could not be handled")

    def _on_line(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            _log.warning("trader channel: not a JSON line (%d bytes), skipped", len(raw))
            return
        if not isinstance(data, dict):
            return
        now = asyncio.get_running_loop().time()
        if data.get("event") == "hello":
            pid = data.get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool):
                self._current = self._by_pid[pid] = TraderIncarnation(pid, now)
                while len(self._by_pid) > _KEPT_INCARNATIONS:
                    del self._by_pid[next(iter(self._by_pid))]
        elif self._current is not None:
            self._current.last_line = now
            self._current.on_line(data)
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ reads

    @property
    def current(self) -> TraderIncarnation | None:
        """The latest trader process that said hello (None before the first)."""
        return self._current

    def incarnation(self, pid: int | None) -> TraderIncarnation | None:
        """The trader process ``pid`` as seen on the channel (None: it never said hello)."""
        return None if pid is None else self._by_pid.get(pid)

    def risk_state(self, pid: int | None) -> str:
        """The risk state now: the running trader's last reported one; ``halted`` while no
        trader trades (starting, reconciling, restarting, stopped)."""
        inc = self.incarnation(pid)
        if inc is None or not inc.trading.is_set() or inc.finished.is_set():
            return "halted"
        return inc.risk_state or "halted"

    def summary(self, pid: int | None) -> dict[str, Any]:
        """The trader for the status line and ``/status``: ``pid``, ``trading``, ``risk_state``,
        ``positions``, ``open_orders``, the ``book`` and its order-API ``breaker`` (in a cluster
        with its ``shared`` state: :func:`~._trader.shared_breaker_status`)."""
        inc = self.incarnation(pid)
        status = (inc.status if inc is not None else None) or self._save_state() or {}
        return {
            "pid": pid,
            "book": str(self.config.book),
            "trading": inc is not None and inc.trading.is_set() and not inc.finished.is_set(),
            "risk_state": self.risk_state(pid),
            "positions": status.get("positions", {}),
            "open_orders": status.get("open_orders", 0),
            "breaker": status.get("breaker"),
            "resumed": inc is not None and inc.resumed is not None,
            "started_with": [] if inc is None else list(inc.started_with),
        }

    async def _until(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait (on the loop's clock) until ``predicate()`` holds; False on the timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ the kill protocol

    async def halt(self, pid: int | None, timeout: float) -> None:  # noqa: ASYNC109
        """Kill step ``halt``: restarts held, then SIGUSR1 to the trader ``pid`` and, if it was
        trading, wait for its ``halted`` line (``TimeoutError`` after ``timeout`` seconds). A
        trader that runs no process, or has not said hello within ``timeout`` seconds, trades
        nothing: :attr:`kill_note` says so."""
        self.hold_restarts()
        self.target = pid
        loop = asyncio.get_running_loop()
        started = loop.time()
        if pid is None:
            self.kill_note = NOT_RUNNING
            return
        if not await self._until(lambda: pid in self._by_pid, timeout):
            self.kill_note = f"trader {pid} had not started its engine: nothing traded"
            return
        inc = self._by_pid[pid]
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            self.target = None
            self.kill_note = NOT_RUNNING
            return
        self.signalled = pid
        if inc.trading.is_set():
            remaining = max(timeout - (loop.time() - started), 0.001)
            async with asyncio.timeout(remaining):
                await inc.halted.wait()
        self.halt_seconds = loop.time() - started

    async def wait_report(self, timeout: float, *, unhalted: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """Kill step ``cancel_orders``: the signalled trader's ``kill_switch`` line, within
        ``timeout`` seconds (``unhalted`` seconds at most when it never said ``halted``: hung).

        Raises ``RuntimeError`` (the step failed; :attr:`kill_note` says the same) when no trader
        ran (nothing could cancel its orders), when it exited without the line or its orders
        were not confirmed cancelled at the exchange, and when it did not confirm in time: it
        is then SIGKILLed (:meth:`kill_target`; its orders may still be open).
        """
        pid = self.target
        inc = self.incarnation(self.signalled)
        if pid is None:
            self.kill_note = self.kill_note or NOT_RUNNING
            raise RuntimeError(self.kill_note)
        if inc is None:  # alive but never signalled: it had not started; it must not start now
            killed = self.kill_target()
            note = self.kill_note or f"trader {pid} had not started its engine"
            self.kill_note = f"{note}; killed" if killed else note
            raise RuntimeError(
                f"{self.kill_note}; orders of its last run, if any, are listed by the exchange"
            )
        wait = timeout
        if unhalted is not None and not inc.halted.is_set():
            wait = min(timeout, unhalted)
        try:
            async with asyncio.timeout(wait):
                await inc.finished.wait()
        except TimeoutError:
            self.kill_target()
            self.kill_note = KILLED
            raise RuntimeError(f"trader {pid}: {KILLED}") from None
        except asyncio.CancelledError:  # cut by the step's own deadline: never left running
            self.kill_target()
            self.kill_note = KILLED
            raise
        line = inc.kill_line
        if line is None:
            raise RuntimeError(f"trader {pid} stopped without running its kill switch")
        if not line.get("complete"):
            left = ", ".join(map(str, line.get("left_open") or ())) or "unknown"
            raise RuntimeError(f"trader {pid}: not confirmed cancelled at the exchange: {left}")
        return line

    def kill_target(self) -> bool:
        """SIGKILL the trader the kill found running (a stopped one ends too); True if sent."""
        pid = self.target
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def kill_summary(self) -> dict[str, Any]:
        """What the trader's part of the node's kill did (for the node's report and snapshot)."""
        inc = self.incarnation(self.signalled)
        line = None if inc is None else inc.kill_line
        out: dict[str, Any] = {
            "pid": self.signalled if self.signalled is not None else self.target,
            "note": self.kill_note,
            "halted_ms": None if self.halt_seconds is None else round(self.halt_seconds * 1e3, 3),
        }
        if line is not None:
            raw = line.get("status")
            status: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            out |= {
                "cancelled": line.get("cancelled"),
                "left_open": line.get("left_open"),
                "complete": line.get("complete"),
                "trader_halted_ms": line.get("halted_ms"),
                "snapshot": line.get("snapshot"),
                "snapshot_sha256": line.get("snapshot_sha256"),
                "marker": line.get("marker"),
                "exit_code": line.get("exit_code"),
                "positions": status.get("positions", {}),
                "risk_state": status.get("risk_state"),
            }
        return out


# --- shared breakers (issue 14, H6) ----------------------------------------------------------

SHARED_BREAKER_CHECK: Final = "trader_breaker"
"""The node's health check of its trader's shared order-API breaker."""


def shared_breaker_state(trader: TraderChild | None, pid: int | None) -> HealthState:
    """DEGRADED while the trader ``pid``'s last ``status`` line says its order-API breaker runs
    on local state (``breaker.shared.degraded``: the cluster's Redis is unreachable); HEALTHY
    otherwise (no trader, no cluster, no status yet, or shared)."""
    inc = None if trader is None else trader.incarnation(pid)
    status = None if inc is None else inc.status
    breaker = None if status is None else status.get("breaker")
    shared = breaker.get("shared") if isinstance(breaker, Mapping) else None
    if isinstance(shared, Mapping) and shared.get("degraded"):
        return HealthState.DEGRADED
    return HealthState.HEALTHY


def shared_breaker_health_check(
    get: Callable[[], TraderChild | None],
    pid: Callable[[], int | None],
    *,
    interval: float = 0.5,
    timeout: float = 1.0,
) -> HealthCheck:
    """The readiness check :data:`SHARED_BREAKER_CHECK` of a node whose trader shares its
    order-API breaker with the cluster (``--cluster`` and ``--redis``): DEGRADED while the
    trader's breaker has fallen back to local state (:func:`shared_breaker_state`), never
    UNHEALTHY (the trader keeps trading on its local breaker and re-joins by itself). ``get()``
    is the node's trader child, ``pid()`` the trader process running now; ``interval`` and
    ``timeout`` are seconds."""

    async def check() -> HealthState:
        return shared_breaker_state(get(), pid())

    return HealthCheck(
        name=SHARED_BREAKER_CHECK,
        check=check,
        kind=ProbeKind.READINESS,
        component="trader.breaker-backend",
        interval=interval,
        timeout=timeout,
    )
