"""The ingesting node: exchange URL → :class:`Feed` → :class:`Ingestor` → tick store.

In process::

    node = Node(NodeConfig(exchange_url=..., symbols=("A", "B"), data_dir=path))
    await node.start()
    await node.wait_caught_up({"A": 1000, "B": 1000}, timeout=10)
    await node.aclose()

As a process (``python -m strategylab.market._node --exchange-url ws://127.0.0.1:P/ws --db PATH
--data-dir D --symbols A,B``) it prints one JSON ``status`` line every ``--status-interval`` seconds
and, on SIGTERM or SIGINT, drains the queue, commits, prints a ``stopped`` line and exits 0.

The store is SQLite (``--db``) or PostgreSQL (``--postgres DSN``), wrapped in a ``FailoverStore``
with a durable spool in ``data_dir/spool``. Recoveries are audited in ``data_dir/audit.jsonl``;
acknowledgements go to ``data_dir/acks.jsonl`` (the integrity checker's "acknowledged" set).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import AuditLog, ErrorRecoveryManager

from ._exchange import parse_signing_key
from ._failover_store import FailoverStore
from ._feed import Feed, FeedConfig
from ._ingest import Ingestor, IngestorConfig
from ._ledger import AckLog
from ._pg_store import PostgresTickStore
from ._spool import SpoolStore
from ._sqlite_store import SQLiteTickStore
from ._store import TickStore

__all__ = ["Node", "NodeConfig", "main"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs; ``db`` defaults to ``data_dir/ticks.db``."""

    exchange_url: str
    symbols: tuple[str, ...]
    data_dir: Path
    db: Path | None = None
    postgres: str | None = None
    signing_key: bytes | None = None
    backup_urls: tuple[str, ...] = ()
    status_interval: float = 1.0
    stale_after: float = 3.0
    connect_timeout: float = 5.0
    backoff_floor: float = 0.05
    backoff_cap: float = 2.0
    batch_size: int = 20_000
    max_queue: int = 200_000
    linger: float = 0.02
    spool: bool = True
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.status_interval > 0:
            raise ConfigurationError("status_interval", self.status_interval, "must be > 0")
        if not self.drain_timeout > 0:
            raise ConfigurationError("drain_timeout", self.drain_timeout, "must be > 0")

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.db if self.db is not None else self.data_dir / "ticks.db"


class Node:
    """Feed, ingestor, store and recovery manager, wired and started together."""

    def __init__(self, config: NodeConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self._clock = clock
        self._audit: AuditLog | None = None
        self._manager: ErrorRecoveryManager | None = None
        self._store: TickStore | None = None
        self._ingestor: Ingestor | None = None
        self._feed: Feed | None = None
        self._started_at = 0.0
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

    async def start(self) -> None:
        """Open the store, start the ingestor and the feed."""
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._audit = AuditLog(cfg.data_dir / "audit.jsonl", clock=self._clock)
        manager = self._manager = ErrorRecoveryManager(clock=self._clock, audit=self._audit)
        primary: TickStore
        if cfg.postgres is not None:
            primary = PostgresTickStore(cfg.postgres)
        else:
            primary = SQLiteTickStore(cfg.db_path)
        store: TickStore = primary
        if cfg.spool:
            store = FailoverStore(primary, SpoolStore(cfg.data_dir / "spool"), manager=manager)
        await store.open()
        self._store = store
        ingestor = self._ingestor = Ingestor(
            store,
            self._ingest_config,
            ack_log=AckLog(cfg.data_dir / "acks.jsonl"),
            manager=manager,
            clock=self._clock,
        )
        feed = self._feed = Feed(self._feed_config, ingestor, manager=manager, clock=self._clock)
        if isinstance(store, FailoverStore):
            manager.register(store)
        manager.register(ingestor)
        manager.register(feed, depends_on=(ingestor.name,))
        await ingestor.start()
        await feed.start()
        self._started_at = self._clock.monotonic()

    async def wait_caught_up(self, last_seqs: Mapping[str, int], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every ``last_seqs[symbol]`` is stored (or quarantined/declared lost);
        ``TimeoutError`` names the symbols still behind."""
        await self.ingestor.wait_accounted(last_seqs, timeout)

    async def aclose(self) -> None:
        """Stop the feed, drain and commit the queue, close the store and the logs."""
        if self._feed is not None:
            await self._feed.stop()
        if self._ingestor is not None:
            await self._ingestor.aclose(self.config.drain_timeout)
        if self._store is not None:
            await self._store.aclose()
        if self._audit is not None:
            self._audit.close()

    def status(self) -> dict[str, Any]:
        """The JSON-ready status line (``event`` is added by the caller)."""
        feed = self.feed.statistics()
        ingest = self.ingestor.statistics()
        recovery = self.manager.statistics()
        elapsed = max(self._clock.monotonic() - self._started_at, 1e-9)
        return {
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


# ---------------------------------------------------------------------------------- process


def _print(event: str, data: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def run_node(config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Run a node until ``stop`` is set or SIGTERM/SIGINT arrives; print status lines."""
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, done.set)
            installed.append(sig)
    node = Node(config)
    try:
        await node.start()
        _print("started", {"pid": os.getpid(), "symbols": list(config.symbols)})
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(config.status_interval):
                    await done.wait()
            _print("status", node.status())
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await node.aclose()
    if node._ingestor is not None:  # noqa: SLF001 - our own instance
        _print("stopped", node.status())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strategylab node", description="Run an ingesting node.")
    p.add_argument("--exchange-url", required=True, help="ws://HOST:PORT/ws")
    p.add_argument("--backup-url", action="append", default=[], help="failover endpoint")
    p.add_argument("--db", type=Path, default=None, help="SQLite file (default data_dir/ticks.db)")
    p.add_argument("--postgres", default=None, help="PostgreSQL DSN instead of SQLite")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--symbols", required=True, help="comma-separated")
    p.add_argument("--signing-key", default=None, help="hex or text, as given to the exchange")
    p.add_argument("--status-interval", type=float, default=1.0)
    p.add_argument("--stale-after", type=float, default=3.0)
    p.add_argument("--connect-timeout", type=float, default=5.0, help="per connection attempt")
    p.add_argument("--batch-size", type=int, default=20_000)
    p.add_argument("--max-queue", type=int, default=200_000)
    p.add_argument("--no-spool", action="store_true", help="no failover spool")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> NodeConfig:
    """Parse options into a :class:`NodeConfig` (argparse exits 2 on a malformed one)."""
    args = _parser().parse_args(argv)
    return NodeConfig(
        exchange_url=args.exchange_url,
        backup_urls=tuple(args.backup_url),
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        data_dir=args.data_dir,
        db=args.db,
        postgres=args.postgres,
        signing_key=parse_signing_key(args.signing_key),
        status_interval=args.status_interval,
        stale_after=args.stale_after,
        connect_timeout=args.connect_timeout,
        batch_size=args.batch_size,
        max_queue=args.max_queue,
        spool=not args.no_spool,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 after a clean shutdown, 2 for a bad option."""
    try:
        config = config_from_args(argv)
        # Build once to validate the feed and ingestor settings before anything starts.
        Node(config)
    except ConfigurationError as exc:
        sys.stderr.write(f"strategylab node: error: {exc}\n")
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(run_node(config))
    except OSError as exc:
        sys.stderr.write(f"strategylab node: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
