"""The ingesting node: exchange URL → :class:`Feed` → :class:`Ingestor` → tick store.

In process::

    node = Node(NodeConfig(exchange_url=..., symbols=("A", "B"), data_dir=path))
    await node.start()
    await node.wait_caught_up({"A": 1000, "B": 1000}, timeout=10)
    await node.aclose()

The process around it (status lines, signals, exit codes) is :mod:`._process`; the options are
:class:`~._config.NodeConfig`; the store check is :mod:`._store_check`.

The store is SQLite (``--db``) or PostgreSQL (``--postgres DSN``), wrapped in a ``FailoverStore``
with a durable spool in ``data_dir/spool``. Recoveries are audited in ``data_dir/audit.jsonl``;
acknowledgements go to ``data_dir/acks.jsonl`` (the integrity checker's "acknowledged" set); the
log goes to ``data_dir/logs/node.log`` (every name: :class:`strategylab._layout.DataLayout`).
With ``--cluster`` and ``--postgres`` the node shares the symbols with the cluster's other nodes
(:mod:`._cluster`, issue 14): it ingests those it holds a lease of, through fenced writes, with
no spool.


A full disk (``ENOSPC``/``SQLITE_FULL``) on any file the node writes (store, spool, ack log,
audit log, status output) is reported as DISK_SPACE_EXHAUSTED. The node's policy for it puts a
RETRY first: the recovery re-probes the component's health for up to ``--disk-full-grace``
seconds (default 60, the database SLA) and succeeds only once the component is observed healthy
again (ingest resumes by itself); a disk still full after that falls through the standard chain
to the emergency shutdown.

The operations layer (issue 11; :mod:`._operations`): a :class:`HealthMonitor` probes the feed,
the ingestor, the store and the status output every 0.5 s; a ``one_for_one``
:class:`Supervisor` runs the health monitor, the degradation controller (:mod:`._shedding`) and,
with ``status_port`` set, the status service (:class:`~strategylab.service.StatusService` over
:class:`~._view.NodeView`); a configuration file is reloaded by :mod:`._settings`. Every
emergency (the feed's security kill, the manager's EMERGENCY_SHUTDOWN, a supervisor crash loop,
``POST /admin/kill``, :meth:`Node.kill`) runs the :class:`KillSwitch`: halt (not applicable: no
risk engine), cancel orders (not applicable: no orders), quiesce, flush and fsync, write
``snapshot.json``, stop the components in reverse dependency order, leave ``UNCLEAN_SHUTDOWN``.
The next start restores from them (:mod:`._resume`).

With ``config.trader`` set the node also trades: ``strategylab trade`` runs as the supervisor's
child process ``trader`` (:mod:`._trader_child`): restarted with backoff when it dies (its exit
status in the supervisor's snapshot), and past the restart intensity the node's kill switch
(source ``crash_loop``). The kill switch's ``halt`` then sends the trader SIGUSR1 and waits for
its ``halted`` line, and ``cancel_orders`` waits for its own kill switch's report (its orders
cancelled at the exchange, its ``snapshot.json`` and ``UNCLEAN_SHUTDOWN`` beside its book) and
its exit; no restart of it happens meanwhile. The node's ``snapshot.json`` then holds, under
``positions["trader"]``, the trader's positions and its own snapshot's path and digest, and in
``open_orders`` any order it left open. A SIGTERM stops the trader gracefully (SIGTERM, exit 0)
before the node.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from strategylab._files import make_private_dir, refuse_symlinks, refuse_unsafe_dirs
from strategylab._tasks import cancel_and_wait, log_failure
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    AuditLog,
    ChildSpec,
    DegradationEvent,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    HealthMonitor,
    HealthTransition,
    KillReport,
    KillSwitch,
    RecoveryEvent,
    RecoveryPolicy,
    RecoveryStrategyKind,
    RestartIntensityExceededError,
    RestartStrategy,
    RetryPolicy,
    ScalingKnob,
    StateSnapshot,
    Supervisor,
    TriggerSource,
    load_audit_key,
)
from strategylab.market import (
    AckLog,
    FailoverStore,
    Feed,
    FeedConfig,
    Ingestor,
    IngestorConfig,
    PostgresTickStore,
    SpoolStore,
    SQLiteTickStore,
    TickStore,
)

from ._config import NodeConfig
from ._operations import (
    SERVICE_PROBE_INTERVAL,
    DegradationSlot,
    HealthReports,
    PriceTap,
    ServiceChild,
    health_checks,
    kill_steps,
    monitor_child,
)
from ._resume import Resume, prepare_resume
from ._settings import NodeReloader, changed_keys
from ._shedding import NodeDegradation, build_degradation, node_features
from ._status import _print, _StatusOutput
from ._store_check import check_store_config
from ._trader_child import CHANNEL_NAME, CHILD_ID, TraderChild, shared_breaker_health_check

if TYPE_CHECKING:  # the cluster's parts import redis and psycopg: only a cluster node loads them
    from ._cluster import ClusterIngest
    from ._cluster_kill import NodeClusterKill

__all__ = ["Node", "NodeConfig"]

_log = logging.getLogger(__name__)


_KILL_FLUSH: Final = 1.0
"""Seconds the kill switch's flush step may write the ingest queue, at most."""


class Node:
    """Feed, ingestor, store and recovery manager, wired and started together."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_data_dir: Callable[[], None] | None = None,
        log_level: int = logging.WARNING,
    ) -> None:
        """``on_data_dir`` is called once the store configuration passed its checks and the data
        directory exists, before anything is written there (the process opens its log file).
        ``log_level`` is the trader child's (with ``config.trader``)."""
        self.config = config
        self._clock = clock
        self._on_data_dir = on_data_dir
        self._log_level = log_level
        self._trader: TraderChild | None = None
        self._audit: AuditLog | None = None
        self._manager: ErrorRecoveryManager | None = None
        self._store: TickStore | None = None
        self._ingestor: Ingestor | None = None
        self._feed: Feed | None = None
        self._status_out: _StatusOutput | None = None
        self._started_at = 0.0
        self._halted = asyncio.Event()
        self._emergency: ErrorContext | None = None
        self._emergency_task: asyncio.Task[bool] | None = None
        self._close_task: asyncio.Task[bool] | None = None
        # The operations layer (started by start()).
        self._sink: PriceTap | None = None
        self._monitor: HealthMonitor | None = None
        self._degradation: DegradationSlot | None = None
        self._audit_writes: set[asyncio.Task[None]] = set()
        self._supervisor: Supervisor | None = None
        self._switch: KillSwitch | None = None
        self._kill_task: asyncio.Task[KillReport | None] | None = None
        self._switched = asyncio.Event()
        """Set once the kill switch's own steps have ended (before the node's close)."""
        self._kill_source: TriggerSource | None = None
        self._kill_reason: str | None = None
        self._service: Any = None
        self._reloader: NodeReloader | None = None
        self._resume: Resume | None = None
        self._recent_audit: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_RECENT_AUDIT
        )
        self._config_watch: asyncio.Task[None] | None = None
        self._shards: ClusterIngest | None = None  # --cluster with --postgres (issue 14, H3)
        self._cluster_kill: NodeClusterKill | None = None  # --cluster with --redis (issue 14)
        self.chart_enabled = True
        """False while the degradation controller has shed the live price chart."""
        self.events_enabled = True
        """False while the degradation controller has shed the server-sent event detail."""
        # Validate now, so that a bad option fails before anything is opened.
        self._feed_config = FeedConfig(
            urls=(config.exchange_url, *config.backup_urls),
            symbols=config.symbols,
            signing_key=config.signing_key,
            stale_after=config.stale_after,
            connect_timeout=config.connect_timeout,
            backoff_floor=config.backoff_floor,
            backoff_cap=config.backoff_cap,
            hedge_after=config.hedge_after,
            outage_backoff_cap=config.outage_backoff_cap,
        )
        self._ingest_config = IngestorConfig(
            batch_size=config.batch_size, max_queue=config.max_queue, linger=config.linger
        )

    # ------------------------------------------------------------------ parts

    @property
    def feed(self) -> Feed:
        """The feed (after :meth:`start`)."""
        if self._feed is None:
            raise RuntimeError("node is not started")
        return self._feed

    @property
    def ingestor(self) -> Ingestor:
        """The ingestor (after :meth:`start`)."""
        if self._ingestor is None:
            raise RuntimeError("node is not started")
        return self._ingestor

    @property
    def store(self) -> TickStore:
        """The store the ingestor writes to (after :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("node is not started")
        return self._store

    @property
    def manager(self) -> ErrorRecoveryManager:
        """The recovery manager (after :meth:`start`)."""
        if self._manager is None:
            raise RuntimeError("node is not started")
        return self._manager

    @property
    def clock(self) -> Clock:
        """The clock the node measures with."""
        return self._clock

    @property
    def uptime(self) -> float:
        """Seconds since :meth:`start` finished (0 before)."""
        return 0.0 if not self._started_at else self._clock.monotonic() - self._started_at

    @property
    def health_monitor(self) -> HealthMonitor | None:
        """The health monitor over the node's components (after :meth:`start`)."""
        return self._monitor

    @property
    def supervisor(self) -> Supervisor | None:
        """The supervisor of the status service, health monitor and degradation loop."""
        return self._supervisor

    @property
    def degradation(self) -> NodeDegradation | None:
        """The degradation controller in force (after :meth:`start`; a reload of
        ``memory_budget`` replaces it)."""
        return None if self._degradation is None else self._degradation.controller

    @property
    def status_service(self) -> Any:
        """The :class:`~strategylab.service.StatusService` running now (None without one, or
        between a crash of it and its restart by the supervisor)."""
        return self._service

    @property
    def trader(self) -> TraderChild | None:
        """The trader child (after :meth:`start`, with ``config.trader``); None otherwise."""
        return self._trader

    @property
    def trader_pid(self) -> int | None:
        """The PID of the trader process the supervisor runs now (None: none runs)."""
        supervisor = self._supervisor
        if self._trader is None or supervisor is None:
            return None
        for child in supervisor.snapshot().children:
            if child.id == CHILD_ID:
                return child.pid
        return None

    @property
    def risk_state(self) -> str | None:
        """The trader's risk state (``active``, ``reducing``, ``halted``: ``halted`` while no
        trader process trades); None on a node without a trader."""
        trader = self._trader
        return None if trader is None else trader.risk_state(self.trader_pid)

    def trader_status(self) -> dict[str, Any] | None:
        """The trader for status lines and ``/status`` (None without one)."""
        trader = self._trader
        if trader is None:
            return None
        summary = trader.summary(self.trader_pid)
        if self.kill_switch_pulled:
            summary["kill"] = trader.kill_summary()
        return summary

    @property
    def cluster_kill(self) -> NodeClusterKill | None:
        """The cluster kill switch's watcher (``--cluster`` with ``--redis``; after start)."""
        return self._cluster_kill

    @property
    def shards(self) -> ClusterIngest | None:
        """The lease-driven symbol ownership (``--cluster`` with ``--postgres``; after start)."""
        return self._shards

    def cluster_status(self) -> dict[str, Any] | None:
        """``/status``'s ``cluster``: the symbols this node owns and their fencing tokens
        (None on a node that does not shard its ingest)."""
        return None if self._shards is None else self._shards.status()

    @property
    def kill_switch(self) -> KillSwitch | None:
        """The kill switch (after :meth:`start`)."""
        return self._switch

    @property
    def kill_switch_pulled(self) -> bool:
        """True once the kill switch was pulled (by any trigger)."""
        return self._kill_task is not None

    @property
    def kill_report(self) -> KillReport | None:
        """What the kill switch did, once it has finished."""
        return None if self._switch is None else self._switch.report

    @property
    def kill_source(self) -> TriggerSource | None:
        """What pulled the kill switch (None before)."""
        return self._kill_source

    @property
    def kill_reason(self) -> str | None:
        """Why the kill switch was pulled (None before)."""
        return self._kill_reason

    @property
    def resume(self) -> Resume | None:
        """What this start restored after an unclean shutdown (None after a clean one)."""
        return self._resume

    @property
    def reloader(self) -> NodeReloader | None:
        """The configuration file's reloader (with ``config_file`` set)."""
        return self._reloader

    @property
    def status_url(self) -> str | None:
        """``http://HOST:PORT`` of the status service while it runs, else None."""
        service = self._service
        return None if service is None else str(service.url)

    def last_prices(self) -> dict[str, float]:
        """The last acknowledged mid price per symbol (see :class:`~._operations.PriceTap`)."""
        return {} if self._sink is None else self._sink.last_prices()

    def recent_audit(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` audit records, oldest first: those ``audit.jsonl`` ended with at
        start (its last :data:`_AUDIT_TAIL_BYTES` bytes, at most :data:`_RECENT_AUDIT` records),
        then those this process appended. Each is ``{"seq", "timestamp", "kind", "data"}``."""
        if limit <= 0:
            return []
        return list(self._recent_audit)[-limit:]

    # ------------------------------------------------------------------ lifecycle

    @property
    def halted(self) -> asyncio.Event:
        """Set once an emergency shutdown has stopped the node (see :attr:`emergency`)."""
        return self._halted

    @property
    def emergency(self) -> ErrorContext | None:
        """The error that triggered the emergency shutdown, if one ran."""
        return self._emergency

    def _tick_store(self, manager: ErrorRecoveryManager) -> TickStore:
        """The store the ingestor writes to: SQLite or PostgreSQL, behind the failover spool;
        a cluster node's fenced writes straight to PostgreSQL (no spool)."""
        cfg = self.config
        if cfg.postgres is not None and cfg.cluster is not None:
            # Sharded ingest (issue 14): fenced writes straight to PostgreSQL, no spool.
            from strategylab.distributed import LeaseConfig  # noqa: PLC0415 - a cluster node's

            from ._cluster import ClusterIngest  # noqa: PLC0415

            leases = LeaseConfig(cluster=cfg.cluster, symbols=cfg.symbols)
            # A write may not outlast a lease: a node cut off mid-write would otherwise hold a
            # lease it took back for the write timeout (30 s) without storing a tick.
            shared = PostgresTickStore(cfg.postgres, connect_timeout=leases.ttl, timeout=leases.ttl)
            self._shards = ClusterIngest(shared.dsn, shared, leases, clock=self._clock)
            return self._shards.writes
        primary: TickStore
        if cfg.postgres is not None:
            primary = PostgresTickStore(cfg.postgres)
        else:
            primary = SQLiteTickStore(cfg.db_path, batch_size=cfg.batch_size, manager=manager)
        if not cfg.spool:
            return primary
        return FailoverStore(
            primary, SpoolStore(cfg.layout.spool), manager=manager, clock=self._clock
        )

    async def start(self) -> None:
        """Check the store configuration, open the store, start the ingestor and the feed.

        Raises :class:`ConfigurationError` (key ``--db`` or ``--postgres``) for a store that can
        never work, before anything is opened or created; ``OSError`` if the data directory
        cannot be created.
        """
        cfg = self.config
        # Before anything reads or writes there: a symlink planted at a file the node creates
        # or appends to is refused (UnsafePathError names it), never followed.
        # So is anything but a regular file (a FIFO would block the open) and a planted hard link.
        # The SQLite files are checked by check_store_config (a directory there is a bad --db).
        layout = cfg.layout
        refuse_unsafe_dirs(cfg.data_dir, layout.spool)
        refuse_symlinks(layout.audit, layout.audit_anchor, layout.acks)
        await check_store_config(cfg)
        make_private_dir(cfg.data_dir)  # 0700 when created here
        if self._on_data_dir is not None:
            self._on_data_dir()
        # After an emergency shutdown: the marker and a verified snapshot (a damaged one refuses
        # the start with SnapshotError naming the file).
        self._resume = prepare_resume(layout)
        # A full disk holds audit records in memory, in order, until space returns. The chain is
        # keyed with --audit-key-file or $STRATEGYLAB_AUDIT_KEY; its head is anchored in a second
        # file and on stdout ("audit_anchor"), so that a shortened log is caught by `strategylab
        # audit verify`. Opening verifies the whole chain (and the anchors): a log damaged
        # anywhere is an AuditIntegrityError, never appended to.
        audit_key = cfg.audit_key if cfg.audit_key is not None else load_audit_key()
        self._audit = AuditLog(
            layout.audit,
            clock=self._clock,
            hold_when_full=10_000,
            key=audit_key,
            anchor=layout.audit_anchor,
            on_anchor=lambda seq, digest: _print(
                "audit_anchor", {"seq": seq, "hash": digest}, self._status_out
            ),
        )
        # /status shows the log's last records after a restart too, not only this run's.
        self._recent_audit.extend(_audit_tail(layout.audit))
        manager = self._manager = ErrorRecoveryManager(
            policies={ErrorType.DISK_SPACE_EXHAUSTED: _disk_full_policy(cfg, self._clock)},
            clock=self._clock,
            audit=_OpenAudit(self._audit, self._recent_audit),
            shutdown_handler=self._emergency_shutdown,
            shutdown_deadline=cfg.shutdown_deadline,
        )
        self._status_out = _StatusOutput(manager)
        store = self._tick_store(manager)
        await store.open()
        self._store = store
        if self._shards is not None:
            await self._shards.open()  # joins the cluster, takes a first share (issue 14, H3)
        if self._resume is not None:
            self._resume.compare(await store.last_seqs())
        ingestor = self._ingestor = Ingestor(
            store,
            self._ingest_config,
            ack_log=AckLog(layout.acks),
            manager=manager,
            clock=self._clock,
        )
        sink = self._sink = PriceTap(ingestor)
        feed = self._feed = Feed(
            self._feed_config,
            sink,
            manager=manager,
            clock=self._clock,
            kill_switch=self._kill_switch,
        )
        if isinstance(store, FailoverStore):
            manager.register(store)
        manager.register(ingestor)
        manager.register(self._status_out)
        manager.register(feed, depends_on=(ingestor.name,))
        await ingestor.start()
        if self._shards is not None:
            await self._shards.start(feed, ingestor)  # the feed takes the symbols held (H3)
        await feed.start()
        self._started_at = self._clock.monotonic()
        await self._start_operations()

    async def _start_operations(self) -> None:
        """The health monitor, kill switch, degradation, status service, supervisor, reloader."""
        cfg = self.config
        manager = self.manager
        ingestor = self.ingestor
        assert self._status_out is not None  # noqa: S101 - start() made it
        deadline = cfg.shutdown_deadline
        checks = health_checks(
            feed=self.feed,
            ingestor=ingestor,
            store=self.store,
            status=self._status_out,
            max_queue=cfg.max_queue,
        )
        if cfg.cluster is not None and cfg.redis_url is not None:  # the cluster kill (issue 14)
            from ._cluster_kill import cluster_health_check  # noqa: PLC0415 - a cluster node's

            checks.append(cluster_health_check(lambda: self._cluster_kill))
            if cfg.trader is not None:  # its order-API breaker is the cluster's (issue 14)
                checks.append(
                    shared_breaker_health_check(lambda: self._trader, lambda: self.trader_pid)
                )
        monitor = self._monitor = HealthMonitor(
            checks,
            clock=self._clock,
            manager=HealthReports(manager),
        )
        monitor.add_listener(self._on_health)
        trader: TraderChild | None = None
        if cfg.trader is not None:
            trader = self._trader = TraderChild(
                cfg.trader,
                channel=cfg.data_dir / CHANNEL_NAME,
                log_level=self._log_level,
                shutdown=_TRADER_STOP,
                running_pid=lambda: self.trader_pid,
            )
            trader.open()
        if cfg.cluster is not None and cfg.redis_url is not None:
            # The cluster kill switch (issue 14, H2): its halt file exists before the trader.
            from ._cluster_kill import NodeClusterKill  # noqa: PLC0415 - a cluster node's

            self._cluster_kill = NodeClusterKill(cfg, trader, lambda: self.trader_pid)
            await self._cluster_kill.start()
        self._switch = KillSwitch(
            kill_steps(
                quiesce=self._quiesce,
                flush=self._flush,
                deadline=deadline,
                halt=None if trader is None else self._halt_trader,
                cancel_orders=None if trader is None else self._cancel_trader,
            ),
            layout=cfg.layout,
            snapshot_source=self._state_snapshot,
            registry=manager.registry,
            clock=self._clock,
            audit=_OpenAudit(self._audit, self._recent_audit) if self._audit else None,
            snapshot_deadline=min(0.5, deadline / 10),
            stop_deadline=min(0.5, deadline / 10),
            audit_deadline=min(1.0, deadline / 10),
        )
        degradation = self._degradation = DegradationSlot(self._build_degradation(cfg))
        manager.register(degradation)
        manager.add_listener(self._on_recovery)
        children = [
            ChildSpec(id="health", start=monitor_child(monitor), shutdown=1.0),
            ChildSpec(id="degradation", start=degradation.supervised(), shutdown=1.0),
        ]
        service = self._service_child()
        if service is not None:
            children.append(
                ChildSpec(
                    id="status_service",
                    start=service,
                    shutdown=2.0,
                    health_interval=SERVICE_PROBE_INTERVAL,
                    health_timeout=2.0,
                    ready_timeout=5.0,
                )
            )
        if trader is not None:
            children.append(trader.spec())  # last: stopped first, before the status service
        self._supervisor = Supervisor(
            children,
            name="node.supervisor",
            strategy=RestartStrategy.ONE_FOR_ONE,
            intensity=3,
            period=10.0,
            clock=self._clock,
            manager=manager,
            on_escalate=self._crash_loop,
            # A child restarted past the intensity: too many restarts, not a failure of ingestion
            # (the default classification). Nothing in SYSTEM_OVERLOAD's chain applies to the
            # supervisor (not a registered component): the manager ends at the emergency shutdown.
            escalation_type=ErrorType.SYSTEM_OVERLOAD,
        )
        await self._supervisor.start()
        if cfg.config_file is not None:
            self._reloader = NodeReloader(
                cfg, self._apply_config, clock=self._clock, explicit=cfg.explicit
            )
            await self._reloader.start()
            self._config_watch = asyncio.create_task(
                self._watch_rejections(self._reloader), name="node.config-rejections"
            )
            self._config_watch.add_done_callback(log_failure)

    def _build_degradation(self, cfg: NodeConfig) -> NodeDegradation:
        """A degradation controller for ``cfg`` (its ``memory_budget``) over the node's
        features, reading the ingest queue's depth and its bound in force."""
        ingestor = self.ingestor

        def capacity() -> int:
            return ingestor.statistics().max_queue or self.config.max_queue

        controller = build_degradation(
            cfg,
            queue_depth=lambda: ingestor.statistics().queued,
            queue_capacity=capacity,
            features=node_features(self._set_chart, self._set_events),
            clock=self._clock,
            hold=cfg.degradation_hold,
        )
        controller.add_listener(self._degradation_changed)
        return controller

    def _degradation_changed(self, event: DegradationEvent) -> None:
        """A shed or a restore: published as a ``degradation`` event and recorded in the
        audit log (kind ``degradation``), so that it is on the record, not only on screen."""
        record = event.to_dict()
        self._publish("degradation", record)
        if self._audit is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._append_audit("degradation", record), name="node.audit.degradation"
        )
        self._audit_writes.add(task)
        task.add_done_callback(self._audit_writes.discard)
        task.add_done_callback(log_failure)

    def _service_child(self) -> ServiceChild | None:
        """The status service as a supervised child; None without ``status_port``."""
        cfg = self.config
        if cfg.status_port is None:
            return None
        from strategylab.service import StatusService  # noqa: PLC0415 - only with a port

        from ._view import NodeView  # noqa: PLC0415 - imports the service package

        view = NodeView(self)

        def make(port: int) -> Any:
            return StatusService(
                view,
                host=cfg.status_host,
                port=port,
                admin_token=cfg.admin_token,
                clock=self._clock,
                chaos=view if cfg.chaos_agent else None,
                cluster=view if cfg.cluster is not None and cfg.redis_url is not None else None,
            )

        def on_service(service: Any) -> None:
            self._service = service
            if service is not None:
                service.chart_enabled = self.chart_enabled

        return ServiceChild(make, cfg.status_port, on_service)

    # ------------------------------------------------------------------ events

    def _publish(self, kind: str, data: Mapping[str, Any]) -> None:
        """Send one event to the status service's subscribers (nothing without a service)."""
        service = self._service
        if service is None:
            return
        try:
            service.publish(kind, dict(data))
        except Exception:
            _log.exception("status service: publishing a %s event failed", kind)

    def _on_health(self, event: HealthTransition) -> None:
        self._publish(
            "health",
            {
                "check": event.check,
                "component": event.component,
                "previous": None if event.previous is None else event.previous.value,
                "current": event.current.value,
                "at": event.at,
                "reason": event.reason,
            },
        )

    def _on_recovery(self, event: RecoveryEvent) -> None:
        if not self.events_enabled or self._service is None:
            return  # the event detail is shed (or there is nobody to tell)
        outcome = event.outcome
        self._publish(
            "recovery",
            {
                "kind": event.kind,
                "error_id": str(event.error_id),
                "error_type": event.error_type.value,
                "component": event.component,
                "at": event.at,
                "strategy": None if event.strategy is None else event.strategy.value,
                "detail": event.detail,
                "outcome": None
                if outcome is None
                else {
                    "success": outcome.success,
                    "strategy": None if outcome.strategy is None else outcome.strategy.value,
                    "attempts": outcome.attempts,
                    "duration_ms": outcome.duration_ms,
                    "escalated": outcome.escalated,
                },
            },
        )

    def _set_chart(self, enabled: bool) -> None:
        self.chart_enabled = enabled
        if self._service is not None:
            self._service.chart_enabled = enabled

    def _set_events(self, enabled: bool) -> None:
        self.events_enabled = enabled

    async def _apply_config(self, new: NodeConfig) -> None:
        """The reloader's ``apply``: put the accepted configuration in force in the running node.

        Applied live: ``status_interval``, ``drain_timeout``, ``shutdown_deadline`` and
        ``disk_full_grace`` (read at each use); ``ingest.batch_size`` and ``ingest.max_queue``
        (set on the ingestor's scaling knobs: the next batch and the next ``put`` use them);
        ``degradation.memory_budget`` (a new degradation controller takes the slot, the
        features shed now staying shed). Not applied until the next start (the feed and the
        ingestor's writer read them only when built; one warning line, and listed under
        ``at_next_start``): ``feed.stale_after``, ``feed.connect_timeout``,
        ``feed.backoff_floor``, ``feed.backoff_cap``, ``ingest.linger``.

        Raises :class:`~strategylab.errors.ConfigurationError` naming the key and value for an
        ingest value outside the running knob's bounds (``[1, start value * scale_limit]``);
        nothing is then changed and the reloader keeps the last good configuration. Every
        applied change is audited (kind ``config_reload``) and published as a ``config`` event
        ``{"ok": true, "changed": [keys], "applied": {key: value}, "at_next_start": [keys]}``;
        a rejected configuration too (``"ok": false``, see :meth:`_watch_rejections`).
        """
        old = self.config
        changed = changed_keys(old, new)
        # Check everything before changing anything: a refused value leaves the node as it was.
        knobs = self._ingest_changes(new, changed)
        controller: NodeDegradation | None = None
        if "degradation.memory_budget" in changed and self._degradation is not None:
            controller = self._build_degradation(new)
        if controller is not None and self._degradation is not None:
            await self._degradation.replace(controller)
        applied: dict[str, Any] = {
            key: getattr(new, key.split(".", 1)[1])
            for key in changed
            if key.split(".", 1)[1] in _LIVE_FIELDS
        }
        applied |= {f"ingest.{knob.name}": value for knob, value in knobs}
        if controller is not None:
            applied["degradation.memory_budget"] = new.memory_budget
        later = [key for key in changed if key not in applied]
        if later:
            _log.warning(
                "config: %s take%s effect at the next connection/start (not applied live)",
                ", ".join(later),
                "s" if len(later) == 1 else "",
            )
        record = {"ok": True, "changed": changed, "applied": applied, "at_next_start": later}
        # A closed or full log must not undo the reload: _append_audit logs, never raises.
        await self._append_audit("config_reload", record)
        # In force from here, with no await until the reloader counts the new version: nobody
        # sees the new values with the old version number (/status reads both).
        self.config = new
        for knob, value in knobs:
            knob.setter(value)
        self._publish("config", record)

    async def _watch_rejections(self, reloader: NodeReloader) -> None:
        """Audit (kind ``config_reload``) and publish (a ``config`` event) every rejected
        configuration, whatever triggered the load (the poll, SIGHUP, ``POST /admin/reload``,
        the start): ``{"ok": false, "error": reason, "path": file, "rejections": count}``.
        Loads in quick succession may be reported together (the last reason, the count)."""
        seen = attempts = 0
        while True:
            status = await reloader.wait_for_attempt(attempts + 1)
            attempts = status["attempts"]
            if status["rejections"] <= seen:
                continue
            seen = status["rejections"]
            record = {
                "ok": False,
                "error": status["last_error"],
                "path": status["path"],
                "rejections": seen,
            }
            await self._append_audit("config_reload", record)
            self._publish("config", record)

    async def record_admin(
        self, action: str, target: str | None, outcome: str, detail: Mapping[str, Any]
    ) -> None:
        """Audit an admin action (kind ``admin``) and publish it as an ``admin`` event:
        ``{"action", "target", "outcome", **detail}``. ``outcome`` is ``"accepted"`` or
        ``"rejected"``; ``detail`` must hold no secret (the admin token never reaches the
        node). A log that is closed or fails is logged, never raised: the action stands."""
        record = {"action": action, "target": target, "outcome": outcome, **detail}
        await self._append_audit("admin", record)
        self._publish("admin", record)

    async def _append_audit(self, kind: str, record: Mapping[str, Any]) -> None:
        """Append one record (kept for ``/status``); a failure is one logged line."""
        if self._audit is None:
            return
        try:
            await _OpenAudit(self._audit, self._recent_audit).aappend(kind, record)
        except Exception as exc:
            _log.error("audit: a %s record was not written: %r", kind, exc)

    def _ingest_changes(self, new: NodeConfig, changed: list[str]) -> list[tuple[ScalingKnob, int]]:
        """The ingest knobs to set for ``new`` and their values; ConfigurationError (key and
        value) for a value outside a knob's bounds."""
        knobs: list[tuple[ScalingKnob, int]] = []
        if self._ingestor is None:
            return knobs
        for field in ("batch_size", "max_queue"):
            value: int = getattr(new, field)
            if f"ingest.{field}" not in changed:
                continue
            knob = _ingest_knob(self._ingestor, field)
            if knob is None:
                continue  # an ingestor without the knob: at the next start
            if not knob.lower <= value <= knob.upper:
                raise ConfigurationError(
                    f"ingest.{field}",
                    value,
                    f"must be from {knob.lower} to {knob.upper} in the running node "
                    "(the start value times the ingestor's scale_limit); restart for more",
                )
            knobs.append((knob, value))
        return knobs

    async def wait_caught_up(self, last_seqs: Mapping[str, int], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every ``last_seqs[symbol]`` is stored (or quarantined/declared lost);
        ``TimeoutError`` names the symbols still behind."""
        await self.ingestor.wait_accounted(last_seqs, timeout)

    async def aclose(self) -> None:
        """Stop the operations layer and the feed, flush the queue, close the store and the logs,
        all within ``config.drain_timeout`` seconds; idempotent (a second call waits for the
        first). A kill switch already pulled is waited for first."""
        kill = self._kill_task
        if kill is not None:
            await asyncio.wait({kill}, timeout=self.config.shutdown_deadline + 1.0)
        # A trader child is given its graceful stop (SIGTERM) on top of the drain.
        extra = 0.0 if self._trader is None else _TRADER_STOP
        await self._close(self.config.drain_timeout + extra)

    async def _close(self, deadline: float, *, drain: bool = True) -> bool:
        """Close within ``deadline`` seconds; ``drain=False`` after a kill switch, whose flush
        step already wrote what its deadline allowed: ticks still queued were never acknowledged
        (the next start replays them from the exchange), so they are not waited for again."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(
                self._close_all(deadline, drain=drain), name="node.close"
            )
            self._close_task.add_done_callback(log_failure)
        # A close already under way (an emergency shutdown) is waited for within THIS deadline.
        try:
            async with asyncio.timeout(deadline + 0.25):
                return await asyncio.shield(self._close_task)
        except TimeoutError:
            _log.error("node: close did not finish within %.1fs", deadline)
            return False

    async def _close_all(self, deadline: float, *, drain: bool = True) -> bool:
        """Stop intake, flush what can be flushed (``drain``), close; True when nothing was left
        behind."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        clean = True
        await self._stop_operations(min(0.5, deadline / 4), supervisor=True)
        if self._feed is not None:
            clean &= await _bounded(self._feed.stop(), min(0.5, deadline / 3), "feed stop")
        if self._ingestor is not None:
            # Leave a little of the budget for closing the store and the logs.
            budget = max(end - loop.time() - 0.2, 0.05) if drain else 0.05
            await self._ingestor.aclose(budget)
            clean &= self._ingestor.statistics().queued == 0
        if self._shards is not None:  # flushed: give the leases up (issue 14, H3)
            await self._shards.leave()
        if self._store is not None:
            clean &= await _bounded(
                self._store.aclose(), max(end - loop.time(), 0.1), "store close"
            )
        if self._audit is not None:
            if self._audit_writes:  # sheds and restores on their way to the log
                await asyncio.wait(set(self._audit_writes), timeout=0.2)
            self._audit.close()
        if self._trader is not None:
            self._trader.close()
        return clean

    async def _stop_operations(self, seconds: float, *, supervisor: bool) -> None:
        """Stop the reloader, the health monitor, the degradation loop and (``supervisor``) the
        supervisor with its children, each within ``seconds``."""
        watch, self._config_watch = self._config_watch, None
        await cancel_and_wait((watch,))
        if self._shards is not None:  # no resubscription once stopping (issue 14, H3)
            await _bounded(self._shards.stop(), seconds, "cluster balance stop")
        cluster, self._cluster_kill = self._cluster_kill, None  # the cluster kill (issue 14)
        if cluster is not None:
            await _bounded(cluster.aclose(), seconds, "cluster kill watcher stop")
        reloader, self._reloader = self._reloader, None
        if reloader is not None:
            await _bounded(reloader.aclose(), seconds, "config reloader stop")
        if self._monitor is not None:
            await _bounded(self._monitor.stop(), seconds, "health monitor stop")
        if self._degradation is not None:
            await _bounded(self._degradation.stop(), seconds, "degradation stop")
        if supervisor and self._supervisor is not None:
            # The trader child (stopped first) may take its whole graceful stop; not after a
            # kill, whose cancel_orders step saw it exit or SIGKILLed it.
            if self._trader is not None and self._trader.restarts_held:
                self._trader.kill_target()  # a hung trader never holds up the supervisor's stop
                bound = max(seconds, 1.0)
            else:
                extra = 0.0 if self._trader is None else _TRADER_STOP
                bound = max(seconds, 2.0) + extra
            await _bounded(self._supervisor.stop(), bound, "supervisor stop")

    # ------------------------------------------------------------------ the kill switch

    async def kill(
        self, reason: str, source: TriggerSource = TriggerSource.API
    ) -> KillReport | None:
        """Pull the kill switch and wait for the emergency shutdown; the report (None when the
        node was not started far enough to have a kill switch: it is then only closed).

        A later call joins the first. ``ValueError`` for an empty ``reason``.
        """
        return await asyncio.shield(self.kill_soon(reason, source))

    def kill_soon(
        self, reason: str, source: TriggerSource = TriggerSource.API
    ) -> asyncio.Task[KillReport | None]:
        """Pull the kill switch from synchronous code on the loop (an HTTP handler); the task."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason={reason!r}: must be a non-empty str")
        if self._kill_task is None:
            self._kill_source, self._kill_reason = source, reason
            self._publish(
                "kill_switch", {"event": "triggered", "reason": reason, "source": source.value}
            )
            self._kill_task = asyncio.create_task(self._run_kill(reason, source), name="node.kill")
            self._kill_task.add_done_callback(log_failure)
        elif self._switch is not None:
            self._switch.trigger_soon(reason, source)  # counted and audited as a join
        return self._kill_task

    async def _run_kill(self, reason: str, source: TriggerSource) -> KillReport | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = self.config.shutdown_deadline
        report: KillReport | None = None
        try:
            if self._switch is not None:
                try:
                    report = await self._switch.trigger(reason, source)
                finally:
                    self._switched.set()
                self._publish("kill_switch", {"event": "finished", **report.to_dict()})
            # The kill's flush step wrote what it could: close without draining again.
            await self._close(max(deadline - (loop.time() - started), 0.5), drain=report is None)
        finally:
            self._switched.set()
            self._halted.set()
        return report

    async def _halt_trader(self, seconds: float) -> None:
        """Kill step ``halt`` with a trader: no restart of it from now on; SIGUSR1 to it and
        its ``halted`` line awaited (``TimeoutError`` after ``seconds``)."""
        trader = self._trader
        assert trader is not None  # noqa: S101 - only a step with a trader
        await trader.halt(self.trader_pid, seconds)

    async def _cancel_trader(self, seconds: float) -> None:
        """Kill step ``cancel_orders`` with a trader: its kill switch's report (orders cancelled
        at the exchange) and its exit, within ``seconds`` (:data:`_UNHALTED_WAIT` when it never
        said it halted: hung). ``RuntimeError`` (the step failed) when it could not confirm its
        orders cancelled: no trader ran, or it did not confirm in time (then SIGKILLed)."""
        trader = self._trader
        supervisor = self._supervisor
        assert trader is not None  # noqa: S101 - only a step with a trader
        try:
            async with asyncio.timeout(seconds):
                await trader.wait_report(seconds * 0.9, unhalted=_UNHALTED_WAIT)
                pid = trader.signalled
                if pid is not None and supervisor is not None:
                    await supervisor.wait_for(
                        lambda snap: all(c.pid != pid for c in snap.children if c.id == CHILD_ID)
                    )
        finally:
            self._publish("trader", {"event": "killed", **trader.kill_summary()})

    async def _quiesce(self) -> None:
        """Kill step: stop what would restart or reconfigure parts being stopped (the status
        service stays up until the end, so that the kill is visible there)."""
        await self._stop_operations(0.2, supervisor=False)

    async def _flush(self) -> None:
        """Kill step: stop intake, write the ingest queue, fsync the acknowledgement log."""
        deadline = self.config.shutdown_deadline
        if self._feed is not None:
            await _bounded(self._feed.stop(), min(0.5, deadline / 6), "feed stop")
        if self._ingestor is not None:
            share = 0.5 if self._trader is None else 0.4  # the flush step's share of the deadline
            # At most _KILL_FLUSH seconds: a kill must end within 2 s even with a full queue;
            # what is still queued then was never acknowledged and is replayed on the next start.
            budget = min(max(deadline * share - 0.1, 0.05), _KILL_FLUSH)
            try:
                await self._ingestor.drain(budget)
            except TimeoutError:
                left = self._ingestor.statistics().queued
                await asyncio.to_thread(_fsync_file, self.config.layout.acks)
                raise TimeoutError(
                    f"{left} ticks still queued after {budget:.2f}s: never acknowledged, "
                    "replayed from the exchange on the next start"
                ) from None
        # The store commits durably (SQLite synchronous=FULL, the spool fsyncs); the ack log
        # is written with os.write per batch: make it durable too.
        await asyncio.to_thread(_fsync_file, self.config.layout.acks)

    def _state_snapshot(self) -> StateSnapshot:
        """Kill step: the state to preserve: the last acknowledged (durably stored) sequence per
        symbol and, with a trader, under ``positions["trader"]``: its ``positions`` (strategy ->
        symbol -> units), its ``book``, and its own ``snapshot`` path and ``snapshot_sha256``
        (None when it wrote none, ``note`` saying why); the orders it left open in
        ``open_orders`` (``{"component": "trader", "cid": ...}``)."""
        acked = {} if self._ingestor is None else dict(self._ingestor.statistics().acked)
        positions: dict[str, object] = {}
        open_orders: list[dict[str, object]] = []
        if self._trader is not None:
            kill = self._trader.kill_summary()
            held = kill.get("positions")
            if held is None:  # it ran no kill switch: what it last reported
                held = self._trader.summary(None).get("positions")
            positions["trader"] = {
                "book": str(self._trader.config.book),
                "positions": dict(held) if isinstance(held, Mapping) else {},
                "snapshot": kill.get("snapshot"),
                "snapshot_sha256": kill.get("snapshot_sha256"),
                "note": kill.get("note"),
            }
            open_orders = [
                {"component": "trader", "cid": str(cid)} for cid in kill.get("left_open") or ()
            ]
        return StateSnapshot.create(
            reason="emergency shutdown",
            positions=positions,
            open_orders=open_orders,
            last_sequence=acked,
            clock=self._clock,
        )

    def _crash_loop(self, error: RestartIntensityExceededError) -> None:
        """The supervisor's escalation past its restart intensity: pull the kill switch."""
        self.kill_soon(str(error), TriggerSource.CRASH_LOOP)

    async def _kill_switch(self, error: Exception) -> None:
        """The feed's kill switch (forged frames past its threshold): the emergency shutdown."""
        await self._emergency_shutdown(
            ErrorContext.from_exception(
                error,
                component=self.feed.name,
                error_type=ErrorType.SECURITY_VIOLATION,
                severity=ErrorSeverity.CRITICAL,
                capture_state=False,
                clock=self._clock,
            )
        )

    async def _emergency_shutdown(self, context: ErrorContext) -> bool:
        """The manager's EMERGENCY_SHUTDOWN handler: the kill switch, for ``context``.

        The work runs in a task the node owns, so that stopping the component whose task reported
        the error (and is waiting here) cannot cancel the shutdown half-way. True once the
        node is halted with its snapshot and marker written.
        """
        if self._emergency_task is None:
            if self._emergency is None and self._kill_task is None:
                self._emergency = context
            self._emergency_task = asyncio.create_task(
                self._halt(context), name="node.emergency-shutdown"
            )
            self._emergency_task.add_done_callback(log_failure)
        return await asyncio.shield(self._emergency_task)

    async def _halt(self, context: ErrorContext) -> bool:
        _log.error(
            "EMERGENCY SHUTDOWN: %s in %s: %s",
            context.error_type.value,
            context.component,
            context.message,
        )
        if self._audit is not None and self._kill_task is None:
            with contextlib.suppress(Exception):
                await self._audit.aappend(
                    "emergency_shutdown",
                    {
                        "error_id": str(context.error_id),
                        "error_type": context.error_type.value,
                        "component": context.component,
                        "reason": context.message,
                    },
                )
        if context.error_type is ErrorType.SECURITY_VIOLATION:
            source = TriggerSource.SECURITY_VIOLATION
        elif self._supervisor is not None and context.component == self._supervisor.name:
            source = TriggerSource.CRASH_LOOP
        else:
            source = TriggerSource.CRITICAL_CHAIN_EXHAUSTED
        reason = f"{context.error_type.value} in {context.component}: {context.message}"
        self.kill_soon(reason, source)
        # The switch's own steps, not the close after them: the close stops the supervisor,
        # which waits for its escalation report to the manager, which may be this very call.
        await self._switched.wait()
        report = self.kill_report
        return report is None or report.marker_path is not None

    def status(self) -> dict[str, Any]:
        """The JSON-ready status line (``event`` is added by the caller)."""
        feed = self.feed.statistics()
        ingest = self.ingestor.statistics()
        recovery = self.manager.statistics()
        elapsed = max(self._clock.monotonic() - self._started_at, 1e-9)
        store = self._store
        store_state = "primary"
        spool_pending = 0
        if isinstance(store, FailoverStore):
            failover = store.statistics()
            store_state, spool_pending = failover.state.value, failover.spool_pending
        status_out = self._status_out
        trader = self.trader_status()
        extra = {} if trader is None else {"risk_state": self.risk_state, "trader": trader}
        if self._shards is not None:  # issue 14, H3
            extra["cluster"] = self._shards.status()
        # A cluster node holding no lease has no feed to connect (parked): not a failure.
        parked = self._shards is not None and not self.feed.symbols
        return {
            "healthy": ingest.healthy
            and (status_out is None or status_out.ok)
            and (parked or (feed.connected and feed.subscribed and not feed.behind)),
            "ingest_healthy": ingest.healthy,
            "failing": ingest.failing,
            "writer_restarts": ingest.restarts,
            "write_failures": ingest.write_failures,
            "store_state": store_state,
            "spool_pending": spool_pending,
            "emergency": None if self._emergency is None else self._emergency.error_type.value,
            "ticks_stored": ingest.acknowledged,
            "ticks_per_s": round(ingest.acknowledged / elapsed, 1),
            "queued": ingest.queued,
            "reconnects": feed.reconnects,
            "recoveries": recovery.successful_recoveries,
            "errors": recovery.total_errors,
            "connected": feed.connected and feed.subscribed,
            "duplicates": feed.duplicates,
            "gaps": feed.gaps,
            "crc_errors": feed.crc_errors,
            "signature_errors": feed.signature_errors,
            "invalid_ticks": feed.invalid_ticks,
            "lost_ticks": feed.lost_ticks,
            "last_seq": dict(ingest.acked),
            "recovery": {
                "errors": recovery.total_errors,
                "succeeded": recovery.successful_recoveries,
                "failed": recovery.failed_recoveries,
                "rejected": recovery.rejected_recoveries,
                "joined": recovery.joined_recoveries,
                "success_rate": recovery.success_rate,
                "p50_ms": recovery.p50_ms,
                "p95_ms": recovery.p95_ms,
                "p99_ms": recovery.p99_ms,
                "escalations": recovery.pattern_escalations,
                "fall_throughs": recovery.fall_throughs,
                "by_type": {t.value: n for t, n in recovery.error_type_distribution.items()},
                "by_strategy": {k.value: n for k, n in recovery.strategy_distribution.items()},
                "sla_compliance": dict(recovery.sla_compliance),
            },
        } | extra


class _OpenAudit:
    """The manager's audit sink: the node's audit log, and nothing once the log is closed (a
    recovery finishing during shutdown must not turn into a logged traceback). Each record
    written is also kept in ``recent`` (bounded) for ``/status``."""

    def __init__(self, log: AuditLog, recent: collections.deque[dict[str, Any]]) -> None:
        self._log = log
        self._recent = recent

    async def aappend(self, kind: str, data: Mapping[str, Any], /) -> object:
        if self._log.closed:
            _log.debug("audit log closed; %s record not written", kind)
            return None
        record = await self._log.aappend(kind, data)
        self._recent.append(
            {
                "seq": record.seq,
                "timestamp": record.timestamp,
                "kind": record.kind,
                "data": dict(record.data),
            }
        )
        return record


_RECENT_AUDIT: Final = 256
"""Audit records kept in memory for ``/status`` (which shows the last 20)."""
_AUDIT_TAIL_BYTES: Final = 256 * 1024
"""How much of the end of ``audit.jsonl`` a start reads for ``/status``."""


def _audit_tail(
    path: os.PathLike[str] | str,
    limit: int = _RECENT_AUDIT,
    max_bytes: int = _AUDIT_TAIL_BYTES,
) -> list[dict[str, Any]]:
    """The last ``limit`` records of the audit log at ``path`` (read from its last ``max_bytes``
    bytes), oldest first, as ``{"seq", "timestamp", "kind", "data"}``; [] when there is none.

    The log was verified when it was opened (its chain and anchors): this only picks the
    records out again for ``/status``. A partial first line (the cut) and anything that is not
    a record are skipped; an unreadable file gives [] (logged)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return []
    except OSError as exc:
        _log.warning("audit: the last records of %s not read: %s", path, exc)
        return []
    try:
        size = os.fstat(fd).st_size
        start = max(size - max_bytes, 0)
        raw = os.pread(fd, size - start, start)
    except OSError as exc:
        _log.warning("audit: the last records of %s not read: %s", path, exc)
        return []
    finally:
        os.close(fd)
    lines = raw.split(b"\n")
    if start > 0:
        lines = lines[1:]  # cut mid-line (or at its start: one record less, no harm)
    records: list[dict[str, Any]] = []
    for line in lines[-limit - 1 :]:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("data"), dict):
            continue
        records.append(
            {
                "seq": value.get("seq"),
                "timestamp": value.get("timestamp"),
                "kind": value.get("kind"),
                "data": value["data"],
            }
        )
    return records[-limit:]


_TRADER_STOP: Final = 3.0
"""Seconds the trader child may take to stop gracefully (SIGTERM) before SIGKILL."""
_UNHALTED_WAIT: Final = 0.5
"""Seconds the kill's ``cancel_orders`` step waits, at most, for the report of a trader that did
not say it halted within the ``halt`` step (it handles SIGUSR1 at once: one that does not is
hung), before it SIGKILLs it: a kill ends within about 2 s even then."""

_LIVE_FIELDS: Final = frozenset(
    {"status_interval", "drain_timeout", "shutdown_deadline", "disk_full_grace"}
)
"""NodeConfig fields the node reads at each use: a reload is in force at once."""


def _ingest_knob(ingestor: Ingestor, name: str) -> ScalingKnob | None:
    """The ingestor's scaling knob called ``name`` (None when it has none)."""
    try:
        return ingestor.knob(name)
    except KeyError:
        return None


def _fsync_file(path: os.PathLike[str] | str) -> None:
    """fsync the file at ``path`` if it exists (the data written through any descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _bounded(step: Awaitable[object], seconds: float, what: str) -> bool:
    """Await ``step`` for at most ``seconds``; False (logged in one line) on a timeout or error."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        _log.error("node: %s did not finish within %.2fs", what, seconds)
        return False
    except Exception as exc:
        _log.error("node: %s failed: %r", what, exc)
        return False
    return True


def _disk_full_policy(config: NodeConfig, clock: Clock) -> RecoveryPolicy:
    """DISK_SPACE_EXHAUSTED: RETRY (wait up to the grace for the component to be healthy again)
    before the standard chain (degradation, failover, emergency shutdown)."""
    base = DEFAULT_POLICIES[ErrorType.DISK_SPACE_EXHAUSTED]
    chain = (RecoveryStrategyKind.RETRY, *base.chain)
    probe = RetryPolicy(
        max_attempts=1_000_000,
        base_delay=0.1,
        multiplier=2.0,
        max_delay=1.0,
        jitter=None,
        deadline=config.disk_full_grace,
        clock=clock,
        name="disk-full",
    )
    return dataclasses.replace(base, chain=chain, retry=probe)
