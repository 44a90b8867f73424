"""Category 4, database failover: primary failure, pool exhaustion, timeouts, storage full.

On the default SQLite store (the lab's embedded default):

- ``database.sqlite_lock`` (primary failure): a connection of the lab's own holds the store's
  write lock (``BEGIN EXCLUSIVE``). The node's writes stall, it fails over to its durable spool
  (writes stay acknowledged), and once the lock is released it drains the spool back into the
  store, in order. Recovered = ready, the store back on the primary with the spool empty, and
  caught up with the exchange. Cross-checked on the file system: segment files were seen in the
  spool directory while the lock was held, and none is left after the recovery.
- ``disk.fill`` (storage full where the store and the spool live): the node's data directory
  cannot be given a size-limited volume while the node runs (it is not empty, and a tmpfs
  mounted over it would hide the open store rather than fill it), so the fault is the
  kernel's file-size limit on the node process (:class:`~strategylab.chaos.DiskFill` mode
  ``fsize``: ``RLIMIT_FSIZE`` 0 with ``prlimit``): every write of the node to any of its files
  (store, WAL, spool, ack log) fails with ``EFBIG``, which the node classifies as a full disk.
  Nothing can be acknowledged meanwhile; once the limit is lifted the node must resume by
  itself within its ``--disk-full-grace`` and fetch again what it missed.

The PostgreSQL faults (lock holder, pool exhaustion, statement timeout, server pause and kill)
need a PostgreSQL store: in SQLite mode they are SKIPPED (a throwaway server takes ~2 s to start
and a second node on it another ~2 s, over this category's budget). With ``--postgres`` the
node's store is that server, and the lock holder, the statement timeout and the pool exhaustion
run against it; the server faults (pause, kill) need the node's store to BE a throwaway
instance the lab started, which that run does not have, so they are SKIPPED saying so.

Zero loss is the hard criterion: the checker over the store after the category.

The helpers here (:func:`store_drained`, :class:`StoreObserver`, :func:`skip_fault`) are shared
by the categories 2, 8 and 9 of this package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_database import (
    PgLockHolder,
    PgPoolExhaustion,
    PgStatementTimeout,
    SQLiteLockHolder,
)
from strategylab.chaos._inject_resources import DiskFill
from strategylab.chaos._injector import Injector
from strategylab.chaos._lab import LabRun, cross_check_recorded
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._probes import all_of, node_ready, store_caught_up
from strategylab.chaos._scenario import Criterion, Lab, Probe, Scenario

__all__ = [
    "DatabaseFailover",
    "StoreObserver",
    "lock_hold",
    "skip_fault",
    "spool_segments",
    "store_drained",
    "store_recovered",
]

DATABASE_SLA: Final = 60.0
"""The database recovery SLA of category 9 (seconds)."""
_OBSERVE_INTERVAL: Final = 0.1


def lab_run(lab: Lab, scenario: Scenario) -> LabRun:
    """``lab`` as the lab's own runner; :class:`TypeError` naming the scenario otherwise."""
    if not isinstance(lab, LabRun):
        raise TypeError(f"{scenario.name}: needs the lab's own runner (a LabRun), got {lab!r}")
    return lab


def lock_hold(lab: Lab) -> float:
    """Seconds a lock-holder fault is kept: 2 s at medium, scaled by the severity. Twice the
    node's 1 s stall timeout: the node has failed over and spooled for a second before heal."""
    return 2.0 * lab.severity.scale


def spool_segments(pipeline: Pipeline) -> list[Path]:
    """The node's spool segment files (``*.seg``) that hold bytes, oldest first."""
    try:
        return sorted(p for p in pipeline.spool_dir.glob("*.seg") if p.stat().st_size > 0)
    except OSError:
        return []


def store_drained(pipeline: Pipeline) -> Probe:
    """A probe: the node's store takes writes on its primary again (``/status`` ``store.state``
    is ``primary``) with nothing pending in the spool, and no spool segment holds bytes on disk
    (the file system, read apart from the node's word)."""

    async def probe() -> tuple[bool, str]:
        try:
            store = (await pipeline.status()).get("store", {})
        except PipelineError as exc:
            return False, str(exc)
        state, pending = store.get("state"), store.get("spool_pending")
        if state != "primary" or pending != 0:
            return False, f"store {state}, {pending} batch(es) pending in the spool"
        left = spool_segments(pipeline)
        if left:
            return False, f"{len(left)} spool segment(s) still on disk"
        return True, "store on its primary, spool empty"

    return probe


def store_recovered(pipeline: Pipeline) -> Probe:
    """The recovery probe of a store fault: ready, drained back to the primary, caught up."""
    return all_of(node_ready(pipeline), store_drained(pipeline), store_caught_up(pipeline))


def skip_fault(lab: Lab, name: str, kind: str, sla: float, reason: str) -> FaultRun:
    """Record a fault that cannot run here as SKIPPED with ``reason`` (never simulated)."""
    run = FaultRun(name=name, kind=kind, severity=lab.severity.value, sla=sla, skipped=reason)
    lab.result.faults.append(run)
    return run


@dataclass(slots=True)
class StoreObserver:
    """What the node's store did while a fault was on, seen every 0.1 s: the ``/status``
    ``store.state`` values, the most batches pending in the spool, and the most spool segments
    (and bytes) seen on disk."""

    pipeline: Pipeline
    states: set[str] = field(default_factory=set)
    max_pending: int = 0
    max_segments: int = 0
    max_bytes: int = 0
    write_failures: int = 0

    async def _poll(self) -> None:
        while True:
            segments = spool_segments(self.pipeline)
            self.max_segments = max(self.max_segments, len(segments))
            with contextlib.suppress(OSError):
                self.max_bytes = max(self.max_bytes, sum(p.stat().st_size for p in segments))
            with contextlib.suppress(PipelineError):
                status = await self.pipeline.status()
                store = status.get("store", {})
                if isinstance(state := store.get("state"), str):
                    self.states.add(state)
                pending = store.get("spool_pending")
                if isinstance(pending, int):
                    self.max_pending = max(self.max_pending, pending)
                failures = status.get("ingest", {}).get("write_failures")
                if isinstance(failures, int):
                    self.write_failures = max(self.write_failures, failures)
            await asyncio.sleep(_OBSERVE_INTERVAL)  # the observation's pace, not a wait

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[StoreObserver]:
        """Observe for the body of the ``async with``."""
        task = asyncio.create_task(self._poll(), name="lab-store-observer")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.wait([task])

    def summary(self) -> str:
        states = ", ".join(sorted(self.states)) or "none"
        return (
            f"states seen: {states}; spool: up to {self.max_pending} batch(es) pending, "
            f"{self.max_segments} segment(s), {self.max_bytes} bytes on disk"
        )


class DatabaseFailover(Scenario):
    """The store's primary fails (locked; storage full); the node fails over and back."""

    id: ClassVar[int] = 4
    name: ClassVar[str] = "database failover"
    description: ClassVar[str] = "primary failure, pool exhaustion, timeouts, storage full"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.75, zero_loss=True, text="≥ 75 % recovered, no data loss"
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % recovered within 60 s, zero lost/duplicated/corrupted",
    )
    sla: ClassVar[float] = DATABASE_SLA

    async def run(self, lab: Lab) -> None:
        run_lab = lab_run(lab, self)
        pipeline = run_lab.pipeline
        if pipeline.config.postgres is None:
            await self._sqlite(run_lab, pipeline)
            for name in (
                "database.pg_lock",
                "database.pg_pool_exhaustion",
                "database.pg_statement_timeout",
                "database.pg_pause",
                "database.pg_kill",
            ):
                skip_fault(
                    lab, name, "database", self.sla,
                    "needs --postgres: the node's store is SQLite here (a throwaway server and "
                    "a second node on it take ~4 s, over the category's budget)",
                )  # fmt: skip
        else:
            await self._postgres(run_lab, pipeline, pipeline.config.postgres)
        await lab.integrity()

    async def _sqlite(self, lab: LabRun, pipeline: Pipeline) -> None:
        store = pipeline.store_path
        assert store is not None  # noqa: S101 - SQLite mode
        observer = StoreObserver(pipeline)
        lock = SQLiteLockHolder(store, lab.severity)
        async with observer.watching():
            run = await lab.fault(
                lock, hold=lock_hold(lab), sla=self.sla,
                recovered=store_recovered(pipeline), recover_timeout=20.0,
            )  # fmt: skip
        cross_check_recorded(lab, run, expected=True)
        self._check_failover(lab, run, observer)

        pid = pipeline.node_pid
        if pid is None:
            skip_fault(lab, "disk.fill", "disk", self.sla, "the node is not running")
            return
        full = DiskFill(pipeline.node_dir, lab.severity, mode="fsize", pid=pid, limit=0)
        observer = StoreObserver(pipeline)
        async with observer.watching():
            run = await lab.fault(
                full, hold=1.5 * lab.severity.scale, sla=self.sla,
                recovered=store_recovered(pipeline), recover_timeout=20.0,
            )  # fmt: skip
        run.notes.append(
            "storage full as RLIMIT_FSIZE=0 on the node process (EFBIG on every write of its "
            "store, WAL, spool and ack log): its data directory cannot take a size-limited "
            "volume while it runs"
        )
        cross_check_recorded(lab, run, expected=True)
        if run.skipped is None and run.error is None:
            lab.check(
                "disk.fill: the node saw its writes fail",
                observer.write_failures > 0 or "spooling" in observer.states,
                f"ingest write failures up to {observer.write_failures}; {observer.summary()}",
                independent=False,
            )
            left = spool_segments(pipeline)
            lab.check(
                "disk.fill: spool empty after recovery (file system)",
                not left,
                f"{len(left)} segment(s) left in {pipeline.spool_dir}",
            )

    def _check_failover(self, lab: Lab, run: FaultRun, observer: StoreObserver) -> None:
        """The lock made the node spool (seen on disk), and the spool drained back."""
        if run.skipped is not None or run.error is not None:
            return
        if not isinstance(lab, LabRun):
            return
        pipeline = lab.pipeline
        lab.check(
            f"{run.name}: failed over to the spool (segments seen on disk)",
            observer.max_segments > 0 and observer.max_bytes > 0,
            observer.summary(),
        )
        left = spool_segments(pipeline)
        lab.check(
            f"{run.name}: spool drained back into the store (file system)",
            not left,
            f"{len(left)} segment(s) left in {pipeline.spool_dir}" if left else "no segment left",
        )

    async def _postgres(self, lab: LabRun, pipeline: Pipeline, dsn: str) -> None:
        sev = lab.severity
        recovered = store_recovered(pipeline)
        faults: list[tuple[Injector, bool]] = [
            (PgLockHolder(dsn, sev), True),
            (PgStatementTimeout(dsn, sev), True),
            (PgPoolExhaustion(dsn, sev), False),
        ]
        for injector, expected in faults:
            observer = StoreObserver(pipeline)
            async with observer.watching():
                run = await lab.fault(
                    injector, hold=lock_hold(lab), sla=self.sla,
                    recovered=recovered, recover_timeout=20.0,
                )  # fmt: skip
            # The pool of a running node keeps its connections: exhaustion may not hurt it.
            cross_check_recorded(lab, run, expected=expected)
            if expected:
                self._check_failover(lab, run, observer)
        reason = (
            "needs the node's store on a throwaway PostgreSQL the lab started (never SIGSTOP or "
            "SIGKILL a server given by --postgres)"
        )
        skip_fault(lab, "database.pg_pause", "database", self.sla, reason)
        skip_fault(lab, "database.pg_kill", "database", self.sla, reason)
