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


A full disk (``ENOSPC``/``SQLITE_FULL``) on any file the node writes (store, spool, ack log,
audit log, status output) is reported as DISK_SPACE_EXHAUSTED. The node's policy for it puts a
RETRY first: the recovery re-probes the component's health for up to ``--disk-full-grace``
seconds (default 60, the database SLA) and succeeds only once the component is observed healthy
again (ingest resumes by itself); a disk still full after that falls through the standard chain
to the emergency shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from strategylab._files import make_private_dir, refuse_symlinks, refuse_unsafe_dirs
from strategylab._tasks import log_failure
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    AuditLog,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    RecoveryPolicy,
    RecoveryStrategyKind,
    RetryPolicy,
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
from ._status import _print, _StatusOutput
from ._store_check import check_store_config

__all__ = ["Node", "NodeConfig"]

_log = logging.getLogger(__name__)


class Node:
    """Feed, ingestor, store and recovery manager, wired and started together."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_data_dir: Callable[[], None] | None = None,
    ) -> None:
        """``on_data_dir`` is called once the store configuration passed its checks and the data
        directory exists, before anything is written there (the process opens its log file)."""
        self.config = config
        self._clock = clock
        self._on_data_dir = on_data_dir
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
        # Validate now, so that a bad option fails before anything is opened.
        self._feed_config = FeedConfig(
            urls=(config.exchange_url, *config.backup_urls),
            symbols=config.symbols,
            signing_key=config.signing_key,
            stale_after=config.stale_after,
            connect_timeout=config.connect_timeout,
            backoff_floor=config.backoff_floor,
            backoff_cap=config.backoff_cap,
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

    # ------------------------------------------------------------------ lifecycle

    @property
    def halted(self) -> asyncio.Event:
        """Set once an emergency shutdown has stopped the node (see :attr:`emergency`)."""
        return self._halted

    @property
    def emergency(self) -> ErrorContext | None:
        """The error that triggered the emergency shutdown, if one ran."""
        return self._emergency

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
        manager = self._manager = ErrorRecoveryManager(
            policies={ErrorType.DISK_SPACE_EXHAUSTED: _disk_full_policy(cfg, self._clock)},
            clock=self._clock,
            audit=_OpenAudit(self._audit),
            shutdown_handler=self._emergency_shutdown,
            shutdown_deadline=cfg.shutdown_deadline,
        )
        self._status_out = _StatusOutput(manager)
        primary: TickStore
        if cfg.postgres is not None:
            primary = PostgresTickStore(cfg.postgres)
        else:
            primary = SQLiteTickStore(cfg.db_path, batch_size=cfg.batch_size, manager=manager)
        store: TickStore = primary
        if cfg.spool:
            store = FailoverStore(
                primary, SpoolStore(layout.spool), manager=manager, clock=self._clock
            )
        await store.open()
        self._store = store
        ingestor = self._ingestor = Ingestor(
            store,
            self._ingest_config,
            ack_log=AckLog(layout.acks),
            manager=manager,
            clock=self._clock,
        )
        feed = self._feed = Feed(
            self._feed_config,
            ingestor,
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
        await feed.start()
        self._started_at = self._clock.monotonic()

    async def wait_caught_up(self, last_seqs: Mapping[str, int], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every ``last_seqs[symbol]`` is stored (or quarantined/declared lost);
        ``TimeoutError`` names the symbols still behind."""
        await self.ingestor.wait_accounted(last_seqs, timeout)

    async def aclose(self) -> None:
        """Stop the feed, flush the queue, close the store and the logs, all within
        ``config.drain_timeout`` seconds; idempotent (a second call waits for the first)."""
        await self._close(self.config.drain_timeout)

    async def _close(self, deadline: float) -> bool:
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close_all(deadline), name="node.close")
            self._close_task.add_done_callback(log_failure)
        # A close already under way (an emergency shutdown) is waited for within THIS deadline.
        try:
            async with asyncio.timeout(deadline + 0.25):
                return await asyncio.shield(self._close_task)
        except TimeoutError:
            _log.error("node: close did not finish within %.1fs", deadline)
            return False

    async def _close_all(self, deadline: float) -> bool:
        """Stop intake, flush what can be flushed, close; True when nothing was left behind."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        clean = True
        if self._feed is not None:
            clean &= await _bounded(self._feed.stop(), min(0.5, deadline / 3), "feed stop")
        if self._ingestor is not None:
            # Leave a little of the budget for closing the store and the logs.
            await self._ingestor.aclose(max(end - loop.time() - 0.2, 0.05))
            clean &= self._ingestor.statistics().queued == 0
        if self._store is not None:
            clean &= await _bounded(
                self._store.aclose(), max(end - loop.time(), 0.1), "store close"
            )
        if self._audit is not None:
            self._audit.close()
        return clean

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
        """The manager's EMERGENCY_SHUTDOWN handler: stop intake, flush within the deadline, halt.

        The work runs in a task the node owns, so that stopping the component whose task reported
        the error (and is waiting here) cannot cancel the shutdown half-way.
        """
        if self._emergency_task is None:
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
        try:
            if self._audit is not None:
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
            return await self._close(self.config.shutdown_deadline)
        finally:
            self._halted.set()

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
        return {
            "healthy": ingest.healthy
            and (status_out is None or status_out.ok)
            and feed.connected
            and feed.subscribed,
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
        }


class _OpenAudit:
    """The manager's audit sink: the node's audit log, and nothing once the log is closed (a
    recovery finishing during shutdown must not turn into a logged traceback)."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def aappend(self, kind: str, data: dict[str, Any], /) -> object:
        if self._log.closed:
            _log.debug("audit log closed; %s record not written", kind)
            return None
        return await self._log.aappend(kind, data)


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
