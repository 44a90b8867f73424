"""The node's operations layer, built from the library's parts (DESIGN §2, §4; issue 11):

- :func:`health_checks`: one :class:`HealthCheck` per component (feed, ingestor, store, status
  output), probed every 0.5 s with a 1 s timeout by a :class:`HealthMonitor`;
- :class:`HealthReports`: the monitor's :class:`RecoveryHandler`, the recovery manager minus the
  episodes a component already reported itself (a recovery of it is running);
- :func:`kill_steps`: the kill switch's ordered steps (halt and cancel act on the trader child
  when the node runs one, :mod:`._trader_child`);
- :class:`PriceTap`: the feed's sink, the ingestor behind it, keeping the last frames delivered
  so that the last *acknowledged* price per symbol is read at snapshot time (no per-tick work);
- :func:`monitor_child`, :class:`ServiceChild` and :class:`DegradationSlot`: the supervisor's
  children (the slot lets a reload replace the degradation controller in place).

Supervision (decided here): the status service, the health monitor, the degradation loop and, when
the node trades, the trader process (:mod:`._trader_child`) are children of a ``one_for_one``
:class:`~strategylab.fault_tolerance.Supervisor` (at most 3 restarts in 10 s); past that the
supervisor escalates to the recovery manager and the node pulls the kill switch (source
``crash_loop``). The feed and the ingestor are NOT children: each restarts its own task (reconnect
with resume; the writer's ``SupervisedTask``) and is a component of the manager, which restarts
them as a recovery; a second restarter would only fight the first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from strategylab.fault_tolerance import (
    ErrorType,
    HealthCheck,
    HealthMonitor,
    HealthState,
    KillStep,
    ProbeKind,
)
from strategylab.market import FailoverStore, Feed, Ingestor, TickStore

if TYPE_CHECKING:
    from strategylab.fault_tolerance import ErrorRecoveryManager
    from strategylab.market import QuarantinedTick, Tick

    from ._shedding import NodeDegradation
    from ._status import _StatusOutput

__all__ = [
    "HEALTH_INTERVAL",
    "HEALTH_TIMEOUT",
    "SERVICE_PROBE_INTERVAL",
    "DegradationSlot",
    "HealthReports",
    "PriceTap",
    "ServiceChild",
    "health_checks",
    "kill_steps",
    "monitor_child",
]

_log = logging.getLogger("strategylab.node._node")

HEALTH_INTERVAL: Final = 0.5
"""Seconds between two probes of one check."""
HEALTH_TIMEOUT: Final = 1.0
"""Seconds one probe may take (a hung check is a failed check)."""
QUEUE_NEAR_FULL: Final = 0.9
"""The ingest queue's fill (fraction of ``max_queue``) at which the ingestor is DEGRADED."""
_RECENT_FRAMES: Final = 8
SERVICE_PROBE_INTERVAL: Final = 1.0
"""Seconds between two TCP probes of the status service's port by the supervisor."""
_SERVICE_PROBE_TIMEOUT: Final = 1.0


# ---------------------------------------------------------------------------------- health


def health_checks(
    *,
    feed: Feed,
    ingestor: Ingestor,
    store: TickStore,
    status: _StatusOutput,
    max_queue: int,
) -> list[HealthCheck]:
    """The node's checks (each every :data:`HEALTH_INTERVAL` s, :data:`HEALTH_TIMEOUT` s):

    - ``feed`` (readiness): connected, subscribed and a frame within ``stale_after``
      (``Feed.health``); 2 failures in a row make it UNHEALTHY (about 1 s);
    - ``ingestor`` (both): UNHEALTHY when the writer is not running; DEGRADED while a write or
      an ack-log append fails (the store's or the disk's failure, not the process's: the
      ``store`` check reports it) or when the queue holds :data:`QUEUE_NEAR_FULL` of the
      queue bound in force (``IngestStatistics.max_queue``: a reload or RESOURCE_SCALING may
      change it; ``max_queue`` before it reports one) or more;
    - ``store`` (readiness): the store accepts writes durably; DEGRADED while the failover
      store spools or drains. A dependency, so it never fails liveness (a restart would not
      free a full disk or bring a database back);
    - ``status`` (liveness): the status lines go out; DEGRADED (not a failure: the output
      reports its own full disk to the manager) while lines are dropped.
    """

    async def feed_check() -> bool:
        return await feed.health()

    async def ingestor_check() -> HealthState:
        stats = ingestor.statistics()
        if not stats.healthy:
            # A writer that is down is the node's own failure (liveness: restart me); a write
            # or ack-log append failing is its store's or its disk's, which the store check
            # reports for readiness: restarting the node would not free a full disk.
            if stats.failing in {"write", "ack_log"}:
                return HealthState.DEGRADED
            return HealthState.UNHEALTHY
        if stats.queued >= QUEUE_NEAR_FULL * (stats.max_queue or max_queue):
            return HealthState.DEGRADED
        return HealthState.HEALTHY

    async def store_check() -> HealthState:
        if not await store.health():
            return HealthState.UNHEALTHY
        if isinstance(store, FailoverStore) and store.statistics().state.value != "primary":
            return HealthState.DEGRADED
        return HealthState.HEALTHY

    async def status_check() -> HealthState:
        return HealthState.HEALTHY if status.ok else HealthState.DEGRADED

    common: dict[str, Any] = {"interval": HEALTH_INTERVAL, "timeout": HEALTH_TIMEOUT}
    return [
        HealthCheck(
            name="feed",
            check=feed_check,
            kind=ProbeKind.READINESS,
            failure_threshold=2,
            component=feed.name,
            error_type=ErrorType.WEBSOCKET_CONNECTION_DROPPED,
            **common,
        ),
        HealthCheck(
            name="ingestor",
            check=ingestor_check,
            component=ingestor.name,
            error_type=ErrorType.DATA_INGESTION_FAILURE,
            **common,
        ),
        HealthCheck(
            name="store",
            check=store_check,
            # An external dependency: it decides whether the node can take work (readiness),
            # never whether the process should be restarted (Kubernetes' advice for liveness).
            kind=ProbeKind.READINESS,
            component=store.name,
            error_type=ErrorType.DATABASE_CONNECTION_LOST,
            **common,
        ),
        HealthCheck(
            name="status", check=status_check, kind=ProbeKind.LIVENESS, component="status", **common
        ),
    ]


class HealthReports:
    """The health monitor's :class:`~strategylab.fault_tolerance.RecoveryHandler`: an unhealthy
    episode goes to the manager unless a recovery of that component is already running (the
    component reported the failure itself; a second report would only join or escalate it)."""

    def __init__(self, manager: ErrorRecoveryManager) -> None:
        self._manager = manager
        self.skipped = 0

    async def handle(self, exc_or_context: BaseException, component: str | None = None) -> object:
        """``manager.handle(exc, component=component)``, or None when one is running already."""
        if component is not None and any(
            active.component == component for active in self._manager.active_recoveries()
        ):
            self.skipped += 1
            return None
        return await self._manager.handle(exc_or_context, component=component)


# ---------------------------------------------------------------------------------- kill switch


NOT_APPLICABLE: Final = ("halt", "cancel_orders")
"""Steps of the kill switch that do nothing on a node without a trader child: it has no risk
engine and sends no orders (recorded, to keep the sequence and its timings the same as the
trader's)."""


def kill_steps(
    *,
    quiesce: Callable[[], Awaitable[None]],
    flush: Callable[[], Awaitable[None]],
    deadline: float,
    halt: Callable[[float], Awaitable[None]] | None = None,
    cancel_orders: Callable[[float], Awaitable[None]] | None = None,
) -> list[KillStep]:
    """The node's kill steps within ``deadline`` seconds in all (> 0):

    ``halt`` and ``cancel_orders``: not applicable on a node without a trader (no risk engine,
    no orders); with one (``halt`` and ``cancel_orders`` given, each called with its own deadline
    in seconds), ``halt`` asks the trader child to halt and waits until it says it has (at most
    a tenth of the deadline, 1 s at most), ``cancel_orders`` waits for its kill switch's report
    (its open orders cancelled at the exchange; 40 % of the deadline; much less for a trader
    that never said it halted) and SIGKILLs a trader that did not confirm by then. ``quiesce``
    (stop the supervisor's restarts, the health monitor and the degradation loop, so nothing
    restarts what is being stopped), ``flush`` (stop intake, write and fsync the ingest queue;
    half the deadline, or 40 % with a trader). The kill switch itself then writes the snapshot,
    stops the components and leaves the marker.
    """

    def not_applicable() -> None:
        """Nothing to do on a node (no risk engine, no open orders)."""

    small = min(0.25, deadline / 10)
    if halt is None or cancel_orders is None:
        return [
            KillStep("halt", not_applicable, small),
            KillStep("cancel_orders", not_applicable, small),
            KillStep("quiesce", quiesce, max(small, deadline / 10)),
            KillStep("flush", flush, deadline / 2),
        ]
    # The step's own deadline cuts the wait; the callee gets a little less, to end on its own.
    halt_deadline = min(1.0, max(small, deadline / 10))
    cancel_deadline = deadline * 0.4
    return [
        KillStep("halt", lambda: halt(halt_deadline * 0.9), halt_deadline),
        KillStep("cancel_orders", lambda: cancel_orders(cancel_deadline * 0.95), cancel_deadline),
        KillStep("quiesce", quiesce, max(small, deadline / 10)),
        KillStep("flush", flush, deadline * 0.4),
    ]


# ---------------------------------------------------------------------------------- prices


class PriceTap:
    """The feed's :class:`~strategylab.market.TickSink`: the ingestor, plus the last few frames it
    was given (a reference each, no per-tick work on the way in).

    :meth:`last_prices` reads those frames newest first at snapshot time and keeps, per symbol,
    the mid price of the newest tick at or below the ingestor's acknowledged watermark.
    """

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor
        self._frames: collections.deque[list[Tick]] = collections.deque(maxlen=_RECENT_FRAMES)
        self._prices: dict[str, float] = {}
        self._seqs: dict[str, int] = {}

    async def put(self, ticks: list[Tick]) -> None:
        """The ingestor's ``put``; the frame is kept once queued."""
        await self._ingestor.put(ticks)
        self._frames.append(ticks)

    async def quarantine(self, entries: list[QuarantinedTick]) -> None:
        """The ingestor's ``quarantine``."""
        await self._ingestor.quarantine(entries)

    async def last_seqs(self) -> dict[str, int]:
        """The ingestor's ``last_seqs`` (the store's watermarks: where the feed resumes)."""
        return await self._ingestor.last_seqs()

    def accounted(self) -> Mapping[str, int]:
        """The ingestor's ``accounted`` (how the feed proves a connection)."""
        return self._ingestor.accounted()

    def last_prices(self) -> dict[str, float]:
        """Per symbol, the mid price ((bid + ask) / 2) of the last acknowledged tick seen."""
        acked = self._ingestor.statistics().acked
        prices, seqs = self._prices, self._seqs
        found: set[str] = set()
        for frame in reversed(self._frames):
            for tick in reversed(frame):
                symbol = tick.symbol
                if symbol in found or tick.seq > acked.get(symbol, 0):
                    continue
                found.add(symbol)
                if tick.seq > seqs.get(symbol, 0):
                    seqs[symbol] = tick.seq
                    prices[symbol] = (tick.bid + tick.ask) / 2
        return dict(prices)


# ---------------------------------------------------------------------------------- children


def monitor_child(monitor: HealthMonitor) -> Callable[[], Awaitable[None]]:
    """A supervisor task body that runs ``monitor`` until cancelled (then stops it)."""

    async def run() -> None:
        monitor.start()
        try:
            await asyncio.Event().wait()  # until the supervisor cancels it
        finally:
            await monitor.stop()

    return run


class ServiceChild:
    """The status service as a supervised component: ``start`` builds and starts a fresh
    service (``make(port)``), on the port the first one bound once it is known; ``stop`` closes
    it; ``health`` is True while it is started and its port accepts a TCP connection (a
    Kubernetes ``tcpSocket`` probe, polled every :data:`SERVICE_PROBE_INTERVAL` s by the
    supervisor). ``on_service`` hears of each new service (None when it stops).

    A service whose listener is gone (closed, or its socket lost) therefore fails its probe and
    is restarted on the same port; a restart that cannot bind it (the port taken meanwhile) is a
    failed start, counted against the supervisor's restart intensity like a crash.
    """

    name = "status_service"

    def __init__(
        self,
        make: Callable[[int], Any],
        port: int,
        on_service: Callable[[Any], None],
    ) -> None:
        self._make = make
        self._port = port
        self._on_service = on_service
        self._service: Any = None
        self._address: tuple[str, int] | None = None

    async def start(self) -> None:
        """Build and start a service; the port it bound is kept for restarts."""
        service = self._make(self._port)
        await service.start()
        self._service = service
        parts = urlsplit(str(service.url))
        host = parts.hostname or "127.0.0.1"
        if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - probing a wildcard bind locally
            host = "::1" if ":" in host else "127.0.0.1"
        self._port = parts.port or self._port
        self._address = (host, self._port)
        self._on_service(service)

    async def stop(self) -> None:
        """Close the service (safe to repeat)."""
        service, self._service = self._service, None
        if service is not None:
            self._on_service(None)
            await service.aclose()

    async def health(self) -> bool:
        """True while a service is started and a TCP connection to its port succeeds within
        1 s (closed again at once)."""
        address = self._address
        if self._service is None or address is None:
            return False
        try:
            async with asyncio.timeout(_SERVICE_PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(*address)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


class DegradationSlot:
    """The degradation controller as a recovery-manager component, delegating to whichever
    controller is in the slot now: :meth:`replace` swaps in a new one (a reload of
    ``memory_budget``) without restarting the supervisor or re-registering.

    ``name`` is the controller's (``"degradation"``); ``start``, ``stop``, ``health``,
    ``degrade(level)`` and ``restore()`` are the current controller's. The supervisor runs
    :meth:`supervised` instead, whose health is the evaluation loop's (see there).
    """

    def __init__(self, controller: NodeDegradation) -> None:
        self._controller = controller
        self._running = False

    @property
    def name(self) -> str:
        """The controller's component name."""
        return self._controller.name

    @property
    def controller(self) -> NodeDegradation:
        """The controller in the slot now."""
        return self._controller

    async def start(self) -> None:
        """Start the current controller (its sampler and evaluation loop)."""
        self._running = True
        await self._controller.start()

    async def stop(self) -> None:
        """Stop the current controller; shed features stay shed."""
        self._running = False
        await self._controller.stop()

    async def health(self) -> bool:
        """The current controller's ``health()`` (False while a trigger reads above its mark:
        the manager's view, after a GRACEFUL_DEGRADATION)."""
        return await self._controller.health()

    @property
    def running(self) -> bool:
        """True while the slot is started and the current controller's evaluation loop runs."""
        return self._running and self._controller.running

    def supervised(self) -> _SupervisedDegradation:
        """The slot as the supervisor's child: ``start``/``stop`` are the slot's, ``health()``
        is :attr:`running`.

        Not the controller's ``health()``: that is False while memory, loop lag, queue or CPU
        read above their marks, which is exactly when the controller must run (to shed). A
        node whose RSS is above its budget at start would otherwise never be ready (and a
        running one would be restarted, then escalated, for being loaded)."""
        return _SupervisedDegradation(self)

    async def degrade(self, level: int) -> bool:
        """The current controller's ``degrade(level)``."""
        return await self._controller.degrade(level)

    async def restore(self) -> bool:
        """The current controller's ``restore()``."""
        return await self._controller.restore()

    async def replace(self, new: NodeDegradation) -> None:
        """Put ``new`` in the slot: the features shed now stay shed in it (those an operator
        shed stay pinned), the old controller is stopped and ``new`` started if the slot runs."""
        old = self._controller
        before = old.snapshot()
        pinned = [f.name for f in before.features if f.pinned]
        for name in pinned:
            await new.shed_feature(name, reason="carried over by a reload")
        automatic = len(before.shed)
        if automatic > len(pinned):
            await new.degrade(automatic)
        running = self._running
        if running:
            await old.stop()
        self._controller = new
        if running:
            await new.start()


class _SupervisedDegradation:
    """:meth:`DegradationSlot.supervised`: a component whose health is "the loop runs"."""

    def __init__(self, slot: DegradationSlot) -> None:
        self._slot = slot

    @property
    def name(self) -> str:
        """The controller's component name."""
        return self._slot.name

    async def start(self) -> None:
        """Start the slot (its current controller)."""
        await self._slot.start()

    async def stop(self) -> None:
        """Stop the slot; shed features stay shed."""
        await self._slot.stop()

    async def health(self) -> bool:
        """True while the evaluation loop runs."""
        return self._slot.running
